"""ShieldGemma 2: Gemma 3's vision-language model scoring an image against a policy prompt."""

from __future__ import annotations

from typing import Any

from ..patches import Patch
from ..patches.core import passthrough
from . import Family, register

MODULE = "transformers.models.gemma3.modeling_gemma3"


def gemma3_compilable_check(cond: Any, msg: Any, error_type: type[Exception] = ValueError) -> None:
    """transformers' torch_compilable_check, a tensor condition recorded with ``item()``
    while exporting (``torch._check_tensor_all`` records ``aten._is_all_true``)."""
    import torch

    if isinstance(cond, torch.Tensor) and torch.compiler.is_exporting():
        torch._check(cond.all().item())
        return None
    return passthrough(gemma3_compilable_check.original, cond, msg, error_type)


def _install_gemma3_checks(patcher: Any, model: Any) -> None:
    """Record Gemma 3's image-token count check as a scalar assertion.

    Fixes: ``torch.onnx.export``: ``ConversionError: Error when translating node
    %_is_all_true ... aten._is_all_true.default`` for a graph that merges the image
    features itself (ShieldGemma 2's classifier, image and prompt in one graph):
    Gemma3Model.get_placeholder_mask (transformers/models/gemma3/modeling_gemma3.py:790)
    checks that the image tokens match the features with ``torch_compilable_check`` on a
    tensor (the tokens are counted with ``sum()``), which becomes
    ``torch._check_tensor_all``, and the ONNX exporter has no function for the
    ``aten._is_all_true`` it records. While exporting, the same condition is asserted
    with ``cond.all().item()``.

    Remove when: the ONNX exporter translates ``aten._is_all_true``.
    """
    patcher.replace_in(MODULE, None, "torch_compilable_check", gemma3_compilable_check)


GEMMA3_CHECKS = Patch(
    name="gemma3_scalar_checks",
    fixes="Error when translating node %_is_all_true",
    remove_when="the ONNX exporter translates aten._is_all_true",
    install=_install_gemma3_checks,
    model_types=("shieldgemma2",),
)

register(
    Family(
        name="shieldgemma2",
        model_types=("shieldgemma2",),
        config_fixes={
            "shieldgemma2": (
                {"yes_token_index": 500, "no_token_index": 501},
                "the classifier reads the logits of the tokenizer's Yes and No, ids it "
                "takes from the config or, when unset as in the config class, from Gemma's "
                "vocabulary (10784 and 3771: modeling_shieldgemma2.py:56); the tiny "
                "vocabulary has 1024 tokens, so two ordinary ids of it stand for them",
            )
        },
        patches=(GEMMA3_CHECKS,),
    )
)
