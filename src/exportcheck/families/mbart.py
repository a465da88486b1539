"""mBART: decoder inputs that start with the last non-padding token of each row."""

from __future__ import annotations

from typing import Any

from ..patches import Patch
from . import Family, register

MODULE = "transformers.models.mbart.modeling_mbart"


def shift_tokens_right(input_ids: Any, pad_token_id: int) -> Any:
    """mbart's shift_tokens_right with the gathered start tokens squeezed on their last axis."""
    prev_output_tokens = input_ids.clone()
    if pad_token_id is None:
        raise ValueError("self.model.config.pad_token_id has to be defined.")
    prev_output_tokens.masked_fill_(prev_output_tokens == -100, pad_token_id)
    index_of_eos = (prev_output_tokens.ne(pad_token_id).sum(dim=1) - 1).unsqueeze(-1)
    decoder_start_tokens = prev_output_tokens.gather(1, index_of_eos).squeeze(-1)
    prev_output_tokens[:, 1:] = prev_output_tokens[:, :-1].clone()
    prev_output_tokens[:, 0] = decoder_start_tokens
    return prev_output_tokens


def _install_mbart_shift_squeeze(patcher: Any, model: Any) -> None:
    """Squeeze mBART's decoder start tokens on their last axis only.

    Fixes: onnxruntime on the ONNX model of mbart's masked LM (MBartForConditionalGeneration
    called without decoder inputs), on a batch of one row: ``Non-zero status code returned
    while running Unsqueeze node ... axis 1 is not in valid range [-1,0]``.
    shift_tokens_right (transformers/models/mbart/modeling_mbart.py:73) gathers one start
    token per row, shape (batch, 1), and calls ``.squeeze()`` with no axis. torch.export
    records ``aten.squeeze.default`` with a (batch,) result, the batch being symbolic; the
    ONNX translation is a ``Squeeze`` without axes, which at run time also removes the
    batch axis when the batch is 1, and the ``Unsqueeze(axis=1)`` that writes the tokens
    into column 0 then gets a scalar. (PyTorch broadcasts the scalar, so eager and the
    ExportedProgram pass.) ``squeeze(-1)`` removes the axis that is always 1: the same
    tokens for every batch; for a batch of 1 a (1,) tensor instead of a scalar, written to
    the same place. bart is not affected: its shift starts every row with
    decoder_start_token_id.

    Remove when: transformers squeezes with an axis there, or the ONNX translation of
    ``aten.squeeze.default`` squeezes only the axes the exported program knows are 1.
    """
    patcher.replace_in(MODULE, None, "shift_tokens_right", shift_tokens_right)


MBART_SHIFT_SQUEEZE = Patch(
    name="mbart_shift_squeeze",
    fixes="Unsqueeze node ... axis 1 is not in valid range [-1,0]",
    remove_when="transformers squeezes with an axis in mbart's shift_tokens_right, or the "
    "ONNX translation of aten.squeeze.default squeezes only the axes known to be 1",
    install=_install_mbart_shift_squeeze,
    runtimes=("onnx",),
    model_types=("mbart",),
)


register(Family(name="mbart", model_types=("mbart",), patches=(MBART_SHIFT_SQUEEZE,)))
