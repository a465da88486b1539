"""LongCat-Flash: routed experts next to identity ("zero") experts, in a data-dependent loop."""

from __future__ import annotations

from typing import Any

import torch

from ..patches import Patch
from ..patches.core import passthrough
from . import Family, register


def _longcat_experts_forward(self, hidden_states, top_k_index, top_k_weights):
    if top_k_index.numel() == 0 or self.gate_up_proj is None:
        return passthrough(
            _longcat_experts_forward.original, self, hidden_states, top_k_index, top_k_weights
        )
    n = self.num_routed_experts
    routed = top_k_index < n  # else identity (zero) expert
    idx = top_k_index.clamp(max=n - 1)
    gate_up = self.gate_up_proj[idx]  # (T, K, 2I, H)
    down_w = self.down_proj[idx]  # (T, K, H, I)
    gate, up = torch.einsum("th,tkoh->tko", hidden_states, gate_up).chunk(2, dim=-1)
    expert_out = torch.einsum("tki,tkhi->tkh", self.act_fn(gate) * up, down_w)
    identity = hidden_states[:, None, :].expand_as(expert_out)
    out = torch.where(routed[..., None], expert_out, identity) * top_k_weights[..., None]
    return out.sum(dim=1).to(hidden_states.dtype)


def _install_longcat_experts_gather(patcher: Any, model: Any) -> None:
    """Compute LongcatFlashExperts (routed + identity "zero" experts) without a data-dependent loop.

    Fixes: torch.export of longcat_flash fails with ``Could not guard on data-dependent expression
    Eq(u0, 0)``: LongcatFlashExperts.forward
    (transformers/models/longcat_flash/modeling_longcat_flash.py:187-192) loops over
    ``nonzero()`` with ``.item()`` and ``if token_idx.numel() == 0: continue``. Same result:
    for each chosen expert, GLU with its weights (or the identity for a zero expert) times its
    routing weight, summed.

    Remove when: LongcatFlashExperts supports transformers' experts implementations.
    """
    patcher.replace_in(
        "transformers.models.longcat_flash.modeling_longcat_flash",
        "LongcatFlashExperts",
        "forward",
        _longcat_experts_forward,
    )


LONGCAT_EXPERTS_GATHER = Patch(
    name="longcat_experts_gather",
    fixes="Could not guard on data-dependent expression Eq(u0, 0)",
    remove_when="LongcatFlashExperts supports transformers' experts implementations",
    install=_install_longcat_experts_gather,
    model_types=("longcat_flash",),
)


register(
    Family(
        name="longcat_flash",
        model_types=("longcat_flash",),
        config_fixes={
            "longcat_flash": (
                {"qk_head_dim": 16, "head_dim": 8},
                "qk_head_dim and head_dim are fields, not recomputed: they must be "
                "nope+rope and rope",
            )
        },
        patches=(LONGCAT_EXPERTS_GATHER,),
    )
)
