"""WavLM: gated relative position bias, attention through torch's multi-head function."""

from __future__ import annotations

from typing import Any

from ..patches import Patch
from ..patches.core import passthrough
from . import Family, register

MODULE = "transformers.models.wavlm.modeling_wavlm"


def multi_head_self_attention(
    self: Any, hidden_states: Any, attention_mask: Any, gated_position_bias: Any
) -> tuple[Any, Any]:
    """Self-attention of (batch, frames, width) hidden states with an additive
    (batch * heads, frames, frames) bias, heads kept as their own axis throughout."""
    import torch

    if self.training:
        return passthrough(
            multi_head_self_attention.original,
            self,
            hidden_states,
            attention_mask,
            gated_position_bias,
        )

    def heads(projection: Any) -> Any:
        return projection(hidden_states).unflatten(-1, (self.num_heads, -1)).transpose(1, 2)

    query, key, value = heads(self.q_proj), heads(self.k_proj), heads(self.v_proj)
    bias = gated_position_bias.unflatten(0, (hidden_states.shape[0], self.num_heads))
    scores = torch.matmul(query * self.scaling, key.transpose(-1, -2)) + bias
    if attention_mask is not None:
        padding = attention_mask.ne(1)[:, None, None, :]
        scores = scores.masked_fill(padding, float("-inf"))
    weights = scores.softmax(-1)
    output = self.out_proj(torch.matmul(weights, value).transpose(1, 2).flatten(2))
    # the original returns the weights averaged over the heads, repeated for each head
    averaged = weights.mean(1, keepdim=True).expand_as(weights)
    return output, averaged


def _install_plain_attention(patcher: Any, model: Any) -> None:
    """Compute WavLM's attention with matmuls on (batch, heads, frames, ...) tensors.

    Fixes: the ExportedProgram of wavlm (exported at batch 2, batch declared from 1) run
    on a batch of one: ``Guard failed: (...) % (input_values.size()[0] * (...)) != 0``.
    WavLMAttention.torch_multi_head_self_attention
    (transformers/models/wavlm/modeling_wavlm.py:189) hands the hidden states, the three
    projection weights and the gated position bias to
    ``torch.nn.functional.multi_head_attention_forward``, which works on (frames, batch,
    width) tensors and folds the heads into the batch with views of transposed tensors;
    traced at batch 2, torch.export keeps a guard that holds only when the batch is not 1
    (frames % (batch * frames) != 0) without reporting it against the declared range.
    The same attention (scaled query times key, plus the bias, padded keys at -inf,
    softmax, times value, output projection; weights averaged over the heads as the
    original returns them) written with heads as an axis of their own has no such view.
    Training (dropout) keeps the original.

    Remove when: torch.export records no batch guard for multi_head_attention_forward,
    or transformers computes WavLM's attention without it.
    """
    patcher.replace_in(
        MODULE, "WavLMAttention", "torch_multi_head_self_attention", multi_head_self_attention
    )


PLAIN_ATTENTION = Patch(
    name="wavlm_plain_attention",
    fixes="Guard failed: ... % (input_values.size()[0] * ",
    remove_when="torch.export records no batch guard for multi_head_attention_forward, or "
    "transformers computes WavLM's attention without it",
    install=_install_plain_attention,
    model_types=("wavlm",),
)

register(Family(name="wavlm", model_types=("wavlm",), patches=(PLAIN_ATTENTION,)))
