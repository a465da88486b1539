"""Cosmos3 Edge: a SigLIP2 tower that resizes its position table to each image in a loop.

Its tower (``visual``) takes the flattened patches, one frame wide, in the processor's
block-major order (each image's ``merge x merge`` blocks row by row, each block's patches
row by row), and the grids. Its embeddings resize the learned ``edge x edge`` position
table to each image's grid with ``F.interpolate(size=(height, width), mode="bilinear",
antialias=True)`` in a Python loop over ``grid_thw.tolist()``, which the export cannot
trace for grids read from the data; its attention then runs image by image (the towers'
``vision_segment_attention`` patch runs it as one masked call, families/grid_vision.py),
and ``get_image_features`` projects the tower's rows with ``projector``.

Here the processor side computes the resize from the grids, and the tower's steps run on
it in one graph for any number of images of any sizes:

* ``interp_weights`` ``(patches, edge * edge)``: each patch's weight on every row of the
  table. The resize is linear in the table and separable, so each image's per-axis
  weights are those of the model's own ``F.interpolate`` call on one-hot rows
  (:func:`exportcheck.families.hunyuan_vision.axis_weights`), and a patch's weight on
  row ``(r, c)`` is its row's weight on ``r`` times its column's on ``c``. Antialiased
  downsizing widens the bilinear kernel by the scale, so a patch's taps grow as its image
  shrinks (12 of a side's 16 rows for a side of 2 patches, 2 when enlarged), and the graph
  takes a static number of taps: the taps here are the whole table, applied as one matrix
  product (no ``interp_indices``; a gather of padded taps would hold ``(patches, taps,
  channels)``);
* ``cu_seqlens``: the frames' bounds, as the tower computes them from the grids.
"""

from __future__ import annotations

from typing import Any

import torch

from . import Family, register
from .hunyuan_vision import axis_weights

TYPES = ("cosmos3_edge",)


def _tower(model: Any) -> Any:
    return getattr(model, "model", model).visual


def _resize(model: Any, height: int, width: int) -> Any:
    """The tower's resize of its table to ``height x width`` patches, as its embeddings
    call it (``modeling_cosmos3_edge.py``, ``resize_positional_embeddings``)."""

    def resize(table: Any) -> Any:
        return torch.nn.functional.interpolate(
            table, size=(height, width), mode="bilinear", align_corners=False, antialias=True
        )

    return resize


def position_weights(model: Any, grid: Any) -> Any:
    """Each patch's weight on every row of the position table, ``(patches, edge *
    edge)``, float32 (the tower resizes in float32 on CPU): the patches of every image's
    frames in block-major order, as the processor gives them."""
    edge = _tower(model).embeddings.position_embedding_size
    merge = model.config.vision_config.spatial_merge_size
    weights = []
    for t, h, w in grid.tolist():
        along_rows, along_columns = axis_weights(edge, _resize(model, h, w))
        dense = along_rows[:, None, :, None] * along_columns[None, :, None, :]  # h, w, edge, edge
        dense = dense.reshape(h // merge, merge, w // merge, merge, edge * edge)
        weights.append(dense.transpose(1, 2).reshape(h * w, edge * edge).repeat(t, 1))
    return torch.cat(weights)


def grid_inputs(model: Any, grid: Any) -> dict[str, Any]:
    """What the tower's loops read, computed from the grids ``(images, 3)``: the frames'
    bounds (``cu_seqlens``, with transformers' own helper) and the position weights."""
    from transformers import vision_utils

    return {
        "cu_seqlens": vision_utils.get_vision_cu_seqlens(grid),
        "interp_weights": position_weights(model, grid),
    }


def tower_steps(
    model: Any,
    pixel_values: Any,
    grid_thw: Any,
    position_ids: Any = None,
    cu_seqlens: Any = None,
    interp_weights: Any = None,
) -> Any:
    """The tower's steps on the precomputed tensors: the patch embedding, the position
    table weighted by each patch's weights (in float32, as the tower resizes it), the
    encoder's layers over every frame's patches (attending within its frame, the bounds
    given) and the final norm."""
    from transformers.modeling_outputs import BaseModelOutputWithPooling

    tower = _tower(model)
    embeddings = tower.embeddings
    hidden = embeddings.patch_embedding(pixel_values.to(embeddings.patch_embedding.weight.dtype))
    table = embeddings.position_embedding.weight
    positions = interp_weights.to(torch.float32) @ table.to(torch.float32)
    hidden = hidden + positions.to(table.dtype)
    hidden = tower.encoder(hidden, grid_thw=grid_thw, cu_seqlens=cu_seqlens)
    return BaseModelOutputWithPooling(last_hidden_state=tower.post_layernorm(hidden))


def projected(model: Any, out: Any) -> Any:
    """``get_image_features``' step after the tower: ``projector`` on its rows."""
    return getattr(model, "model", model).projector(out.last_hidden_state)


_LAYOUT = (
    {
        "vision_tower": "visual",
        "grid_inputs": grid_inputs,
        "vision_call": tower_steps,
        "vision_output": projected,
    },
    "its tower, visual, resizes its position table to each image (antialiased bilinear) "
    "in a Python loop over the grids; each patch's weights on the table are precomputed "
    "from the grids, its steps run on them, and projector follows",
)

register(
    Family(
        name="cosmos3_edge",
        model_types=TYPES,
        input_layouts={t: _LAYOUT for t in TYPES},
    )
)
