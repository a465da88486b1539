"""MiniMax: lightning (linear) attention next to full attention, in a cache of its own.

A decode step with several new tokens loops over them in Python; the patch computes the
recurrence in closed form. :func:`make_minimax_cache` builds its cache from tensors.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import torch

from ..caches.builders import _check_layer_types, _check_pairs, _shape, fill_layer
from ..patches import Patch
from ..patches.core import passthrough
from . import Family, register

MODULE = "transformers.models.minimax.modeling_minimax"


def _minimax_lightning_forward(
    self, hidden_states, position_embeddings, attention_mask, cache=None, **kwargs
):
    """MiniMaxLightningAttention.forward with the decode branch (a cache with a linear state)
    computed in closed form instead of ``for i in range(seq_len)``."""
    mm = sys.modules[MODULE]

    if cache is None or cache.get_linear_cache(self.layer_idx) is None:
        return passthrough(
            _minimax_lightning_forward.original,
            self,
            hidden_states,
            position_embeddings,
            attention_mask,
            cache=cache,
            **kwargs,
        )
    batch_size, seq_len, _hidden_size = hidden_states.shape
    qkv_states = self.act_fn(self.qkv_proj(hidden_states))
    qkv_states = mm.apply_mask_to_padding_states(qkv_states, attention_mask)
    qkv_states = qkv_states.reshape(
        batch_size, seq_len, self.num_attention_heads, 3 * self.head_dim
    )
    query_states, key_states, value_states = torch.split(qkv_states, self.head_dim, dim=3)
    query_states = query_states.transpose(1, 2)  # [B, H, S, D]
    key_states = key_states.transpose(1, 2)
    value_states = value_states.transpose(1, 2)
    state = cache.get_linear_cache(self.layer_idx)  # [B, H, D, D]

    # state_i = r^(i+1) state_0 + sum_{j<=i} r^(i-j) k_j^T v_j, r = exp(-slope), out_i = q_i state_i
    slope = self.slope_rate  # [H, 1, 1]
    pos = torch.arange(seq_len, device=hidden_states.device).to(slope.dtype)
    diff = pos[:, None] - pos[None, :]  # [S, S]
    decay = torch.where(
        diff >= 0, torch.exp(-slope * diff.clamp(min=0)), torch.zeros_like(slope * diff)
    )
    scores = torch.matmul(query_states, key_states.transpose(-1, -2))  # [B, H, S, S]
    intra = torch.matmul(scores * decay, value_states)
    inter = torch.matmul(query_states * torch.exp(-slope * (pos + 1)[:, None]), state)
    attn_output = intra + inter  # [B, H, S, D]
    key_decay = torch.exp(-slope * (seq_len - 1 - pos)[:, None])  # [H, S, 1]
    attn_weights_inter = state * torch.exp(-slope * seq_len) + torch.matmul(
        (key_states * key_decay).transpose(-1, -2), value_states
    )

    attn_output = attn_output.transpose(1, 2)
    attn_output = attn_output.reshape(batch_size, seq_len, self.num_attention_heads * self.head_dim)
    attn_output = self.norm(attn_output)
    attn_output = torch.nn.functional.sigmoid(self.output_gate(hidden_states)) * attn_output
    attn_output = self.out_proj(attn_output)
    cache.set_linear_cache(self.layer_idx, attn_weights_inter)
    return attn_output, attn_weights_inter


def make_minimax_cache(states: Sequence[Any], layer_types: Sequence[str]) -> Any:
    """Build the ``MiniMaxCache`` of a MiniMax model (attention and lightning-attention layers).

    :param states: one entry per layer: ``(key, value)`` for a ``full_attention``
        layer, the lightning-attention state ``(batch, heads, head_dim, head_dim)``
        for a ``linear_attention`` layer
    :param layer_types: the config's ``layer_types``

    The cache is laid out as the model lays it out after a forward pass: one
    ``DynamicLayer`` per layer up to the last attention layer (left empty at
    linear-attention layers) and one ``linear_cache`` entry per layer up to the last
    linear-attention layer (an empty list at attention layers).

    >>> import torch
    >>> from exportcheck import make_minimax_cache, string_type
    >>> kv = (torch.rand(2, 1, 3, 16), torch.rand(2, 1, 3, 16))
    >>> cache = make_minimax_cache([kv, torch.rand(2, 2, 16, 16)], ["full_attention", "linear_attention"])
    >>> string_type(cache, with_shape=True)
    'MiniMaxCache(key_cache=#1[T1s2x1x3x16], value_cache=#1[T1s2x1x3x16], linear_cache=#2[#0[],T1s2x2x16x16])'
    """
    fname = "make_minimax_cache"
    if isinstance(states, torch.Tensor) or not isinstance(states, Sequence):
        raise TypeError(
            f"{fname}: expected a list with one entry per layer, got {type(states).__name__}."
        )
    # sliding_window=1 lets sliding layers through the generic check: refused just below.
    layer_types = _check_layer_types(fname, layer_types, len(states), 1)
    for i, kind in enumerate(layer_types):
        if kind == "sliding_attention":
            raise ValueError(
                f"{fname}: layer {i} has type {kind!r}; expected full_attention or "
                "linear_attention."
            )
        if kind == "linear_attention" and not (
            isinstance(states[i], torch.Tensor) and states[i].dim() == 4
        ):
            got = states[i]
            raise ValueError(
                f"{fname}: linear_attention layer {i} needs its state, a tensor "
                "(batch, heads, head_dim, head_dim), got "
                + (
                    f"shape {_shape(got)}."
                    if isinstance(got, torch.Tensor)
                    else f"{type(got).__name__}."
                )
            )
    attention = [i for i, k in enumerate(layer_types) if k == "full_attention"]
    checked = dict(zip(attention, _check_pairs(fname, [states[i] for i in attention]), strict=True))
    try:
        from transformers.models.minimax.modeling_minimax import MiniMaxCache
    except ImportError as e:
        raise NotImplementedError(f"{fname}: this transformers has no MiniMax model ({e}).") from e
    from transformers.cache_utils import DynamicLayer

    cache = MiniMaxCache()
    layers = []
    for i in range(attention[-1] + 1 if attention else 0):
        layers.append(fill_layer(DynamicLayer(), *checked[i]) if i in checked else DynamicLayer())
    cache.layers = layers
    cache.layer_class_to_replicate = None
    linear = [i for i, k in enumerate(layer_types) if k == "linear_attention"]
    cache.linear_cache = [
        states[i] if i in linear else [] for i in range(linear[-1] + 1 if linear else 0)
    ]
    return cache


def _install_minimax_lightning_decode(patcher: Any, model: Any) -> None:
    """Compute MiniMax's lightning-attention decode step without a Python loop over tokens.

    Fixes: torch.export of MiniMax with a cache and a dynamic number of new tokens fails with
    ``Constraints violated ... You marked seq_length as dynamic but your code specialized it to
    be a constant (3)``: ``for i in range(seq_len)`` in MiniMaxLightningAttention.forward
    (transformers/models/minimax/modeling_minimax.py:248) unrolls the recurrence over the new
    tokens. The replacement computes the same recurrence in closed form (decay matrix
    exp(-slope * (i - j)) for j <= i), so the trace stays symbolic.

    Remove when: transformers computes the cached branch without iterating over seq_len.
    """
    patcher.replace_in(MODULE, "MiniMaxLightningAttention", "forward", _minimax_lightning_forward)


MINIMAX_LIGHTNING_DECODE = Patch(
    name="minimax_lightning_decode",
    fixes="Constraints violated ... You marked seq_length as dynamic but your code specialized "
    "it to be a constant (3)",
    remove_when="transformers computes the cached branch without iterating over seq_len",
    install=_install_minimax_lightning_decode,
    model_types=("minimax",),
)


register(
    Family(
        name="minimax",
        model_types=("minimax",),
        patches=(MINIMAX_LIGHTNING_DECODE,),
    )
)
