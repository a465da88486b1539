"""HunYuan-VL and HY-V4-VL: a vision tower whose steps loop over the images' grids.

Their tower (``vision_tower``) takes the flattened patches and the grids, and in Python
loops over the grids' values it

* resizes its learned position table to each image's grid (``F.interpolate``, bilinear;
  HunYuan-VL to the grid's size, HY-V4-VL by a scale of ``(side + 0.1) / edge``),
* runs its attention image by image (the towers' ``vision_segment_attention`` patch runs
  it as one masked call, families/grid_vision.py),
* merges each image's ``merge x merge`` blocks with a strided convolution over the image's
  grid, and appends a learned newline row after each row of merged tokens (HunYuan-VL
  also puts learned begin and end rows around each image, after its projection).

Here the processor side computes from the grids what those loops read, and the tower's
steps run on it in one graph for any number of images of any sizes:

* ``interp_indices`` and ``interp_weights``: each patch's taps in the position table. The
  resize is linear in the table and separable, so each image's per-axis weights are those
  of the same ``F.interpolate`` call on one-hot rows, and a patch's taps are the products
  of its row's and its column's;
* ``merge_order``: each merged token's patches, block by block (the convolution is then a
  linear layer over the block's rows side by side);
* ``feature_index``: the order of the feature rows, the newline, begin and end rows among
  them.
"""

from __future__ import annotations

from typing import Any

import torch

from . import Family, register
from .vision_language import merge_block_order

TYPES = ("hunyuan_vl", "hy_v4_vl")


def _tower(model: Any) -> Any:
    return getattr(model, "model", model).vision_tower


def axis_weights(edge: int, resize: Any) -> tuple[Any, Any]:
    """The weights along each axis of ``resize``, a model's own resize of an ``edge x
    edge`` table ``(1, channels, edge, edge) -> (1, channels, height, width)``:
    ``(height, edge)`` and ``(width, edge)``, from its call on a table whose channel ``c``
    is one-hot on row (or column) ``c``. Valid for a resize that is linear in the table,
    separable and keeps a constant axis constant (bilinear interpolation, with or without
    antialiasing: its weights along an axis sum to 1)."""
    one_hot = torch.eye(edge)
    rows = one_hot[:, :, None].expand(edge, edge, edge)[None]  # channel c: row c set
    columns = one_hot[:, None, :].expand(edge, edge, edge)[None]  # channel c: column c set
    return resize(rows)[0, :, :, 0].T, resize(columns)[0, :, 0, :].T


def _axis_weights(model: Any, height: int, width: int) -> tuple[Any, Any]:
    """The resize's weights along each axis for an image of ``height x width`` patches:
    ``(height, edge)`` and ``(width, edge)``, from the model's own call of
    ``F.interpolate`` (:func:`axis_weights`)."""
    embeddings = _tower(model).embeddings
    edge = embeddings.position_edge
    if model.config.model_type == "hy_v4_vl":
        scale = ((height + 0.1) / edge, (width + 0.1) / edge)
        options = {"scale_factor": scale}
    else:
        options = {"size": (height, width)}
    mode = model.config.vision_config.interpolate_mode
    resize = lambda table: torch.nn.functional.interpolate(  # noqa: E731
        table, mode=mode, align_corners=False, **options
    )
    return axis_weights(edge, resize)


def _taps(weights: Any) -> tuple[Any, Any]:
    """The nonzero taps of each row of ``weights`` ``(n, edge)``: indices and weights
    ``(n, k)``, k the most any row has (padded with weight 0)."""
    k = int((weights != 0).sum(-1).max())
    values, indices = weights.abs().topk(k, dim=-1)
    return indices, weights.gather(-1, indices) * (values != 0)


def position_taps(model: Any, grid: Any) -> dict[str, Any]:
    """Each patch's taps in the position table (``interp_indices``, ``interp_weights``,
    ``(patches, taps)``), the table's row 0 being its class token: the patches of every
    image's frames row by row, as the tower's patch embedding takes them."""
    edge = _tower(model).embeddings.position_edge
    indices, weights = [], []
    for t, h, w in grid.tolist():
        row_index, row_weight = _taps(_axis_weights(model, h, w)[0])
        column_index, column_weight = _taps(_axis_weights(model, h, w)[1])
        index = row_index[:, None, :, None] * edge + column_index[None, :, None, :] + 1
        weight = row_weight[:, None, :, None] * column_weight[None, :, None, :]
        taps = index.shape[-2] * index.shape[-1]
        indices.append(index.reshape(h * w, taps).repeat(t, 1))
        weights.append(weight.reshape(h * w, taps).repeat(t, 1))
    width = max(i.shape[1] for i in indices)
    pad = lambda x: torch.nn.functional.pad(x, (0, width - x.shape[1]))  # noqa: E731
    return {
        "interp_indices": torch.cat([pad(i) for i in indices]),
        "interp_weights": torch.cat([pad(w) for w in weights]),
    }


