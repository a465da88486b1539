"""Inkling2: a dynamic short convolution whose sliding windows guard the number of new tokens."""

from __future__ import annotations

import math
import sys
from typing import Any

import torch

from ..patches import Patch
from . import Family, register


def _make_short_conv_forward(module, original):
    def forward(
        self, hidden_states, dynamic_input, cache=None, conv_mask=None, cache_offset=0, **kwargs
    ):
        if kwargs.get("seq_idx") is not None:
            return original(
                self,
                hidden_states,
                dynamic_input,
                cache=cache,
                conv_mask=conv_mask,
                cache_offset=cache_offset,
                **kwargs,
            )
        input_dtype = hidden_states.dtype
        batch_size, seq_len, hidden_size = hidden_states.shape
        k = self.conv_kernel_size
        dynamic_weights = self.weight_proj(dynamic_input).float()
        dynamic_weights = dynamic_weights.view(batch_size, seq_len, self.num_heads, 1, k)
        weights = self.static_weight.float().T.view(self.num_heads, -1, k) + dynamic_weights
        hidden_states = hidden_states.float()
        residual = hidden_states
        context = module.apply_mask_to_padding_states(hidden_states, conv_mask).transpose(1, 2)
        if cache is not None:
            context = cache.update_conv_state(
                context, self.layer_idx + cache_offset, state_idx=self.conv_idx, conv_kernel_size=k
            )
        context = torch.nn.functional.pad(context, (k - 1, 0))[..., -(seq_len + k - 1) :]
        # windows[..., lag] is the token `lag` steps back: the same values as
        # context.unfold(-1, k, 1).flip(-1), built from k shifted slices
        windows = torch.stack(
            [context[..., k - 1 - lag : k - 1 - lag + seq_len] for lag in range(k)], dim=-1
        )
        windows = windows.transpose(1, 2).reshape(batch_size, seq_len, self.num_heads, -1, k)
        hidden_states = (windows * weights).sum(-1).reshape(batch_size, seq_len, hidden_size)
        hidden_states = (hidden_states + residual) / math.sqrt(2 * k + 1)
        return hidden_states.to(input_dtype)

    return forward


def _install_inkling2_short_conv_windows(patcher: Any, model: Any) -> None:
    """Build the sliding windows of Inkling2's dynamic short convolution without ``unfold().flip()``.

    Fixes: the ExportedProgram of inkling2_text / inkling2_loop_text rejects more than 3 new
    tokens: ``AssertionError: Guard failed: input_ids.size()[1] <= 3`` (export first narrows
    seq_length to [1, 3]). ``context.unfold(-1, k, 1).flip(-1)`` in
    Inkling2DynamicShortConvolution.forward (transformers/models/inkling2/modeling_inkling2.py:403,
    inkling2_loop/modeling_inkling2_loop.py:446) gives a view whose two last dims (seq_len, k=4)
    both have stride 1; ``flip`` allocates its output with ``empty_like(preserve_format)``, whose
    layout decision compares those two sizes and guards ``seq_len < 4``. The windows are built here
    from k shifted slices stacked on the last dim: the same values, no guard.

    Remove when: torch's empty_like / flip meta stops guarding on sizes of equal-stride dims, or
    transformers builds the windows without flipping an unfolded view.
    """
    for mod_name, cls_name in (
        ("transformers.models.inkling2.modeling_inkling2", "Inkling2DynamicShortConvolution"),
        (
            "transformers.models.inkling2_loop.modeling_inkling2_loop",
            "Inkling2LoopDynamicShortConvolution",
        ),
    ):
        module = sys.modules.get(mod_name)
        cls = getattr(module, cls_name, None) if module is not None else None
        if cls is not None:
            patcher.replace(cls, "forward", _make_short_conv_forward(module, cls.forward))


INKLING2_SHORT_CONV_WINDOWS = Patch(
    name="inkling2_short_conv_windows",
    fixes="Constraints violated (seq_length)! ... satisfy the generated guard 2 <= L['input_ids'].size()[1] and L['input_ids'].size()[1] <= 3",
    remove_when="torch's empty_like / flip meta stops guarding on sizes of equal-stride dims, or "
    "transformers builds the windows without flipping an unfolded view",
    install=_install_inkling2_short_conv_windows,
    model_types=("inkling2_text", "inkling2_loop_text"),
)


register(
    Family(
        name="inkling2",
        model_types=("inkling2_text", "inkling2_loop_text"),
        patches=(INKLING2_SHORT_CONV_WINDOWS,),
    )
)


# ---- the vision tower of the image-text models (inkling2, inkling2_loop) ----------------
#
# The task's grid layout feeds flattened patches ``(patches, P * P * C)`` with grids
# ``(t, h, w)`` counted in patches. Inkling2's tower takes one ``(M * P, M * P, C)`` block
# per language-model image token (M: spatial merge size), with grids counted in tokens, puts
# a class token in front of each image, and finds every patch's place in that sequence with
# ``repeat_interleave`` over the grids' values, which it cannot take precomputed. Its steps
# run here on tensors precomputed from the grids, ``patch_index`` among them.

VISION_TYPES = ("inkling2", "inkling2_loop")


