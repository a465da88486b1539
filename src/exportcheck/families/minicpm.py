"""MiniCPM-V 4.6 and 4.7, MiniCPM-OCR: a NaViT-like SigLIP tower over images of any size,
a window-attention merger inside it, then a merger of each image's blocks into image
tokens, written over the prompt's image placeholder tokens.

The processor cuts each image (and each of its slices) into patches of ``patch_size``
pixels laid side by side, ``pixel_values`` ``(1, channels, patch, patches * patch)``, with
``target_sizes`` ``(images, 2)``: each image's grid of patches, rows and columns. It puts
``image_token * n`` in the prompt for an image of ``n`` tokens, and the model scatters the
image features over the positions of ``config.image_token_id``
(``MiniCPMV4_6Model.forward``, ``get_placeholder_mask`` then ``masked_scatter``), the id the
processor takes from its tokenizer (``tokenizer.image_token_id``). The config class leaves
that id None: the tiny config gets a free id of its vocabulary.

The task's grid layout builds the images (one image per row of ``target_sizes``, a
thumbnail or a slice alike). What the tower and its mergers compute from the grids in
Python (``.tolist()``) is precomputed from them here: each patch's row of the position
table (nearest-neighbour, ``get_vision_nearest_position_ids``), the 2 x 2 windows of the
window-attention merger (its own ``get_window_index``), and the order in which the last
merger takes each image's blocks (the merger run on row numbers): with the window merger
(16x) that order is the windows', without it (4x) a gather of the patches' rows,
``merge_order``. Every image's attention runs as one masked attention (patch
``vision_segment_attention``, families/grid_vision.py), which answers the branch the
tower has for flash attention.

MiniCPM-V 4.7 also positions the prompt with a canvas M-RoPE: its ``get_rope_index``
takes the grids as ``target_sizes`` (the layout's ``grid_argument``) with
``mm_token_type_ids``. Its marker ids (``image_start_id``, ...) stay None, as the config
class leaves them: the prompt the task builds has no markers, and the model lays out each
image's tokens on its canvas all the same.
"""

from __future__ import annotations

from typing import Any

import torch

from . import Family, register

MODEL_TYPES = ("minicpm_ocr", "minicpmv4_6", "minicpmv4_7")

#: the image placeholder token: a free id of the tiny vocabulary (1024 ids)
IMAGE_TOKEN = 1000


def _base(model: Any) -> Any:
    return getattr(model, "model", model)


def _vit_merger(config: Any) -> bool:
    """True when the tower runs its window-attention merger (``downsample_mode`` 16x): an
    image token is then 4 x 4 patches, else 2 x 2 (4x, MiniCPM-OCR's default)."""
    return config.downsample_mode != "4x"


def _merge_size(config: Any) -> int:
    """Patches a side of one image token: the merger's kernel, times the window merger's
    when the tower runs it."""
    side = int(config.merge_kernel_size[0])
    if _vit_merger(config):
        side *= int(config.vision_config.window_kernel_size[0])
    return side


def _navit_pixels(model: Any, pixel_values: Any) -> Any:
    """The flattened patches ``(patches, channels * patch * patch)`` as the processor lays
    them out and the tower takes them: side by side, ``(1, channels, patch, patches *
    patch)`` (the patch convolution's stride reads one patch per column of patches)."""
    vision = model.config.vision_config
    side, channels = vision.patch_size, vision.num_channels
    patches = pixel_values.reshape(-1, channels, side, side).permute(1, 2, 0, 3)
    return patches.reshape(1, channels, side, -1)


def _target_sizes(model: Any, grid: Any) -> Any:
    """The grids ``(images, 3)`` as the processor gives them: ``target_sizes`` ``(images,
    2)``, rows and columns of patches, int32."""
    return grid[:, 1:].to(torch.int32)


def merge_order(model: Any, sizes: Any) -> Any:
    """The order in which the merger takes the tower's rows for images of ``sizes``
    ``(images, 2)`` (the grids it sees): its own forward run on row numbers, its layer left
    out, each token's ``kernel`` rows side by side (a Python loop over the images)."""
    merger = _base(model).merger
    if merger.merger_times != 1:
        raise ValueError(
            f"the merger merges {merger.merger_times} times: the precomputed order covers "
            "one merge of each image's blocks"
        )
    rows = int(sizes.prod(-1).sum())
    numbers = torch.arange(rows, dtype=torch.float64)[None, :, None]
    layers = merger.mlp
    merger.mlp = torch.nn.ModuleList([torch.nn.Identity()])
    try:
        order = torch.cat(merger(numbers, sizes))
    finally:
        merger.mlp = layers
    return order.reshape(-1).round().to(torch.int64)


