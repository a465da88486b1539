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
