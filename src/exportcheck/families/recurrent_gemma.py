"""RecurrentGemma: the RG-LRU recurrence as a Python loop over tokens."""

from __future__ import annotations

from typing import Any

import torch

from ..patches import Patch
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


register(
    Family(
        name="recurrent_gemma",
        model_types=("recurrent_gemma",),
        no_cache={
            "recurrent_gemma": "RecurrentGemmaForCausalLM returned none after a prefill: "
            "its output (CausalLMOutput) has no cache field; RecurrentGemmaModel.forward "
            "builds a DynamicCache for its attention layers when given none and drops it "
            "(transformers/models/recurrent_gemma/modeling_recurrent_gemma.py:650-652), "
            "and the recurrent layers keep their state in module attributes "
            "(RecurrentGemmaRecurrentBlock.conv1d_state, RecurrentGemmaRglru."
            "recurrent_states, :432-452), which are neither inputs nor outputs of an "
            "exported program; several new tokens take the prefill branch "
            "(position_ids.shape[1] != 1, :444) that overwrites the convolution state",
        },
        patches=(RECURRENT_GEMMA_SCAN,),
    )
)