def feature_order(model: Any, grid: Any) -> Any:
    """The order of the feature rows: for each image, its merged tokens row by row with the
    newline row after each row, and for HunYuan-VL the begin row before and the end row
    after; indices into the merged tokens of every image followed by the newline, begin and
    end rows."""
    merge = model.config.vision_config.spatial_merge_size
    tokens = int((grid[:, 0] * (grid[:, 1] // merge) * (grid[:, 2] // merge)).sum())
    newline, begin, end = tokens, tokens + 1, tokens + 2
    framed = model.config.model_type == "hunyuan_vl"
    order, offset = [], 0
    for t, h, w in grid.tolist():
        rows, columns = h // merge, w // merge
        for _ in range(t):
            image = torch.arange(offset, offset + rows * columns).reshape(rows, columns)
            image = torch.cat([image, torch.full((rows, 1), newline)], dim=1).reshape(-1)
            if framed:
                image = torch.cat([torch.tensor([begin]), image, torch.tensor([end])])
            order.append(image)
            offset += rows * columns
    return torch.cat(order)


def grid_inputs(model: Any, grid: Any) -> dict[str, Any]:
    """What the tower's loops read, computed from the grids ``(images, 3)``: the images'
    bounds (``cu_seqlens``), the position taps, the merge order and the feature order."""
    cu_seqlens = torch.nn.functional.pad(grid.prod(-1).cumsum(0), (1, 0)).to(torch.int32)
    return {
        "cu_seqlens": cu_seqlens,
        **position_taps(model, grid),
        **merge_block_order(model, grid),
        "feature_index": feature_order(model, grid),
    }


def tower_steps(
    model: Any,
    pixel_values: Any,
    grid_thw: Any,
    position_ids: Any = None,
    cu_seqlens: Any = None,
    interp_indices: Any = None,
    interp_weights: Any = None,
) -> Any:
    """The tower's steps before its merger on the precomputed tensors: the patch embedding,
    the position table's rows weighted by each patch's taps, and the layers over every
    image's patches (attending within its image)."""
    from transformers.modeling_outputs import BaseModelOutputWithPooling

    embeddings = _tower(model).embeddings
    vision = model.config.vision_config
    patches = pixel_values.reshape(-1, vision.num_channels, vision.patch_size, vision.patch_size)
    hidden = embeddings.patch_embedding(patches).reshape(patches.shape[0], -1)
    table = embeddings.position_embedding.weight
    positions = (table[interp_indices] * interp_weights[..., None].to(table.dtype)).sum(1)
    hidden = (hidden + positions.to(hidden.dtype))[None]
    for layer in _tower(model).layers:
        hidden = layer(
            hidden, cu_seqlens=cu_seqlens, max_seqlen=hidden.shape[1], attention_mask=None
        )
    return BaseModelOutputWithPooling(last_hidden_state=hidden)


def merged_features(model: Any, out: Any, merge_order: Any, feature_index: Any) -> Any:
    """The tower's merger on the blocks gathered by ``merge_order``: its norm, its strided
    convolution as a linear layer over each block's rows side by side (kernel rows, kernel
    columns, channels, as the convolution's weight reads them), its activation and 1x1
    output convolution; then the rows in ``feature_index``'s order with the newline row
    (and, for HunYuan-VL, its projection, begin and end rows and final norm)."""
    merger = _tower(model).patch_merger
    rows = merger.before_rms(out.last_hidden_state[0])[merge_order]
    conv = merger.proj_conv
    blocks = rows.reshape(-1, conv.weight.shape[1] * conv.weight.shape[2] * conv.weight.shape[3])
    weight = conv.weight.permute(0, 2, 3, 1).reshape(conv.weight.shape[0], -1)
    merged = merger.proj_act(torch.nn.functional.linear(blocks, weight, conv.bias))
    merged = torch.nn.functional.linear(
        merged, merger.proj_out.weight[:, :, 0, 0], merger.proj_out.bias
    )
    merged = torch.cat([merged, merger.image_newline[None].to(merged.dtype)])
    if not hasattr(merger, "image_begin"):
        return merged[feature_index]
    merged = merger.mlp(merged)
    framed = torch.cat([merged, merger.image_begin[None], merger.image_end[None]])
    return merger.after_rms(framed[feature_index])


_LAYOUT = (
    {
        "vision_tower": "vision_tower",
        "grid_inputs": grid_inputs,
        "vision_call": tower_steps,
        "vision_output": merged_features,
    },
    "its tower, vision_tower, resizes its position table to each image, merges each "
    "image's blocks with a strided convolution and adds newline rows (and begin and end "
    "rows) in Python loops over the grids; the position taps, the blocks' order and the "
    "feature rows' order are precomputed from the grids, and its steps run on them",
)

register(
    Family(
        name="hunyuan_vision",
        model_types=TYPES,
        input_layouts={t: _LAYOUT for t in TYPES},
    )
)
