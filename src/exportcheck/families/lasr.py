"""LASR: a conformer CTC encoder on log-mel frames, subsampled by two strided convolutions."""

from __future__ import annotations

from typing import Any

from ..patches import Patch
from . import Family, register

MODULE = "transformers.models.lasr.modeling_lasr"


def subsampling_forward(self: Any, input_features: Any) -> Any:
    """LasrEncoderSubsampling.forward with the frames made contiguous before the last
    linear layer."""
    hidden_states = self.act_fn(self.dense_0(input_features)).transpose(1, 2)
    hidden_states = self.act_fn(self.conv_0(hidden_states))
    hidden_states = self.act_fn(self.conv_1(hidden_states))
    return self.dense_1(hidden_states.transpose(1, 2).contiguous())


def _install_contiguous_subsampling(patcher: Any, model: Any) -> None:
    """Copy the subsampled frames to a contiguous tensor before ``dense_1``.

    Fixes: the ExportedProgram of lasr_ctc (exported at batch 2) run on a batch of one:
    ``Guard failed: input_features.size()[0] * (...) != (...)``.
    LasrEncoderSubsampling.forward (transformers/models/lasr/modeling_lasr.py:63) applies
    ``dense_1`` to the convolutions' output transposed back to (batch, frames, channels),
    a strided view. torch's matmul decomposition folds batch and frames with a reshape,
    and whether that reshape of a transposed tensor can be a view depends on
    batch * frames != frames: torch.export keeps that guard (batch != 1) without
    reporting it against the declared range. ``contiguous()`` first makes the fold a
    plain view for every batch: the same values, one copy of a small tensor.

    Remove when: torch.export stops guarding the fold of a transposed input, or
    transformers makes the frames contiguous there.
    """
    patcher.replace_in(MODULE, "LasrEncoderSubsampling", "forward", subsampling_forward)


CONTIGUOUS_SUBSAMPLING = Patch(
    name="lasr_contiguous_subsampling",
    fixes="Guard failed: input_features.size()[0] * ",
    remove_when="torch.export stops guarding the reshape of a transposed input in matmul, "
    "or transformers makes LASR's subsampled frames contiguous before dense_1",
    install=_install_contiguous_subsampling,
    model_types=("lasr_ctc",),
)

register(Family(name="lasr", model_types=("lasr_ctc",), patches=(CONTIGUOUS_SUBSAMPLING,)))
