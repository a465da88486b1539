"""Fixes for known breakages of the exporters, applied inside one reversible context.

Every fix is a :class:`Patch`: it names the exact error it fixes, the runtimes that
need it and the condition under which it can be deleted. Generic fixes live in
:mod:`exportcheck.patches.torch_fixes` (torch bugs) and
:mod:`exportcheck.patches.transformers_fixes` (transformers code shared by many
models); the fixes of one model family live in its file under
:mod:`exportcheck.families`, next to their rewrite code, and are registered here.

:func:`export_patches` applies them all (or those one runtime needs) and yields the
:class:`PatchRecord` of each, which says whether the patch changed anything for the
model that ran inside the block.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from .core import RUNTIMES, Patch, Patcher, PatchRecord

__all__ = [
    "PATCHES",
    "RUNTIMES",
    "Patch",
    "PatchLog",
    "PatchRecord",
    "Patcher",
    "eager_fixes",
    "export_patches",
    "register_patch",
]

#: name -> Patch, in the order :func:`export_patches` applies them: the generic ones
#: first, then each family's, as the families register.
PATCHES: dict[str, Patch] = {}
#: name -> the family that registered it ("generic" for the modules of this package)
PATCH_FAMILY: dict[str, str] = {}


def register_patch(patch: Patch, family: str = "generic") -> Patch:
    """Add ``patch`` to :data:`PATCHES`; a name can be registered once."""
    if not isinstance(patch, Patch):
        raise TypeError(f"register_patch: expected a Patch, got {type(patch).__name__}.")
    if patch.name in PATCHES:
        raise ValueError(
            f"register_patch: a patch named {patch.name!r} is already registered "
            f"(by {PATCH_FAMILY[patch.name]!r})."
        )
    PATCHES[patch.name] = patch
    PATCH_FAMILY[patch.name] = family
    return patch


class PatchLog(list):
    """The :class:`PatchRecord` of every patch an :func:`export_patches` block applied."""

    @property
    def changed(self) -> list[str]:
        """Names of the patches that changed something, in the order they were applied."""
        return [r.name for r in self if r.changed]


def _selected(exclude: Any, runtime: str | None, only: Any = None) -> list[Patch]:
    if not isinstance(exclude, tuple | list | set | frozenset):
        raise TypeError(
            f"export_patches: exclude must be a tuple of patch names, got {type(exclude).__name__}."
        )
    unknown = sorted(set(exclude) - set(PATCHES))
    if unknown:
        raise ValueError(
            f"export_patches: unknown patch names {unknown}; known: {sorted(PATCHES)}."
        )
    if runtime is not None and runtime not in RUNTIMES:
        raise ValueError(f"export_patches: runtime must be one of {RUNTIMES}, got {runtime!r}.")
    return [
        p
        for p in PATCHES.values()
        if p.name not in exclude
        and (runtime is None or runtime in p.runtimes)
        and (only is None or p.name in only)
    ]


@contextlib.contextmanager
def export_patches(
    model: Any = None,
    exclude: tuple[str, ...] = (),
    *,
    runtime: str | None = None,
    only: Any = None,
) -> Iterator[PatchLog]:
    """Apply every known fix for exporting transformers models inside a ``with`` block.

    :param model: the model about to be exported; patches that change a model (the
        experts implementation) need it, the others apply without it
    :param exclude: names of patches (keys of :data:`PATCHES`) not to apply
    :param runtime: apply only the patches this runtime needs (``exported_program`` or
        ``onnx``); all of them by default
    :param only: names of the only patches to apply (among those selected)
    :return: a :class:`PatchLog`: ``log.changed`` names the patches that took effect

    On exit, torch, transformers and the model are exactly as they were, also after
    an exception. Entering twice or nesting is allowed: an inner block leaves the outer
    replacements in place.

    >>> import torch
    >>> from exportcheck import export_patches, make_dynamic_cache
    >>> cache = make_dynamic_cache([(torch.rand(1, 1, 2, 4), torch.rand(1, 1, 2, 4))])
    >>> with export_patches():
    ...     n = len(torch.utils._pytree.tree_leaves(cache))
    >>> n
    2
    """
    patches = _selected(exclude, runtime, None if only is None else set(only))
    if model is not None and not hasattr(model, "modules"):
        raise TypeError(
            f"export_patches: model must be a torch.nn.Module, got {type(model).__name__}."
        )
    log = PatchLog()
    with contextlib.ExitStack() as stack:
        for patch in patches:
            log.append(stack.enter_context(patch.apply(model)))
        yield log


def runtime_only(runtime: str, base: str = "exported_program") -> list[str]:
    """Names of the patches ``runtime`` needs and the ``base`` runtime does not.

    >>> "xlnet_float_mask" in runtime_only("onnx")
    True
    """
    return [p.name for p in PATCHES.values() if runtime in p.runtimes and base not in p.runtimes]


def _model_modules(model: Any) -> set[str]:
    return {type(m).__module__ for m in model.modules()} if hasattr(model, "modules") else set()


@contextlib.contextmanager
def eager_fixes(model: Any) -> Iterator[list[str]]:
    """Apply the patches that correct eager transformers for ``model``; yields their names.

    A patch with ``corrects_eager`` fixes a wrong result of eager itself, so the eager
    reference of its model types is computed with it.

    >>> import torch
    >>> with eager_fixes(torch.nn.Linear(2, 2)) as names:
    ...     names
    []
    """
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    names = [
        p.name
        for p in PATCHES.values()
        if p.corrects_eager and model_type is not None and model_type in p.model_types
    ]
    with contextlib.ExitStack() as stack:
        for name in names:
            stack.enter_context(PATCHES[name].apply(model))
        yield names


# The generic fixes register first, cache_pytrees (transformers_fixes) leading.
# isort: off
from . import transformers_fixes  # noqa: E402,F401
from . import torch_fixes  # noqa: E402,F401

# isort: on
