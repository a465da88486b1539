"""ZAYA: compressed convolutional attention, whose values mix the current token with the
previous one."""

from __future__ import annotations

from typing import Any

from ..patches import Patch
from ..patches.core import passthrough
from . import Family, register

MODULE = "transformers.models.zaya.modeling_zaya"


def cca_projection(self: Any, hidden_states: Any, cache: Any, conv_mask: Any = None) -> Any:
    """Query, key and value states of ZAYA's CCA projection, (batch, tokens, heads, dim).

    Queries and keys: their projections go through a causal depthwise then grouped
    convolution over time (the cached tail of the previous steps, or zeros, in front),
    plus a residual of the projections (queries and keys averaged per group). Values:
    half of each head from the current token, half from the previous token's delayed
    projection (the cached one, or the projection of zeros)."""
    import torch

    if self.training:
        return passthrough(cca_projection.original, self, hidden_states, cache, conv_mask)
    if conv_mask is not None:
        hidden_states = hidden_states * conv_mask[:, :, None].to(hidden_states.dtype)
    batch_tokens = hidden_states.shape[:-1]
    width = self.conv_kernel_size
    queries, keys = self.q_proj(hidden_states), self.k_proj(hidden_states)

    mixed = torch.cat([queries, keys], dim=-1).transpose(1, 2)  # (batch, channels, tokens)
    history = cache.get_conv_state(self.layer_idx, state_idx=0) if cache is not None else None
    if history is None:
        mixed = torch.nn.functional.pad(mixed, (width, 0))
    else:
        mixed = torch.cat([history, mixed], dim=-1)
    if cache is not None:
        cache.update_conv_state(mixed[..., mixed.shape[-1] - width :], self.layer_idx)
    mixed = self.conv_qk_grouped(self.conv_qk_depthwise(mixed)).transpose(1, 2)

    groups = self.num_key_value_groups
    per_head = queries.unflatten(-1, (-1, self.head_dim))
    per_kv_head = keys.unflatten(-1, (-1, self.head_dim))
    shared = (per_head + per_kv_head.repeat_interleave(groups, dim=-2)) * 0.5
    key_residual = shared.unflatten(-2, (-1, groups)).mean(dim=-2)
    width_q = per_head.shape[-2] * per_head.shape[-1]
    query = mixed[..., :width_q].unflatten(-1, (-1, self.head_dim)) + shared
    key = mixed[..., width_q:].unflatten(-1, (-1, self.head_dim)) + key_residual

    delayed = self.v_proj_delayed(hidden_states)
    previous = cache.get_recurrent_state(self.layer_idx, state_idx=0) if cache is not None else None
    if previous is None:
        previous = self.v_proj_delayed(
            hidden_states.new_zeros(batch_tokens[0], 1, self.hidden_size)
        )
    else:
        previous = previous.unsqueeze(1)
    # previous token's delayed projection for every token: shift by one, then drop the
    # last (slicing the concatenation keeps torch.export away from a size-2 guard)
    shifted = torch.cat([previous, delayed], dim=1)[:, :-1]
    if cache is not None:
        cache.update_recurrent_state(delayed[:, -1, :], self.layer_idx)
    value = torch.cat([self.v_proj_current(hidden_states), shifted], dim=-1)
    return query, key, value.unflatten(-1, (-1, self.head_dim))


def _install_cca_projection(patcher: Any, model: Any) -> None:
    """Compute ZAYA's CCA projection without slicing the delayed values before the
    concatenation.

    Fixes: torch.export of zaya's decode step: ``Not all values of seq_length ... satisfy
    the generated guard ((-1) + L['input_ids'].size()[1]) != 1`` (with the length
    relaxed to Dim.AUTO, the program fed two new tokens fails with ``Guard failed: -1 +
    input_ids.size()[1] != 1``). ZayaCCAProjection.forward
    (transformers/models/zaya/modeling_zaya.py:250) concatenates the previous token's
    delayed value with ``delayed_v_state[:, :-1]``; torch.export's contiguity check of
    that slice records ``tokens - 1 != 1``, so a step of 2 tokens is refused (and the
    declared ``seq_length`` relaxes to Dim.AUTO). Concatenating first and slicing the
    result computes the same values without the guard. Training keeps the original.

    Remove when: torch.export records no size guard for the concatenation of a slice,
    or transformers shifts ZAYA's delayed values without one.
    """
    patcher.replace_in(MODULE, "ZayaCCAProjection", "forward", cca_projection)


CCA_PROJECTION = Patch(
    name="zaya_cca_projection",
    fixes="satisfy the generated guard ((-1) + L['input_ids'].size()[1]) != 1",
    remove_when="torch.export records no size guard for the concatenation of a slice, or "
    "transformers shifts ZAYA's delayed values without one",
    install=_install_cca_projection,
    model_types=("zaya",),
)

register(Family(name="zaya", model_types=("zaya",), patches=(CCA_PROJECTION,)))
