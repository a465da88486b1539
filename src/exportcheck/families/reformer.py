"""Reformer: axial position encodings gathered in a loop over the batch."""

from __future__ import annotations

import sys
from typing import Any

import torch

from ..patches import Patch
from ..patches.core import passthrough
from . import Family, register

MODULE = "transformers.models.reformer.modeling_reformer"


def reformer_axial_forward(self, position_ids):
    """AxialPositionEmbeddings.forward (eval) as a lookup in the full axial table."""
    if self.training:
        return passthrough(reformer_axial_forward.original, self, position_ids)
    mod = sys.modules[MODULE]
    axial_h, axial_w = self.axial_pos_shape
    if axial_h * axial_w < position_ids.shape[1]:
        raise ValueError(
            f"Make sure that config.axial_pos_shape factors: {self.axial_pos_shape} multiply "
            f"at least to the sequence length {position_ids.shape[1]}."
        )
    largest = position_ids.max().item()
    mod.torch_compilable_check(largest >= 0, "Axial position id underflow.")
    mod.torch_compilable_check(
        largest < axial_h * axial_w,
        "Position id exceeds axial_pos_shape[0] * axial_pos_shape[1].",
    )
    # row h * axial_w + w is the concatenation of the axial weights at (h, w)
    table = torch.cat(
        [w.expand((axial_h, axial_w, w.shape[-1])) for w in self.weights], dim=-1
    ).reshape(axial_h * axial_w, -1)
    return torch.nn.functional.embedding(position_ids, table)


def _install_reformer_axial_gather(patcher: Any, model: Any) -> None:
    """Look Reformer's axial position encodings up in one table instead of a loop over the batch.

    Fixes: torch.export of reformer: ``Constraints violated (batch, seq_length)! ... specialized
    it to be a constant (2)``: AxialPositionEmbeddings.forward
    (transformers/models/reformer/modeling_reformer.py:285-291), in eval mode, builds the
    encodings with ``for i in range(batch_size)`` of ``index_select``. The replacement
    concatenates the expanded axial weights into the (axial_h * axial_w, hidden) table and
    takes the rows at ``position_ids`` with ``F.embedding``: row p is what the original selects
    for position p, so the values are identical. The same range checks are kept; training mode
    runs the original.

    Remove when: transformers gathers the axial encodings without a loop over the batch.
    """
    patcher.replace_in(MODULE, "AxialPositionEmbeddings", "forward", reformer_axial_forward)


REFORMER_AXIAL_GATHER = Patch(
    name="reformer_axial_gather",
    fixes="Constraints violated (batch)! ... specialized it to be a constant (2)",
    remove_when="transformers gathers the axial encodings without a loop over the batch",
    install=_install_reformer_axial_gather,
    model_types=("reformer",),
)


register(
    Family(
        name="reformer",
        model_types=("reformer",),
        config_fixes={
            "reformer": (
                {
                    "axial_pos_embds_dim": [32, 32],
                    "lsh_attn_chunk_length": 128,
                    "local_attn_chunk_length": 128,
                },
                "axial position embedding widths must add up to hidden_size; attention "
                "chunks of 128, longer than any checked length (<= 64), run the same "
                "unchunked attention as chunks of 64 without the guard 'length % 64 != 0' "
                "that is false at 64",
            )
        },
        patches=(REFORMER_AXIAL_GATHER,),
    )
)
