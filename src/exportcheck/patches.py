"""Fixes for known breakages of the exporters, applied inside one reversible context.

Each patch is a context manager that changes something only inside its block and
restores it on exit, even after an exception. Its docstring names the exact error it
fixes and the condition under which it can be deleted. :func:`export_patches` applies
them all.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from typing import Any

from .pytrees import cache_pytrees

__all__ = ["PATCHES", "export_patches", "moe_batched_mm", "real_rotary"]


def _configs_of(model: Any) -> list[Any]:
    """Every distinct transformers config reachable from the modules of ``model``."""
    seen: dict[int, Any] = {}
    modules = model.modules() if hasattr(model, "modules") else []
    for module in modules:
        config = getattr(module, "config", None)
        if config is not None and hasattr(config, "to_dict"):
            seen.setdefault(id(config), config)
            for key in getattr(config, "sub_configs", {}) or {}:
                sub = getattr(config, key, None)
                if sub is not None and hasattr(sub, "to_dict"):
                    seen.setdefault(id(sub), sub)
    return list(seen.values())


@contextlib.contextmanager
def moe_batched_mm(model: Any = None) -> Iterator[None]:
    """Run mixture-of-experts layers with the ``batched_mm`` experts implementation.

    Fixes: ``torch.onnx.export`` of any transformers MoE model (Mixtral, Qwen3-MoE,
    gpt-oss, DeepSeek-V3, ...) fails with
    ``DispatchError: No ONNX function found for <OpOverload(op='transformers.grouped_mm_fallback', ...)>``:
    the default ``grouped_mm`` implementation calls a custom op that has no ONNX
    translation. ``batched_mm`` computes the same with plain matmuls.

    Remove when: transformers' ``grouped_mm`` experts exports to ONNX (a translation
    for its custom op, or an implementation made of standard ops).

    Only the ``_experts_implementation`` attribute of the model's configs changes,
    and only where it was ``grouped_mm``.
    """
    changed: list[tuple[Any, Any]] = []
    try:
        if model is not None:
            for config in _configs_of(model):
                current = getattr(config, "_experts_implementation_internal", None)
                if current == "grouped_mm":
                    changed.append((config, current))
                    config._experts_implementation_internal = "batched_mm"
        yield
    finally:
        for config, previous in reversed(changed):
            config._experts_implementation_internal = previous


# Modules whose rotary embedding is complex-valued: module -> (rotary class, the axis
# where apply_rotary_emb inserts the heads). llama4's q and k are (batch, seq, heads,
# dim), deepseek_v2's (batch, heads, seq, dim).
_COMPLEX_ROTARY = {
    "transformers.models.llama4.modeling_llama4": ("Llama4TextRotaryEmbedding", 2),
    "transformers.models.deepseek_v2.modeling_deepseek_v2": ("DeepseekV2RotaryEmbedding", 1),
}


def _real_rotary_forward(self: Any, x: Any, position_ids: Any) -> Any:
    import torch

    angles = position_ids[..., None].float() * self.inv_freq.to(x.device, torch.float32)
    # The same numbers as view_as_real(polar(1, angles) * attention_scaling).
    return torch.stack((angles.cos(), angles.sin()), dim=-1) * self.attention_scaling


def _real_apply_rotary_emb(head_axis: int) -> Callable[..., Any]:
    import torch

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


@contextlib.contextmanager
def real_rotary(model: Any = None) -> Iterator[None]:
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
    saved: list[tuple[Any, str, Any]] = []
    try:
        for module_name, (class_name, head_axis) in _COMPLEX_ROTARY.items():
            module = sys.modules.get(module_name)
            if module is None or not hasattr(module, "apply_rotary_emb"):
                continue
            cls = getattr(module, class_name)
            original = cls.__dict__["forward"]
            saved.append((cls, "forward", original))
            saved.append((module, "apply_rotary_emb", module.apply_rotary_emb))
            new_forward = _real_rotary_forward
            if hasattr(original, "__wrapped__"):  # keep transformers' dynamic rope update
                from transformers.modeling_rope_utils import dynamic_rope_update

                new_forward = dynamic_rope_update(new_forward)
            cls.forward = new_forward
            module.apply_rotary_emb = _real_apply_rotary_emb(head_axis)
        yield
    finally:
        for owner, name, value in reversed(saved):
            setattr(owner, name, value)


#: The patches :func:`export_patches` applies, in order. Each takes the model (or None).
PATCHES: dict[str, Callable[[Any], contextlib.AbstractContextManager[None]]] = {
    "cache_pytrees": lambda model: cache_pytrees(),
    "moe_batched_mm": moe_batched_mm,
    "real_rotary": real_rotary,
}


@contextlib.contextmanager
def export_patches(model: Any = None, exclude: tuple[str, ...] = ()) -> Iterator[None]:
    """Apply every known fix for exporting transformers models inside a ``with`` block.

    :param model: the model about to be exported; patches that change a model (the
        experts implementation) need it, the others apply without it
    :param exclude: names of patches (keys of :data:`PATCHES`) not to apply

    On exit, torch, transformers and the model are exactly as they were, also after
    an exception. Entering twice or nesting is allowed.

    >>> import torch
    >>> from exportcheck import export_patches, make_dynamic_cache
    >>> cache = make_dynamic_cache([(torch.rand(1, 1, 2, 4), torch.rand(1, 1, 2, 4))])
    >>> with export_patches():
    ...     n = len(torch.utils._pytree.tree_leaves(cache))
    >>> n
    2
    """
    if not isinstance(exclude, tuple | list | set | frozenset):
        raise TypeError(
            f"export_patches: exclude must be a tuple of patch names, got {type(exclude).__name__}."
        )
    unknown = sorted(set(exclude) - set(PATCHES))
    if unknown:
        raise ValueError(
            f"export_patches: unknown patch names {unknown}; known: {sorted(PATCHES)}."
        )
    if model is not None and not hasattr(model, "modules"):
        raise TypeError(
            f"export_patches: model must be a torch.nn.Module, got {type(model).__name__}."
        )
    with contextlib.ExitStack() as stack:
        for name, patch in PATCHES.items():
            if name not in exclude:
                stack.enter_context(patch(model))
        yield
