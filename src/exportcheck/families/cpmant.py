"""CPM-Ant: a left-padding mask built from a Python list of positions."""

from __future__ import annotations

from typing import Any

import torch

from ..patches import Patch
from . import Family, register


def _prepare_attention_mask(self, input_ids, span, context, length):
    batch = input_ids.size(0)
    seqlen = input_ids.size(1)
    device = input_ids.device
    directional_mask_2d = torch.arange(seqlen, device=device) <= torch.arange(
        seqlen, device=device
    ).view(-1, 1)
    attention_mask = context[:, None, :] | (
        context[:, :, None].logical_not() & directional_mask_2d.view(1, seqlen, seqlen)
    )
    attention_mask = attention_mask & (span[:, None, :] == span[:, :, None])
    # mask for left padding: list(range(n))[::-1] as a tensor is arange(n - 1, -1, -1)
    n = seqlen - self.prompt_length
    reversed_positions = (n - 1) - torch.arange(n, device=device)
    mask_1d = reversed_positions[None, :].repeat(batch, 1) < length[:, None]
    mask_1d = torch.cat(
        (torch.ones(batch, self.prompt_length, device=device).bool(), mask_1d), dim=1
    )
    attention_mask = (
        mask_1d.view(batch, seqlen, 1) & mask_1d.view(batch, 1, seqlen) & attention_mask
    )
    return attention_mask


def _install_cpmant_mask_arange(patcher: Any, model: Any) -> None:
    """Build CPM-Ant's left-padding mask with arange instead of a Python list of positions.

    Fixes: torch.export of cpmant with a dynamic number of tokens: ``Constraints violated
    (seq_length)! ... specialized it to be a constant (3)``: CpmAntModel._prepare_attention_mask
    (transformers/models/cpmant/modeling_cpmant.py:571) builds
    ``torch.tensor(list(range(seqlen - prompt_length))[::-1])``, a Python list as long as the
    sequence. ``(n - 1) - arange(n)`` holds the same integers (int64, as torch.tensor gives).

    Remove when: transformers builds the positions with torch.arange.
    """
    patcher.replace_in(
        "transformers.models.cpmant.modeling_cpmant",
        "CpmAntModel",
        "_prepare_attention_mask",
        _prepare_attention_mask,
    )


CPMANT_MASK_ARANGE = Patch(
    name="cpmant_mask_arange",
    fixes="Constraints violated (seq_length)! ... specialized it to be a constant (3)",
    remove_when="transformers builds the positions with torch.arange",
    install=_install_cpmant_mask_arange,
    model_types=("cpmant",),
)


register(
    Family(
        name="cpmant",
        model_types=("cpmant",),
        config_fixes={
            "cpmant": (
                {"init_std": 0.125},
                "init_std 1.0 is meant for CPM-Live's linear layers, which divide by "
                "sqrt(dim_in); transformers' plain nn.Linear does not, so "
                "1/sqrt(hidden_size=64) restores the scale (otherwise logits ~30, and "
                "float32 eager itself is 1.35e-4 off float64)",
            )
        },
        no_cache={
            "cpmant": "with a cache, CpmAntModel.forward expects every token seen so far, "
            "not only the new ones: given the new tokens only, it fails with 'RuntimeError: "
            "The size of tensor a (62) must match the size of tensor b (35) at "
            "non-singleton dimension 3' (30 cached tokens + 32 prompt positions against "
            "3 new + 32); given every token, it computes only the new positions "
            "(transformers/models/cpmant/modeling_cpmant.py:633-647) and its logits differ "
            "from a full forward without cache by 0.13. No decode step can equal that "
            "forward: without a cache every token attends to every other (context is all "
            "ones, so _prepare_attention_mask, :565-567, never applies the causal mask "
            "it builds; changing the last token moves the first token's logits by 0.18), "
            "while cached keys never saw the later tokens"
        },
        patches=(CPMANT_MASK_ARANGE,),
    )
)
