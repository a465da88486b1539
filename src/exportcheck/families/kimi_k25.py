"""Kimi K2.5: a variable-resolution tower that pools each merge block after its layers.

The task's grid layout feeds flattened patches ``(patches, channels * patch ** 2)`` with
grids ``(t, h, w)`` counted in patches. Kimi K2.5's tower, ``vision_tower``, takes the
patches as its image processor cuts them, ``(patches, channels, patch, patch)`` in raster
order within each image, and computes from the grids' values: a bicubic resampling of its
learned position table to each image's grid, each patch's frame in a temporal table, each
patch's 2-D rotary position, the images' bounds, and, after its layers, the target of each
patch in its ``merge_kernel_size`` block (``temporal_merge``: the blocks' rows, averaged
over a clip's frames). The frame index loops over ``grid_thw.tolist()``, and the merge
reads the patch and token totals with ``int()``, so the count and sizes of the images would
be fixed at export.

An image is one frame: its frame index is 0, the zero row of the temporal table, so the
graph gives those zeros itself, and the temporal merge is a permutation of the rows
(each block's patches gathered in the order the merge writes them, averaged over one
frame, a factor of 1). That order is precomputed from the grids as ``merge_order``, with
the position-table taps, the rotary positions and the images' bounds, the last three by
transformers' own helpers. The tower's steps run on those tensors; its attention over the
images runs as one masked attention (patch ``vision_segment_attention``,
families/grid_vision.py, which answers every attention module that takes ``cu_seqlens``).
"""

from __future__ import annotations

from typing import Any

import torch

from . import Family, register

MODEL_TYPE = "kimi_k25"


def _base(model: Any) -> Any:
    return getattr(model, "model", model)


def _kernel(model: Any) -> tuple[int, int]:
    """(rows, columns) of the tower's merge block."""
    rows, columns = model.config.vision_config.merge_kernel_size
    return int(rows), int(columns)


def _patches(model: Any, pixel_values: Any) -> Any:
    """The flattened patches as Kimi K2.5's image processor gives them and its tower takes
    them: ``(patches, channels, patch, patch)``."""
    side = model.config.vision_config.patch_size
    return pixel_values.reshape(pixel_values.shape[0], -1, side, side)


def merge_order(model: Any, grid: Any) -> Any:
    """The order in which the tower's merge takes its rows, one index per patch: in each
    image, its blocks row by row, each block's patches row by row, from the raster order
    of the image's patches; for the grids ``(images, 3)`` of single frames. The merge
    scatters row ``i`` to ``order.argsort()[i]``, and a gather by ``order`` is the same."""
    rows, columns = _kernel(model)
    orders, offset = [], 0
    for t, h, w in grid.tolist():
        if t != 1:
            raise ValueError(f"an image is one frame; a grid of {t} frames is a video")
        index = torch.arange(h * w).reshape(h // rows, rows, w // columns, columns)
        orders.append(index.transpose(1, 2).reshape(-1) + offset)
        offset += h * w
    return torch.cat(orders)


def _grid_inputs(model: Any, grid: Any) -> dict[str, Any]:
    """What the tower computes from the grids ``(images, 3)`` (in patches, one frame each):
    each patch's rotary position (row, column, raster order), the images' bounds, each
    patch's taps and weights in the position table (bicubic, as the tower resamples it),
    all with transformers' own helpers, and the merge's order of the rows
    (:func:`merge_order`)."""
    from transformers import vision_utils

    embeddings = _base(model).vision_tower.patch_embed.pos_emb
    indices, weights = vision_utils.get_vision_interpolation_indices_and_weights(
        grid,
        embeddings.num_grid_per_side,
        mode=embeddings.interpolation_mode,
        align_corners=embeddings.interpolation_align_corners,
    )
    return {
        "vision_position_ids": vision_utils.get_vision_position_ids(grid, 1),
        "cu_seqlens": vision_utils.get_vision_cu_seqlens(grid, merge_temporal=True),
        "interp_indices": indices,
        "interp_weights": weights,
        "merge_order": merge_order(model, grid),
    }


def _tower_steps(
    model: Any,
    pixel_values: Any,
    grid_thw: Any,
    position_ids: Any,
    cu_seqlens: Any,
    interp_indices: Any,
    interp_weights: Any,
) -> Any:
    """Kimi_K25VisionModel.forward's steps on the tensors of :func:`_grid_inputs`, up to
    its final norm: the patch embedding with the position table's taps and the frame
    index of single frames (0), the rotary embedding of the positions, and the layers over
    every image's patches. The temporal merge follows in :func:`_merged`."""
    from transformers.modeling_outputs import BaseModelOutputWithPooling

    tower = _base(model).vision_tower
    frames = torch.zeros(pixel_values.shape[0], dtype=torch.long, device=pixel_values.device)
    hidden = tower.patch_embed(
        pixel_values,
        grid_thw,
        interp_indices=interp_indices,
        interp_weights=interp_weights,
        frame_index=frames,
    )
    rotary = tower.rotary_emb(hidden, position_ids)
    for layer in tower.layers:
        # the longest image bounds the segments (read by flash attention only)
        hidden = layer(
            hidden, cu_seqlens=cu_seqlens, position_embeddings=rotary, max_seqlen=hidden.shape[0]
        )
    return BaseModelOutputWithPooling(last_hidden_state=tower.final_layernorm(hidden))


def _merged(model: Any, out: Any, merge_order: Any) -> Any:
    """The temporal merge of single frames, a gather of each block's rows by
    ``merge_order``, then get_image_features' projector on the blocks (before it splits
    them per image)."""
    rows, columns = _kernel(model)
    hidden = out.last_hidden_state
    blocks = hidden[merge_order].reshape(-1, rows * columns, hidden.shape[-1])
    return _base(model).mm_projector(blocks).squeeze(1)


_VISION_LAYOUT = (
    {
        "vision_tower": "vision_tower",
        "vision_input": _patches,
        "processor_pixels": _patches,
        "grid_inputs": _grid_inputs,
        "vision_call": _tower_steps,
        "vision_output": _merged,
    },
    "its tower, vision_tower, takes the patches as (patches, channels, patch, patch) in "
    "raster order and derives from the grids' values a frame index per patch and the "
    "target of each patch in its merge block (temporal_merge), which fix the image count "
    "and sizes at export; an image is one frame, so the frame index is 0 and the merge a "
    "gather by merge_order, precomputed from the grids with the position table's taps, "
    "the rotary positions and the images' bounds, and the tower's steps run on them",
)

register(
    Family(
        name="kimi_k25",
        model_types=(MODEL_TYPE,),
        config_fixes={
            MODEL_TYPE: (
                {"projection_hidden_size": 64},
                "the projector's norm reads each of the tower's rows, vision_config."
                "hidden_size wide (projection_hidden_size 1152 in the config class, the "
                "published tower's width); the shrinking leaves it at 1152 while the tiny "
                "tower is 64 wide",
            )
        },
        input_layouts={MODEL_TYPE: _VISION_LAYOUT},
    )
)
