"""Nemotron 3 Nano Omni (``nemotron_h_omni``): a RADIO tower over images of any size, a
pixel shuffle of each image's features, then a Nemotron-H language model.

Its image processor resizes each image to a grid of patches whose sides are multiples of
the pixel shuffle's ``merge = round(1 / downsample_ratio)`` and gives ``pixel_values``
``(patches, channels * patch ** 2)`` (each patch channel-major, the images one after the
other, each in raster order) with ``image_grid_hw`` ``(images, 2)``, each image's patch
rows and columns. Its processor writes ``rows * columns // merge ** 2`` image tokens per
image, and the model scatters the features over the positions of
``config.image_token_id``, the id the processor takes from its tokenizer; the config class
leaves it None, so the tiny config gets a free id of its vocabulary.

``get_image_features`` runs the tower on the packed patches, then, in a Python loop over
``image_grid_hw.tolist()``, pixel-shuffles each image's features on its grid and projects
them. The tower itself loops over the grids too: it resamples its learned position table
to each image's grid (bilinear, to a square of the longer side, then cropped), puts its
class and register tokens in front of each image's patches, attends within each image
(``torch.split`` by the images' lengths) and drops those tokens again. The processor side
computes from the grids what those loops read, and the graph runs on it for any number of
images of any sizes:

* ``interp_indices`` / ``interp_weights`` ``(patches, 4)``: each patch's taps in the
  position table and their weights, with transformers' helper on the square grid of each
  image's longer side, cropped to the image as the tower crops it;
* ``patch_index`` ``(patches,)``: each patch's place in the tower's sequence (every image's
  class and register tokens, then its patches), and ``cu_seqlens``, the images' bounds in
  that sequence, as the tower computes them; its attention over the images runs as one
  masked attention (patch ``vision_segment_attention``, families/grid_vision.py, which
  answers every attention module that takes ``cu_seqlens``);
* ``merge_order`` ``(patches,)``: the order in which the pixel shuffle takes the patches'
  feature rows, ``merge ** 2`` side by side per image token: the model's own
  ``pixel_shuffle`` run on each image's row numbers.
"""

from __future__ import annotations

from typing import Any

import torch

from . import Family, register

MODEL_TYPE = "nemotron_h_omni"

#: the image placeholder token: a free id of the tiny vocabulary (1024 ids)
IMAGE_TOKEN = 1000


def _merge_size(config: Any) -> int:
    """Patches a side of one image token: the pixel shuffle's, as the processor computes
    it from ``downsample_ratio``."""
    return round(1 / config.downsample_ratio)


def _prefix(model: Any) -> int:
    """The class and register tokens the tower puts in front of each image."""
    return int(model.config.vision_config.num_summary_tokens)


def _grid_hw(model: Any, grid: Any) -> Any:
    """The grids ``(images, 3)`` as the processor gives them: ``image_grid_hw`` ``(images,
    2)``, rows and columns of patches, one frame each."""
    if bool((grid[:, 0] != 1).any()):
        raise ValueError(f"an image is one frame; grids {grid.tolist()} hold a video")
    return grid[:, 1:]


def position_taps(model: Any, grid_hw: Any) -> tuple[Any, Any]:
    """Each patch's 4 taps in the tower's position table and their weights, ``(patches,
    4)`` each, for images of ``grid_hw`` ``(images, 2)``: the tower resamples the table
    (bilinear, no corner alignment) to the square of each image's longer side and crops
    it to the image's rows and columns, so the taps are those of that square grid
    (transformers' helper), at the image's patches."""
    from transformers import vision_utils

    embeddings = model.vision_model.embeddings
    if embeddings.max_rows != embeddings.max_cols:
        raise ValueError(
            f"the position table is {embeddings.max_rows} x {embeddings.max_cols}: the taps "
            "are computed for a square table"
        )
    indices, weights = [], []
    for rows, columns in grid_hw.tolist():
        side = max(rows, columns)
        square = torch.tensor([[1, side, side]])
        taps, taps_weights = vision_utils.get_vision_interpolation_indices_and_weights(
            square, embeddings.max_rows, mode="bilinear", align_corners=False
        )
        kept = (torch.arange(rows)[:, None] * side + torch.arange(columns)[None, :]).reshape(-1)
        indices.append(taps[kept])
        weights.append(taps_weights[kept])
    return torch.cat(indices), torch.cat(weights)


def merge_order(model: Any, grid_hw: Any) -> Any:
    """The order in which the pixel shuffle takes the feature rows of images of
    ``grid_hw`` ``(images, 2)``: the model's own ``pixel_shuffle`` run on each image's
    row numbers, ``merge ** 2`` rows per image token (a Python loop over the images)."""
    orders, offset = [], 0
    for rows, columns in grid_hw.tolist():
        numbers = torch.arange(rows * columns, dtype=torch.float64) + offset
        shuffled = model.pixel_shuffle(
            numbers.view(1, rows, columns, 1), scale_factor=model.config.downsample_ratio
        )
        orders.append(shuffled.reshape(-1))
        offset += rows * columns
    return torch.cat(orders).round().to(torch.int64)


