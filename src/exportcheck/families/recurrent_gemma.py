"""RecurrentGemma: the RG-LRU recurrence as a Python loop over tokens."""

from __future__ import annotations

import weakref
from typing import Any

import torch

from ..patches import Patch
from ..patches.core import passthrough
from . import Family, register

MODULE = "transformers.models.recurrent_gemma.modeling_recurrent_gemma"


def rglru_scan(
    self, hidden_states, recurrent_gate, reset, recurrent_states, acc_dtype=torch.float32
):
    """RecurrentGemmaRglru._rnn_scan as one weighted sum over the tokens.

    h_t = a_t h_{t-1} + x_t unrolls to h_t = sum_{i<=t} exp(S_t - S_i) x_i + exp(S_t) h_{-1}
    with S the cumulative sum of log a. A factor a_j == 0 (a reset, or an underflow)
    cuts every product spanning it: zeros count as log 1 and are tracked by their running
    count Z, and a term is kept only where Z_t == Z_i.
    """
    recurrent_gate = recurrent_gate * ~reset
    x = hidden_states.type(acc_dtype)
    a = recurrent_gate.type(acc_dtype)  # (batch, seq, width), in [0, 1]
    is_zero = a == 0
    log_a = torch.log(torch.where(is_zero, torch.ones_like(a), a))
    cum_log = torch.cumsum(log_a, dim=1)
    zeros_seen = torch.cumsum(is_zero.to(torch.int64), dim=1)
    pos = torch.arange(x.shape[1], device=x.device)
    causal = (pos[:, None] >= pos[None, :])[None, :, :, None]  # (1, t, i, 1)
    exponent = cum_log[:, :, None, :] - cum_log[:, None, :, :]  # (batch, t, i, width)
    keep = causal & (zeros_seen[:, :, None, :] == zeros_seen[:, None, :, :])
    weights = torch.where(keep, torch.exp(torch.where(keep, exponent, 0.0)), 0.0)
    states = (weights * x[:, None, :, :]).sum(dim=2)
    if recurrent_states is not None:
        decay = torch.where(zeros_seen == 0, torch.exp(cum_log), 0.0)
        states = states + decay * recurrent_states[:, None].to(device=x.device, dtype=acc_dtype)
    return states.type(hidden_states.dtype), states[:, -1]


def _install_recurrent_gemma_scan(patcher: Any, model: Any) -> None:
    """Run RecurrentGemma's RG-LRU recurrence in closed form instead of a loop over tokens.

    Fixes: torch.export of recurrent_gemma with a dynamic number of tokens: ``Constraints
    violated (seq_length)! ... specialized it to be a constant (3)``:
    RecurrentGemmaRglru._rnn_scan
    (transformers/models/recurrent_gemma/modeling_recurrent_gemma.py:384) runs
    ``for t in range(hidden_states.shape[1])``, unrolling h_t = a_t h_{t-1} + x_t over the
    traced length. The replacement computes h_t = sum_{i<=t} exp(S_t - S_i) x_i
    (+ exp(S_t) h_{-1}), S = cumsum(log a), without the terms that span a factor a_j == 0
    (a reset): the same numbers within float rounding (3.8e-7 on the logits), for one token
    as for several. Memory grows as batch x seq^2 x width: fine for decode steps and short
    prompts, not for long prefills.

    Remove when: transformers computes the RG-LRU scan without a Python loop over tokens.
    """
    patcher.replace_in(MODULE, "RecurrentGemmaRglru", "_rnn_scan", rglru_scan)


RECURRENT_GEMMA_SCAN = Patch(
    name="recurrent_gemma_scan",
    fixes="Constraints violated (seq_length)! ... specialized it to be a constant (3)",
    remove_when="transformers computes the RG-LRU scan without a Python loop over tokens",
    install=_install_recurrent_gemma_scan,
    model_types=("recurrent_gemma",),
)


def recurrent_block_forward(
    self, input_states, position_ids, attention_mask, use_cache=True, cache=None, **kwargs
):
    """RecurrentGemmaRecurrentBlock.forward with its state in the cache's layer.

    The convolution runs over the saved last ``conv1d_width - 1`` inputs followed by the
    new ones (zeros before the first call), for one new token as for several; the RG-LRU
    starts from the saved recurrent state. Both states are written back to the
    ``LinearAttentionLayer`` that ``DynamicCache(config=...)`` builds for the layer.
    Without such a cache (``use_cache=False``, or a block this patch could not number), the
    original runs.
    """
    index = _BLOCK_INDEX.get(self)
    layers = getattr(cache, "layers", None) if use_cache else None
    layer = layers[index] if layers is not None and index is not None else None
    if layer is None or not hasattr(layer, "conv_states"):
        return passthrough(
            recurrent_block_forward.original,
            self,
            input_states,
            position_ids,
            attention_mask,
            use_cache=use_cache,
            cache=cache,
            **kwargs,
        )
    batch = input_states.shape[0]
    y_branch = self.act_fn(self.linear_y(input_states))
    x_branch = self.linear_x(input_states).transpose(1, 2)  # (batch, lru_width, tokens)
    kept = self.conv1d_width - 1
    if layer.is_conv_states_initialized.get(0, False):
        previous, recurrent = layer.conv_states[0], layer.recurrent_states[0]
    else:
        previous = x_branch.new_zeros((batch, x_branch.shape[1], kept))
        recurrent = torch.zeros(
            (batch, self.lru_width), dtype=torch.float32, device=x_branch.device
        )
    window = torch.cat([previous, x_branch], -1)
    conv = self.conv_1d
    x_branch = torch.nn.functional.conv1d(window, conv.weight, conv.bias, groups=conv.groups)
    lru = self.rg_lru
    saved = lru.recurrent_states
    lru.recurrent_states = recurrent
    try:
        x_branch = lru(x_branch.transpose(1, 2), position_ids)
        recurrent = lru.recurrent_states
    finally:
        lru.recurrent_states = saved
    layer.conv_states[0] = window[:, :, -kept:]
    layer.conv_kernel_size[0] = kept
    layer.is_conv_states_initialized[0] = True
    layer.recurrent_states[0] = recurrent
    layer.is_recurrent_states_initialized[0] = True
    layer.has_previous_state[0] = True
    layer.device, layer.dtype = window.device, window.dtype
    return self.linear_out(x_branch * y_branch), None