def _grid_inputs(model: Any, grid: Any) -> dict[str, Any]:
    """What the tower and its mergers compute from the grids ``(images, 3)`` (in
    patches), with the model's own functions: each patch's row of the position table, the
    images' bounds, and the order in which the merger takes the rows.

    With the window merger (16x), that order goes into the windows instead: the window
    merger turns each 2 x 2 window of patches into one row, in the order of
    ``window_index``, and the layers after it attend within each image with no positions
    (the position table is added before the first layer), so they give the same rows in
    any order of an image's windows. ``window_index`` lists the windows in the order the
    merger takes them (``merge_order`` of the windows), whose rows the merger then reads
    one after the other; ``cu_window_seqlens``, windows of 4 patches, is the same in any
    order. Without it (4x), the merger gathers the patches' rows by ``merge_order``."""
    from transformers.vision_utils import get_vision_nearest_position_ids

    tower = _base(model).vision_tower
    sizes = _target_sizes(model, grid)
    out = {
        "vision_position_ids": get_vision_nearest_position_ids(
            sizes, tower.embeddings.num_patches_per_side
        ),
        "cu_seqlens": torch.nn.functional.pad(sizes.prod(-1).cumsum(0, dtype=torch.int32), (1, 0)),
    }
    if not _vit_merger(model.config):
        out["merge_order"] = merge_order(model, sizes)
        return out
    windows, bounds, size = tower.vit_merger.get_window_index(sizes)
    kernel = torch.tensor(model.config.vision_config.window_kernel_size, dtype=sizes.dtype)
    order = merge_order(model, sizes // kernel)
    out["window_index"] = windows.reshape(-1, size)[order].reshape(-1)
    out["cu_window_seqlens"] = bounds
    return out


def _tower_steps(
    model: Any,
    pixel_values: Any,
    grid_thw: Any,
    position_ids: Any,
    cu_seqlens: Any,
    window_index: Any = None,
    cu_window_seqlens: Any = None,
) -> Any:
    """The tower's own forward on the grids as ``target_sizes``, with the position rows
    and the windows given precomputed (it pops them instead of looping over the grids).
    It derives the images' bounds from ``target_sizes`` with tensor operations, before and
    after the window merger, so the graph's ``cu_seqlens``, which the grid layout gives
    every tower, goes unread."""
    windows = {}
    if window_index is not None:
        windows = {"window_index": window_index, "cu_window_seqlens": cu_window_seqlens}
    return _base(model).vision_tower(
        pixel_values,
        target_sizes=grid_thw[:, 1:].to(torch.int32),
        use_vit_merger=_vit_merger(model.config),
        position_ids=position_ids,
        **windows,
    )


def _merged(model: Any, out: Any, merge_order: Any = None) -> Any:
    """The merger on the tower's rows in the order it takes them (gathered by
    ``merge_order``, or already in that order from the window merger): each token's
    ``kernel`` rows side by side through its layer (what its forward does image by
    image)."""
    layer = _base(model).merger.mlp[0]
    rows = out.last_hidden_state.reshape(-1, out.last_hidden_state.shape[-1])
    if merge_order is not None:
        rows = rows[merge_order]
    return layer(rows.reshape(-1, layer.linear_1.in_features))


_LAYOUT = (
    {
        "layout": "grid",
        "grid_argument": "target_sizes",
        "merge_size": _merge_size,
        "vision_tower": "vision_tower",
        "vision_input": _navit_pixels,
        "processor_pixels": _navit_pixels,
        "processor_grid": _target_sizes,
        "grid_inputs": _grid_inputs,
        "vision_call": _tower_steps,
        "vision_output": _merged,
    },
    "its tower, vision_tower, takes every image's patches side by side (1, channels, patch, "
    "patches x patch) with target_sizes, each image's grid of patches, and its mergers "
    "loop over the images in Python; each patch's position-table row, the window "
    "merger's windows and the order in which the last merger takes the rows (the merger "
    "run on row numbers: the windows' order in 16x, merge_order in 4x) are precomputed "
    "from the grids",
)

_TOKEN_REASON = (
    "the config class leaves image_token_id None; the processor writes its tokenizer's "
    "image token once per image token (processing_minicpmv4_6.py, replace_image_token) "
    "and the forward scatters the features over config.image_token_id's positions: the "
    "tiny config gets a free id of its vocabulary"
)
_LAYER_REASON = (
    "insert_layer_id 6 (the layer after which the tower runs its window-attention merger) "
    "is beyond the tiny tower's 2 layers, so the merger would never run while "
    "get_image_features halves the grids for it (16x); 0 runs it after the first layer"
)

register(
    Family(
        name="minicpm",
        model_types=MODEL_TYPES,
        config_fixes={
            "minicpmv4_6": (
                {
                    "image_token_id": IMAGE_TOKEN,
                    "insert_layer_id": 0,
                    "vision_config.insert_layer_id": 0,
                },
                f"{_TOKEN_REASON}; {_LAYER_REASON}",
            ),
            "minicpmv4_7": (
                {
                    "image_token_id": IMAGE_TOKEN,
                    "insert_layer_id": 0,
                    "vision_config.insert_layer_id": 0,
                },
                f"{_TOKEN_REASON}; {_LAYER_REASON}",
            ),
            "minicpm_ocr": (
                {
                    "image_token_id": IMAGE_TOKEN,
                    "insert_layer_id": 0,
                    "vision_config.insert_layer_id": 0,
                },
                f"{_TOKEN_REASON}; {_LAYER_REASON} (in 16x mode; its default, 4x, skips it)",
            ),
        },
        input_layouts={t: _LAYOUT for t in MODEL_TYPES},
    )
)
