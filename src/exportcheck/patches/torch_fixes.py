"""Fixes of torch bugs that any model can meet."""

from __future__ import annotations

from typing import Any

from . import register_patch
from .core import Patch, passthrough

__all__ = ["SINGLE_VALUE_ROOT"]


def process_derived_dim_roots(self, results, name_to_dim):
    """DimConstraints._process_derived_dim_roots, leaving a one-value root as it is."""
    try:
        result = process_derived_dim_roots.original(self, results, name_to_dim)
    except AssertionError as e:
        if "Cannot create Dim with inconsistent" not in str(e):
            raise
        return None  # the fix: the root stays as it is
    return passthrough(lambda: result)


def _install_single_value_root(patcher: Any, model: Any) -> None:
    """Let torch.export report its constraint violation when a suggested root has one value.

    Fixes: ``AssertionError: Cannot create Dim with inconsistent min=1, max=1``
    (torch/export/dynamic_shapes.py:183), raised by
    ``DimConstraints._process_derived_dim_roots``
    (torch/fx/experimental/symbolic_shapes.py:3523) while torch writes the suggested fixes
    of a ``Constraints violated`` error whose solution is a derived dimension such as
    ``seq_length = 4*_seq_length - 1`` with ``_seq_length`` in [1, 1] (deepseek_v4). The
    assertion replaces the real error, the list of violated guards. With the patch the
    suggestion stays ``Dim('_seq_length', min=1, max=1)`` and torch raises its
    ``UserError``; nothing is traced or computed differently.

    Remove when: torch writes suggestions for a one-value root without asserting.
    """
    import torch.fx.experimental.symbolic_shapes  # noqa: F401  (imported by torch.export)

    patcher.replace_in(
        "torch.fx.experimental.symbolic_shapes",
        "DimConstraints",
        "_process_derived_dim_roots",
        process_derived_dim_roots,
    )


SINGLE_VALUE_ROOT = register_patch(
    Patch(
        name="torch_single_value_root",
        fixes="AssertionError: Cannot create Dim with inconsistent min=1, max=1",
        remove_when="torch writes suggestions for a one-value root without asserting.",
        install=_install_single_value_root,
        runtimes=("exported_program", "onnx"),
    )
)
