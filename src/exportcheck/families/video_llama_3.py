"""VideoLLaMA 3: a variable-resolution tower whose merge of patches is chosen per image.

The task's grid layout feeds flattened patches ``(patches, channels * patch ** 2)`` with
grids ``(t, h, w)`` counted in patches. VideoLLaMA 3's tower, ``vision_model``, also takes
``merge_sizes``, one per image (``image_merge_sizes`` in the forward), and after its layers
"unshuffles" each image on its own: a view to the image's ``merge x merge`` blocks and a
bilinear resize of the image to ``(h / merge, w / merge)``, in a Python loop over
``grid_thw.tolist()``; its positions and attention bounds come from loops over the grids'
values too.

The merge size is the processor's choice, not the model's: VideoLLaMA 3's image processor
gives every image ``merge_size`` 1 (its video processor 2, for frames). This family takes
what the image processor picks. With a merge of 1 the unshuffle is the identity (each block
one patch, and a resize to the image's own size), so one feature row per patch comes out,
and what the tower computes from the grids (each patch's 2-D rotary position, the images'
bounds) is given precomputed, with transformers' own helpers. The tower's steps run on
those tensors; its attention over the images runs as one masked attention (patch
``vision_segment_attention``, families/grid_vision.py, which answers every attention
module that takes ``cu_seqlens``). The generation stage gives ``generate`` the pixels,
the grids and ``image_merge_sizes`` of ones, as the processor gives them.
"""

from __future__ import annotations

from typing import Any

import torch

from . import Family, register

MODEL_TYPE = "video_llama_3"
#: the merge size VideoLLaMA 3's image processor gives every image (``merge_size``)
IMAGE_MERGE_SIZE = 1


def _base(model: Any) -> Any:
    return getattr(model, "model", model)


def image_merge_sizes(model: Any, grid: Any) -> dict[str, Any]:
    """Each image's merge size, as the image processor gives it: ``merge_size`` of the
    vision config (set to the processor's below) for every image of the grids."""
    merge = int(model.config.vision_config.merge_size)
    return {"image_merge_sizes": torch.full((grid.shape[0],), merge, dtype=grid.dtype)}


def _grid_inputs(model: Any, grid: Any) -> dict[str, Any]:
    """What the tower computes from the grids ``(images, 3)`` with Python loops over their
    values: each patch's rotary position (row, column) for the images' merge sizes, and the
    bounds of each frame's patches in the sequence (``cu_seqlens``)."""
    from transformers import vision_utils

    merges = image_merge_sizes(model, grid)["image_merge_sizes"]
    return {
        "vision_position_ids": vision_utils.get_vision_position_ids(grid, merges),
        "cu_seqlens": vision_utils.get_vision_cu_seqlens(grid),
    }


def _tower_steps(
    model: Any, pixel_values: Any, grid_thw: Any, position_ids: Any, cu_seqlens: Any
) -> Any:
    """VideoLlama3VisionModel.forward's steps on the tensors of :func:`_grid_inputs`: the
    patch embedding, the rotary embedding of the precomputed positions, the layers over
    every image's patches and the final norm. The per-image unshuffle that follows in the
    forward is left out: at the image processor's merge size of 1 it gives its input
    back."""
    from transformers.modeling_outputs import BaseModelOutputWithPooling

    tower = _base(model).vision_model
    hidden = tower.embeddings(pixel_values.to(tower.dtype))
    rotary = tower.rotary_pos_emb(hidden, position_ids)
    # the longest image bounds the segments (read by flash attention only)
    out = tower.encoder(
        hidden, cu_seqlens=cu_seqlens, position_embeddings=rotary, max_seqlen=hidden.shape[0]
    )
    return BaseModelOutputWithPooling(last_hidden_state=tower.post_layernorm(out[0]))


def _projected(model: Any, out: Any) -> Any:
    """get_image_features' step after the tower: the projector on every row (before it
    splits them per image)."""
    return _base(model).projector(out.last_hidden_state)


_VISION_LAYOUT = (
    {
        "vision_tower": "vision_model",
        "grid_inputs": _grid_inputs,
        "vision_call": _tower_steps,
        "vision_output": _projected,
        "processor_extras": image_merge_sizes,
    },
    "its tower, vision_model, also takes each image's merge size (image_merge_sizes), a "
    "choice of the processor: its image processor gives 1 to every image, which is taken "
    "here, so the tower's per-image unshuffle (a Python loop over grid_thw.tolist()) is "
    "the identity; the patches' positions and the images' bounds are precomputed from the "
    "grids, the tower's steps run on them and the projector follows",
)

register(
    Family(
        name="video_llama_3",
        model_types=(MODEL_TYPE,),
        config_fixes={
            MODEL_TYPE: (
                {"vision_config.merge_size": IMAGE_MERGE_SIZE},
                "the merge of patches into image tokens is chosen per image by the "
                "processor, not set in the config: VideoLLaMA 3's image processor gives "
                "every image merge_size 1 (image_merge_sizes), which the vision config "
                "carries here for the grid layout, whose grids count patches in merged "
                "blocks of the vision config's merge_size",
            )
        },
        input_layouts={MODEL_TYPE: _VISION_LAYOUT},
    )
)
