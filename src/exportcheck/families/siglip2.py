"""SigLIP2 (NaFlex): images as padded sequences of patches, each with its own grid."""

from __future__ import annotations

from typing import Any

from ..patches import Patch
from ..patches.core import passthrough
from . import Family, register

MODULE = "transformers.models.siglip2.modeling_siglip2"


def siglip2_compilable_check(cond: Any, msg: Any, error_type: type[Exception] = ValueError) -> None:
    """transformers' torch_compilable_check, a tensor condition recorded with ``item()``
    while exporting (``torch._check_tensor_all`` records ``aten._is_all_true``)."""
    import torch

    if isinstance(cond, torch.Tensor) and torch.compiler.is_exporting():
        torch._check(cond.all().item())
        return None
    return passthrough(siglip2_compilable_check.original, cond, msg, error_type)


def _install_siglip2_checks(patcher: Any, model: Any) -> None:
    """Record the checks of the spatial shapes as scalar assertions.

    Fixes: ``torch.onnx.export``: ``ConversionError: Error when translating node
    %_is_all_true ... aten._is_all_true.default``: Siglip2VisionEmbeddings.
    resize_positional_embeddings (transformers/models/siglip2/modeling_siglip2.py:149-152)
    checks that every spatial shape is positive and fits the sequence with
    ``torch_compilable_check`` on a tensor, which becomes ``torch._check_tensor_all``, and
    the ONNX exporter has no function for the ``aten._is_all_true`` it records. While
    exporting, the same conditions are asserted with ``cond.all().item()``.

    Remove when: the ONNX exporter translates ``aten._is_all_true``.
    """
    patcher.replace_in(MODULE, None, "torch_compilable_check", siglip2_compilable_check)


SIGLIP2_CHECKS = Patch(
    name="siglip2_scalar_checks",
    fixes="Error when translating node %_is_all_true",
    remove_when="the ONNX exporter translates aten._is_all_true",
    install=_install_siglip2_checks,
    model_types=("siglip2",),
)

register(Family(name="siglip2", model_types=("siglip2",), patches=(SIGLIP2_CHECKS,)))
