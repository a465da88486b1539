"""Models whose rotary embedding is complex-valued (llama4, deepseek_v2)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import torch

from ..patches import Patch
from . import Family, register

_COMPLEX_ROTARY = {
    "transformers.models.llama4.modeling_llama4": ("Llama4TextRotaryEmbedding", 2),
    "transformers.models.deepseek_v2.modeling_deepseek_v2": ("DeepseekV2RotaryEmbedding", 1),
}


def _real_rotary_forward(self: Any, x: Any, position_ids: Any) -> Any:
    angles = position_ids[..., None].float() * self.inv_freq.to(x.device, torch.float32)
    # The same numbers as view_as_real(polar(1, angles) * attention_scaling).
    return torch.stack((angles.cos(), angles.sin()), dim=-1) * self.attention_scaling


def _real_apply_rotary_emb(head_axis: int) -> Callable[..., Any]:
    def apply_rotary_emb(xq: Any, xk: Any, freqs_cis: Any) -> tuple[Any, Any]:
        freqs = freqs_cis.unsqueeze(head_axis).to(xq.device)
        cos, sin = freqs[..., 0], freqs[..., 1]

        def rotate(x: Any) -> Any:
            pairs = x.float().reshape(*x.shape[:-1], -1, 2)
            real, imag = pairs[..., 0], pairs[..., 1]
            rotated = torch.stack((real * cos - imag * sin, real * sin + imag * cos), dim=-1)
            return rotated.flatten(3).type_as(x)

        return rotate(xq), rotate(xk)

    return apply_rotary_emb


def _install_real_rotary(patcher: Any, model: Any) -> None:
    """Compute complex-valued rotary embeddings (llama4, deepseek_v2) with real tensors.

    Fixes: ``torch.onnx.export`` of llama4 and deepseek_v2 fails with
    ``DispatchError: No ONNX function found for aten.unsqueeze.default. Failure
    message: No decompositions registered for the complex-valued input``: the rotary
    embedding is built with ``torch.polar`` and applied through ``view_as_complex``,
    and the ONNX exporter has no translation for complex tensors.

    While active, the rotary module returns the real and imaginary parts stacked on a
    last axis of 2 (what ``view_as_real`` of the complex frequencies gives) and
    ``apply_rotary_emb`` multiplies the pairs of q and k by them: the same numbers in
    eager (within float rounding). It must be active during ``torch.export``.

    Remove when: transformers computes these rotary embeddings without complex
    tensors, or the ONNX exporter translates complex operators. Only modules already
    imported are patched.
    """
    for module_name, (class_name, head_axis) in _COMPLEX_ROTARY.items():
        module = sys.modules.get(module_name)
        if module is None or not hasattr(module, "apply_rotary_emb"):
            continue
        cls = getattr(module, class_name)
        new_forward = _real_rotary_forward
        # keep transformers' dynamic rope update
        if hasattr(cls.__dict__["forward"], "__wrapped__"):
            from transformers.modeling_rope_utils import dynamic_rope_update

            new_forward = dynamic_rope_update(new_forward)
        if patcher.replace(cls, "forward", new_forward):
            patcher.replace(module, "apply_rotary_emb", _real_apply_rotary_emb(head_axis))


REAL_ROTARY = Patch(
    name="real_rotary",
    fixes="No ONNX function found for ... aten.unsqueeze ... No decompositions registered for the complex-valued input",
    remove_when="transformers computes these rotary embeddings without complex tensors, or the "
    "ONNX exporter translates complex operators",
    install=_install_real_rotary,
    runtimes=("onnx",),
    model_types=("llama4", "llama4_text", "deepseek_v2"),
)


register(
    Family(
        name="complex_rotary",
        model_types=("llama4", "llama4_text", "deepseek_v2"),
        patches=(REAL_ROTARY,),
    )
)
