"""XLNet: a relative shift by reshaping a sliced view, and ``1.0 - int_mask``."""

from __future__ import annotations

from typing import Any

import torch

from ..patches import Patch
from . import Family, register

MODULE = "transformers.models.xlnet.modeling_xlnet"


def xlnet_rel_shift_bnij(x, klen=-1):
    """XLNetRelativeAttention.rel_shift_bnij with one gather.

    The original reads the (qlen, rlen) scores as (rlen, qlen), drops the first row, reads
    the rest as (qlen, rlen - 1) and keeps klen columns: element (i, j) is element
    ``qlen + i * (rlen - 1) + j`` of the row-major buffer.
    """
    batch, heads, qlen, rlen = x.shape
    i = torch.arange(qlen, device=x.device)[:, None]
    j = torch.arange(klen, device=x.device)[None, :]
    index = (qlen + i * (rlen - 1) + j).reshape(1, 1, -1).expand(batch, heads, -1)
    return x.reshape(batch, heads, qlen * rlen).gather(2, index).reshape(batch, heads, qlen, klen)


def xlnet_model_forward(self, input_ids=None, attention_mask=None, *args, **kwargs):
    """XLNetModel.forward with an integer attention mask converted to float first."""
    if isinstance(attention_mask, torch.Tensor) and not attention_mask.is_floating_point():
        attention_mask = attention_mask.to(torch.get_default_dtype())
    return xlnet_model_forward.original(self, input_ids, attention_mask, *args, **kwargs)


def _install_xlnet_rel_shift_gather(patcher: Any, model: Any) -> None:
    """Compute XLNet's relative shift with a gather instead of reshaping a sliced view.

    Fixes: torch.export of xlnet guards ``(2 * seq_length - 1) % seq_length != 0``, so the
    ExportedProgram rejects one new token (``Guard failed: (-1 + 2 *
    attention_mask.size()[1]) % attention_mask.size()[1] != 0``):
    XLNetRelativeAttention.rel_shift_bnij (transformers/models/xlnet/modeling_xlnet.py:82-94)
    reshapes the (qlen, rlen) scores to (rlen, qlen), slices off a row and reshapes the slice to
    (qlen, rlen - 1). The replacement reads the same elements with one ``gather``: identical
    values (a copy, no arithmetic).

    Remove when: transformers computes the relative shift without reshaping a sliced view.
    """
    patcher.replace_in(
        MODULE, "XLNetRelativeAttention", "rel_shift_bnij", staticmethod(xlnet_rel_shift_bnij)
    )


XLNET_REL_SHIFT_GATHER = Patch(
    name="xlnet_rel_shift_gather",
    fixes="Constraints violated (seq_length)! ... satisfy the generated guard (((-1) + 2*L['input_ids'].size()[1]) % L['input_ids'].size()[1]) != 0",
    remove_when="transformers computes the relative shift without reshaping a sliced view",
    install=_install_xlnet_rel_shift_gather,
    model_types=("xlnet",),
)


def _install_xlnet_float_mask(patcher: Any, model: Any) -> None:
    """Give XLNetModel a floating-point attention mask, so that ``1.0 - mask`` subtracts floats.

    Fixes: ``torch.onnx.export`` of xlnet: ``ConversionError: Failed to decompose the FX graph
    for ONNX compatibility`` (``Cannot find a compatible OpOverload for aten.sub ...
    sub.Tensor(1.0, convert_element_type_default)``): XLNetModel.forward
    (transformers/models/xlnet/modeling_xlnet.py:1078) computes ``1.0 - attention_mask`` on
    the int64 mask and the exporter's type promotion fails on a Python float minus an integer
    tensor (torch 2.13.0; the float mask exports). ``1.0 - int_tensor`` computes in the default
    float dtype, so converting the mask first gives identical numbers.

    Remove when: torch.onnx.export converts ``1.0 - int_tensor``.
    """
    patcher.replace_in(MODULE, "XLNetModel", "forward", xlnet_model_forward)


XLNET_FLOAT_MASK = Patch(
    name="xlnet_float_mask",
    fixes="Failed to decompose the FX graph for ONNX compatibility ... Cannot find a compatible OpOverload for aten.sub",
    remove_when="torch.onnx.export converts ``1.0 - int_tensor``",
    install=_install_xlnet_float_mask,
    runtimes=("onnx",),
    model_types=("xlnet",),
)


register(
    Family(
        name="xlnet",
        model_types=("xlnet",),
        no_generation={
            "xlnet": (
                "its generate appends a dummy token at every step and predicts it through perm_mask and target_mapping (XLNetLMHeadModel.prepare_inputs_for_generation): not a loop of the causal step exported here"
            ),
        },
        no_cache={
            "xlnet": "its state, mems, is a tuple of (memory length, batch, d_model) tensors: "
            "batch is dimension 1, and torch.export with the task's states rule (batch on "
            "dimension 0) fails with \"L['mems'][0].size()[0] = 30 is not equal to "
            "L['input_ids'].size()[0] = 2\"; and eager's decode step is not a causal "
            "step: with attn_type='bi' (the default) and a memory that carries no mask "
            "(XLNetModel.forward attends every memory position, "
            "transformers/models/xlnet/modeling_xlnet.py:1089-1094) it differs from a "
            "full forward over prompt + new tokens by 2.6e-3 on the left-padded set "
            "(1.6e-5 unpadded, small only because the weights are untrained)",
        },
        patches=(
            XLNET_REL_SHIFT_GATHER,
            XLNET_FLOAT_MASK,
        ),
    )
)
