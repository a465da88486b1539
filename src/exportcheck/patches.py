"""Fixes for known breakages of the exporters, applied inside one reversible context.

Each patch is a context manager that changes something only inside its block and
restores it on exit, even after an exception. Its docstring names the exact error it
fixes and the condition under which it can be deleted. :func:`export_patches` applies
them all.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

from .pytrees import cache_pytrees

__all__ = ["PATCHES", "export_patches", "moe_batched_mm"]


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


#: The patches :func:`export_patches` applies, in order. Each takes the model (or None).
PATCHES: dict[str, Callable[[Any], contextlib.AbstractContextManager[None]]] = {
    "cache_pytrees": lambda model: cache_pytrees(),
    "moe_batched_mm": moe_batched_mm,
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