def causal_lm_forward(
    self,
    input_ids=None,
    position_ids=None,
    attention_mask=None,
    inputs_embeds=None,
    labels=None,
    use_cache=None,
    logits_to_keep=0,
    cache=None,
    **kwargs,
):
    """RecurrentGemmaForCausalLM.forward returning its cache, one built when none is given
    and ``use_cache`` is set (what a prefill gets)."""
    from transformers import DynamicCache
    from transformers.modeling_outputs import CausalLMOutputWithPast

    if cache is None:
        cache = kwargs.pop("past_key_values", None)
    if cache is None and use_cache:
        cache = DynamicCache(config=self.config)
    given = {
        "input_ids": input_ids,
        "position_ids": position_ids,
        "attention_mask": attention_mask,
        "inputs_embeds": inputs_embeds,
        "labels": labels,
        "use_cache": use_cache,
        "logits_to_keep": logits_to_keep,
        **kwargs,
    }
    if cache is None:
        return passthrough(causal_lm_forward.original, self, **given)
    out = causal_lm_forward.original(self, cache=cache, **given)
    return CausalLMOutputWithPast(
        loss=out.loss,
        logits=out.logits,
        cache=cache,
        hidden_states=out.hidden_states,
        attentions=out.attentions,
    )


#: each recurrent block of a patched model -> its layer index (the block does not keep it)
_BLOCK_INDEX: weakref.WeakKeyDictionary[Any, int] = weakref.WeakKeyDictionary()


def _install_recurrent_gemma_state(patcher: Any, model: Any) -> None:
    """Keep RecurrentGemma's recurrent state in its cache, and return the cache.

    Fixes: a decode step of recurrent_gemma with its state. RecurrentGemmaForCausalLM
    returns no cache (CausalLMOutput), and its recurrent blocks keep their state in module
    attributes (RecurrentGemmaRecurrentBlock.conv1d_state, RecurrentGemmaRglru.
    recurrent_states, transformers/models/recurrent_gemma/modeling_recurrent_gemma.py:
    432-452), which are neither inputs nor outputs of an exported program; given a cache
    from another call, eager computes with whatever state its modules hold from the last
    call (another batch, even). Several new tokens take the prefill branch (:444), which
    drops the saved convolution state. The replacements keep both states in the
    ``LinearAttentionLayer`` that ``DynamicCache(config=...)`` already builds for each
    recurrent layer, run the convolution over the saved inputs followed by the new ones
    (the prefill branch's zero padding when nothing is saved), and return the cache in a
    ``CausalLMOutputWithPast``; calls without a cache run the original. A decode step then
    equals a full forward over prompt + new tokens, and generate's tokens are unchanged.

    Since eager given a cache is wrong without it, :func:`exportcheck.validate` computes
    its eager reference with it (``corrects_eager``).

    Remove when: RecurrentGemmaForCausalLM keeps its recurrent state in the cache it returns.
    """
    inner = getattr(model, "model", None)
    for i, layer in enumerate(getattr(inner, "layers", ())):
        block = getattr(layer, "temporal_block", None)
        if block is not None and hasattr(block, "rg_lru"):
            _BLOCK_INDEX[block] = i
    patcher.replace_in(MODULE, "RecurrentGemmaRecurrentBlock", "forward", recurrent_block_forward)
    patcher.replace_in(MODULE, "RecurrentGemmaForCausalLM", "forward", causal_lm_forward)


RECURRENT_GEMMA_STATE = Patch(
    name="recurrent_gemma_state",
    fixes="RecurrentGemmaForCausalLM returns no cache; its recurrent state lives in module "
    "attributes, not in the cache a decode step is given",
    remove_when="RecurrentGemmaForCausalLM keeps its recurrent state in the cache it returns",
    install=_install_recurrent_gemma_state,
    model_types=("recurrent_gemma",),
    corrects_eager=True,
)


register(
    Family(
        name="recurrent_gemma",
        model_types=("recurrent_gemma",),
        patches=(RECURRENT_GEMMA_STATE, RECURRENT_GEMMA_SCAN),
    )
)
