"""DBRX: experts computed in a loop over the experts that were hit."""

from __future__ import annotations

from typing import Any

import torch

from ..patches import Patch
from . import Family, register


def _dbrx_experts_forward(self, hidden_states, top_k_index, top_k_weights):
    batch_size = hidden_states.shape[0]
    x = hidden_states.reshape(-1, self.hidden_size)  # (T, H)
    shape = (self.num_experts, self.ffn_hidden_size, self.hidden_size)
    w1 = self.mlp.w1.view(shape)[top_k_index]  # (T, K, F, H)
    v1 = self.mlp.v1.view(shape)[top_k_index]
    w2 = self.mlp.w2.view(shape)[top_k_index]
    gate = torch.einsum("th,tkfh->tkf", x, w1)  # x @ w1.T
    up = torch.einsum("th,tkfh->tkf", x, v1)
    inter = self.mlp.activation_fn(gate) * up
    down = torch.einsum("tkf,tkfh->tkh", inter, w2)  # inter @ w2
    out = (down * top_k_weights[..., None]).sum(dim=1)
    return out.view(batch_size, -1, self.hidden_size)


def _install_dbrx_experts_gather(patcher: Any, model: Any) -> None:
    """Compute DbrxExperts with gathered expert weights instead of a loop over the hit experts.

    Fixes: torch.export of dbrx fails with ``Could not guard on data-dependent expression
    Eq(u0, 0)``: DbrxExperts.forward (transformers/models/dbrx/modeling_dbrx.py:293-296) loops
    ``for expert_idx in expert_hit`` over ``nonzero()`` and ``torch.where`` results; DbrxExperts
    has no ``@use_experts_implementation``, so the config's experts implementation cannot switch it.
    Same sum over the chosen experts of weight * GLU(x), with the weights indexed by top_k_index.

    Remove when: DbrxExperts supports transformers' experts implementations (batched_mm).
    """
    patcher.replace_in(
        "transformers.models.dbrx.modeling_dbrx", "DbrxExperts", "forward", _dbrx_experts_forward
    )


DBRX_EXPERTS_GATHER = Patch(
    name="dbrx_experts_gather",
    fixes="Could not guard on data-dependent expression Eq(u0, 0)",
    remove_when="DbrxExperts supports transformers' experts implementations (batched_mm)",
    install=_install_dbrx_experts_gather,
    model_types=("dbrx",),
)


register(
    Family(
        name="dbrx",
        model_types=("dbrx",),
        config_fixes={
            "dbrx": (
                {"attn_config.rope_theta": 10000.0, "attn_config.clip_qkv": 8},
                "attention reads attn_config.rope_theta, absent from its config, and clamps "
                "with clip_qkv=None, which torch.clamp rejects",
            )
        },
        patches=(DBRX_EXPERTS_GATHER,),
    )
)