def _vision_sizes(model: Any) -> tuple[int, int, int]:
    """(merge, patch, channels) of the vision tower."""
    vision = model.config.vision_config
    return vision.spatial_merge_size, vision.patch_size, vision.num_channels


def _token_blocks(model: Any, patches: Any) -> Any:
    """The flattened patches ``(tokens * M * M, P * P * C)``, each token's ``M x M`` patches
    row by row and each patch's pixels channels last, as the tower takes them: one
    ``(M * P, M * P, C)`` block of pixels per token (the processor's layout)."""
    merge, patch, channels = _vision_sizes(model)
    blocks = patches.reshape(-1, merge, merge, patch, patch, channels).transpose(2, 3)
    return blocks.reshape(-1, merge * patch, merge * patch, channels)


def _token_grid(model: Any, grid: Any) -> Any:
    """The grids ``(images, 3)`` counted in patches, as the processor counts them: in
    language-model image tokens."""
    merge = _vision_sizes(model)[0]
    return grid // torch.tensor([1, merge, merge], dtype=grid.dtype)


def _grid_inputs(model: Any, grid: Any) -> dict[str, Any]:
    """What the tower computes from the grids ``(images, 3)`` (in patches): every image's
    bounds in the sequence of its class token and patches (``cu_seqlens``), each patch's
    place in it (``patch_index``), its rotary position (``vision_position_ids``, row and
    column) and its taps in the position table (``interp_indices``, ``interp_weights``),
    the last two with transformers' own helpers."""
    from transformers import vision_utils

    merge = _vision_sizes(model)[0]
    per_image = grid.prod(-1)
    images = grid.shape[0]
    # each image's sequence is its class token, then its patches
    cu_seqlens = torch.nn.functional.pad((per_image + 1).cumsum(0), (1, 0)).to(torch.int32)
    skipped = torch.repeat_interleave(torch.arange(1, images + 1), per_image)
    indices, weights = vision_utils.get_vision_interpolation_indices_and_weights(
        grid,
        num_grid_per_side=model.config.vision_config.posemb_grid_size,
        mode="bilinear",
        align_corners=False,
        spatial_merge_size=merge,
    )
    return {
        "vision_position_ids": vision_utils.get_vision_position_ids(grid, merge),
        "cu_seqlens": cu_seqlens,
        "interp_indices": indices,
        "interp_weights": weights,
        "patch_index": torch.arange(int(per_image.sum())) + skipped,
    }


def _tower_steps(
    model: Any,
    pixel_values: Any,
    grid_thw: Any,
    position_ids: Any,
    cu_seqlens: Any,
    patch_index: Any,
    interp_indices: Any,
    interp_weights: Any,
) -> Any:
    """Inkling2VisionModel.forward's steps on the tensors of :func:`_grid_inputs`: the
    embeddings (class tokens, with the patches' at ``patch_index``), the rotary positions
    (class tokens at (0, 0), patches 1-based), the layers over every image's sequence, and
    the merger over each token's ``M x M`` patch rows."""
    from transformers.modeling_outputs import BaseModelOutputWithPooling

    tower = getattr(model, "model", model).vision_tower
    merge = _vision_sizes(model)[0]
    pixels = pixel_values.to(tower.embeddings.patch_embedding.weight.dtype)
    # the embeddings take the interpolation taps precomputed; of the grids, the image count
    hidden = tower.embeddings(
        pixels, grid_thw, patch_index, interp_indices=interp_indices, interp_weights=interp_weights
    )
    hidden = tower.pre_layernorm(hidden)
    positions = position_ids.new_zeros(hidden.shape[0], 2)
    positions = positions.index_copy(0, patch_index, position_ids + 1)
    rotary = tower.rotary_emb(hidden, positions)
    for layer in tower.layers:
        # the longest image bounds the segments (read by flash attention only)
        hidden = layer(
            hidden, cu_seqlens=cu_seqlens, position_embeddings=rotary, max_seqlen=hidden.shape[0]
        )
    rows = hidden[patch_index]
    pooled = tower.merger(rows.reshape(-1, merge * merge * hidden.shape[-1]))
    return BaseModelOutputWithPooling(last_hidden_state=hidden, pooler_output=pooled)


_VISION_LAYOUT = (
    {
        "vision_tower": "vision_tower",
        "vision_input": _token_blocks,
        "processor_pixels": _token_blocks,
        "processor_grid": _token_grid,
        "grid_inputs": _grid_inputs,
        "vision_call": _tower_steps,
    },
    "its tower, vision_tower, takes one (merge x patch, merge x patch, channels) block of "
    "pixels per language-model image token, with grids counted in tokens, and places a "
    "class token in front of each image; each patch's place in that sequence "
    "(patch_index), which it derives with repeat_interleave over the grids' values, is "
    "precomputed from the grids with the images' bounds, positions and position-table taps, "
    "and its steps run on them",
)

register(
    Family(
        name="inkling2_vision",
        model_types=VISION_TYPES,
        input_layouts={t: _VISION_LAYOUT for t in VISION_TYPES},
        # its vision attention splits per image with lengths.tolist(): the towers' patch
        # vision_segment_attention (families/grid_vision.py) runs it as one call, as it
        # does every attention module that takes cu_seqlens
    )
)
