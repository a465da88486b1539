"""LFM3-VL: a vision tower whose short-convolution layers reshape each frame to its grid.

Its tower (``vision_tower``) takes the flattened patches in the processor's block-major
order (each frame's ``merge x merge`` blocks row by row, each block's patches row by
row) and the grids, and runs gated short-convolution layers beside attention layers. A
convolution layer splits the patches per image with sizes from ``grid_thw.tolist()``,
lays each image's frames out on their grid and runs a depthwise ``k x k`` convolution
(zero padding ``k // 2``) over them, in a Python loop over the images, which fixes the
image count at export; its attention runs image by image (the towers'
``vision_segment_attention`` patch runs it as one masked call, families/grid_vision.py);
``get_image_features`` then projects its rows with ``multi_modal_projector``.

Here the processor side computes from the grids what those loops read, and the tower's
steps run on it in one graph for any number of images of any sizes:

* ``neighbour_index`` ``(patches, k * k)``: for each patch, the place in the sequence of
  each patch under the kernel, offset by offset as the convolution's weight reads them,
  within the patch's frame; an offset beyond the frame's edge points at one row past the
  patches, which the graph appends as zeros (the padding). The depthwise convolution is
  then a gather of the neighbours weighted by the kernel, channel by channel;
* ``vision_position_ids`` and ``cu_seqlens``: each patch's rotary position and the
  frames' bounds, with transformers' own helpers, as the tower computes them.

The layout is not registered here: vision_language.py's ``_TOWERS`` holds the model
type's entry, :data:`LAYOUT`.
"""

from __future__ import annotations

from typing import Any

import torch

from . import Family, register

TYPES = ("lfm3_vl",)


def _tower(model: Any) -> Any:
    return getattr(model, "model", model).vision_tower


def neighbour_order(model: Any, grid: Any) -> Any:
    """Each patch's neighbours under the convolution's ``k x k`` kernel, ``(patches, k *
    k)``: places in the sequence of the patches of every image's frames in block-major
    order, the frame's zero padding pointing at the row after the last patch."""
    vision = model.config.vision_config
    merge, kernel = vision.spatial_merge_size, vision.conv_kernel_size
    total = int(grid.prod(-1).sum())
    offsets = torch.arange(kernel) - kernel // 2
    index, start = [], 0
    for t, h, w in grid.tolist():
        # the place of each patch of a frame in its block-major sequence, on the frame's grid
        places = torch.arange(h * w).reshape(h // merge, w // merge, merge, merge)
        places = places.permute(0, 2, 1, 3).reshape(h, w)
        rows = torch.arange(h)[:, None, None, None] + offsets[None, None, :, None]
        columns = torch.arange(w)[None, :, None, None] + offsets[None, None, None, :]
        inside = (rows >= 0) & (rows < h) & (columns >= 0) & (columns < w)  # h, w, k, k
        reached = places[rows.clamp(0, h - 1), columns.clamp(0, w - 1)]
        # back to the block-major order of the patches, one row of k * k taps each
        order = places.reshape(-1).argsort()
        for frame in range(t):
            taps = torch.where(inside, reached + start + frame * h * w, total)
            index.append(taps.reshape(h * w, kernel * kernel)[order])
        start += t * h * w
    return torch.cat(index)


def grid_inputs(model: Any, grid: Any) -> dict[str, Any]:
    """What the tower's loops read, computed from the grids ``(images, 3)``: the rotary
    positions and the frames' bounds (transformers' helpers, called as the tower calls
    them) and each patch's neighbours."""
    from transformers import vision_utils

    merge = model.config.vision_config.spatial_merge_size
    return {
        "vision_position_ids": vision_utils.get_vision_position_ids(grid, merge),
        "cu_seqlens": vision_utils.get_vision_cu_seqlens(grid),
        "neighbour_index": neighbour_order(model, grid),
    }


def _convolution(conv: Any, hidden: Any, neighbour_index: Any) -> Any:
    """A gated short-convolution step on the gathered neighbours: its input projection
    into the input gate, output gate and convolution input, the depthwise kernel over
    each patch's neighbours (zeros past the frame's edges), the output gate and the
    output projection."""
    input_gate, output_gate, conv_input = conv.in_proj(hidden).chunk(3, dim=-1)
    gated = input_gate * conv_input
    padded = torch.cat([gated, gated.new_zeros((1, gated.shape[-1]))])
    weight = conv.spatial_conv.weight  # channels, 1, k, k
    kernel = weight.reshape(weight.shape[0], -1).T  # k * k, channels
    convolved = (padded[neighbour_index] * kernel[None]).sum(1)
    return conv.out_proj(output_gate * convolved)


def tower_steps(
    model: Any,
    pixel_values: Any,
    grid_thw: Any,
    position_ids: Any = None,
    cu_seqlens: Any = None,
    neighbour_index: Any = None,
) -> Any:
    """The tower's steps on the precomputed tensors: the patch embedding and its norm, the
    rotary embedding of the positions given, and the layers: attention layers as they are
    (attending within each frame, the bounds given), convolution layers with their
    convolution on the neighbours given."""
    from transformers.modeling_outputs import BaseModelOutputWithPooling

    tower = _tower(model)
    hidden = tower.embedding_norm(tower.patch_embed(pixel_values))
    rotary = tower.rotary_pos_emb(hidden, position_ids)
    for layer in tower.layers:
        if layer.is_attention_layer:
            hidden = layer(hidden, position_embeddings=rotary, cu_seqlens=cu_seqlens)
            continue
        hidden = hidden + _convolution(layer.conv, layer.operator_norm(hidden), neighbour_index)
        hidden = hidden + layer.feed_forward(layer.ffn_norm(hidden))
    return BaseModelOutputWithPooling(last_hidden_state=hidden)


def projected(model: Any, out: Any) -> Any:
    """``get_image_features``' step after the tower: ``multi_modal_projector`` on its
    rows."""
    return getattr(model, "model", model).multi_modal_projector(out.last_hidden_state)


#: the ``input_layouts`` entry of lfm3_vl
LAYOUT = (
    {
        "vision_tower": "vision_tower",
        "grid_inputs": grid_inputs,
        "vision_call": tower_steps,
        "vision_output": projected,
    },
    "its tower, vision_tower, runs short-convolution layers that lay each image's frames "
    "out on their grid in a Python loop over the grids; each patch's neighbours under the "
    "kernel are precomputed from the grids, its steps run on them, and "
    "multi_modal_projector follows",
)

register(Family(name="lfm3_vl", model_types=("lfm3_vl",), input_layouts={"lfm3_vl": LAYOUT}))