def grid_inputs(model: Any, grid: Any) -> dict[str, Any]:
    """What the tower and the pixel shuffle compute from the grids ``(images, 3)`` (in
    patches): the images' bounds in the tower's sequence, each patch's place in it, its
    position-table taps, and the pixel shuffle's order of the rows."""
    grid_hw = _grid_hw(model, grid)
    per_image = grid_hw.prod(-1)
    prefix = _prefix(model)
    lengths = per_image + prefix
    starts = torch.nn.functional.pad(lengths.cumsum(0), (1, 0))
    # every patch after its image's prefix, in raster order within the image
    skipped = torch.repeat_interleave(torch.arange(1, grid.shape[0] + 1) * prefix, per_image)
    indices, weights = position_taps(model, grid_hw)
    return {
        "cu_seqlens": starts.to(torch.int32),
        "interp_indices": indices,
        "interp_weights": weights,
        "patch_index": torch.arange(int(per_image.sum())) + skipped,
        "merge_order": merge_order(model, grid_hw),
    }


def tower_steps(
    model: Any,
    pixel_values: Any,
    grid_thw: Any,
    position_ids: Any,
    cu_seqlens: Any,
    interp_indices: Any,
    interp_weights: Any,
    patch_index: Any,
) -> Any:
    """``RadioModel``'s packed forward on the tensors of :func:`grid_inputs`: the patch
    projection plus each patch's resampled position row, the class and register tokens
    in front of each image (at the places ``patch_index`` leaves free), the layers over
    every image's sequence (bounds given, also for one image, which is the same attention
    as the dense one the tower runs then), and the patches' rows out of it. The tower has
    no rotary positions: ``position_ids`` is None."""
    from transformers.modeling_outputs import BaseModelOutputWithPooling

    tower = model.vision_model
    embeddings = tower.embeddings
    table = embeddings.position_embedding[0]
    patches = embeddings.patch_projection(pixel_values)
    positions = (table[interp_indices] * interp_weights[..., None].to(table.dtype)).sum(1)
    patches = patches + positions.to(patches.dtype)
    tokens = embeddings.cls_register_token
    prefix = tokens.shape[0]
    images = grid_thw.shape[0]
    # each image's class and register tokens sit at the start of its sequence
    lengths = grid_thw[:, 1] * grid_thw[:, 2] + prefix
    starts = lengths.cumsum(0) - lengths
    places = (starts[:, None] + torch.arange(prefix, device=starts.device)[None]).reshape(-1)
    hidden = patches.new_zeros((patches.shape[0] + images * prefix, patches.shape[-1]))
    hidden = hidden.index_copy(0, places, tokens.repeat(images, 1).to(patches.dtype))
    hidden = hidden.index_copy(0, patch_index, patches)
    out = tower.encoder(hidden[None], cu_seqlens=cu_seqlens, max_seqlen=hidden.shape[0])
    features = out.last_hidden_state[0][patch_index]
    return BaseModelOutputWithPooling(last_hidden_state=features)


def shuffled(model: Any, out: Any, merge_order: Any) -> Any:
    """``get_image_features``' steps after the tower: the final norm when the model has
    one, the pixel shuffle of every image (a gather of the rows by ``merge_order``,
    ``merge ** 2`` rows side by side per image token) and the projector."""
    features = out.last_hidden_state
    if model.vision_final_layernorm is not None:
        features = model.vision_final_layernorm(features)
    merge = _merge_size(model.config)
    rows = features[merge_order].reshape(-1, merge * merge * features.shape[-1])
    return model.multi_modal_projector(rows)


#: the ``input_layouts`` entry of nemotron_h_omni
LAYOUT = (
    {
        "layout": "grid",
        "grid_argument": "image_grid_hw",
        "merge_size": _merge_size,
        "vision_tower": "vision_model",
        "processor_grid": _grid_hw,
        "grid_inputs": grid_inputs,
        "vision_call": tower_steps,
        "vision_output": shuffled,
    },
    "its tower, vision_model (RADIO), takes every image's patches (patches, channels x "
    "patch x patch) with image_grid_hw, each image's patch grid, and loops over the grids "
    "in Python: a position table resampled to each grid, class and register tokens in "
    "front of each image, attention within each image; get_image_features pixel-shuffles "
    "each image on its grid in another loop; the position taps, each patch's place in the "
    "tower's sequence, the images' bounds and the pixel shuffle's order (the model's "
    "pixel_shuffle run on row numbers) are precomputed from the grids",
)

register(
    Family(
        name="nemotron_h_omni",
        model_types=(MODEL_TYPE,),
        config_fixes={
            MODEL_TYPE: (
                {"image_token_id": IMAGE_TOKEN, "vision_hidden_size": 64},
                "the config class leaves image_token_id None; the processor writes its "
                "tokenizer's image token once per image token (processing_nemotron_h_omni.py, "
                "replace_image_token) and the forward scatters the features over "
                "config.image_token_id's positions: the tiny config gets a free id of its "
                "vocabulary; the projector reads vision_hidden_size (1280 in the config "
                "class, the published tower's width) times merge ** 2 values per token, "
                "which the shrinking leaves at 1280 while the tiny tower is 64 wide",
            )
        },
        input_layouts={MODEL_TYPE: LAYOUT},
    )
)
