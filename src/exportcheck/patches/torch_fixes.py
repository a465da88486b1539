"""Fixes of torch bugs that any model can meet."""

from __future__ import annotations

from typing import Any

from . import register_patch
from .core import Patch, passthrough

__all__ = ["BUCKETIZE_AS_COUNT", "SINGLE_VALUE_ROOT"]


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


def bucketize(input, boundaries, *, out_int32=False, right=False, out=None):
    """torch.bucketize as a count of the boundaries below each value (1-D boundaries)."""
    import torch

    if (
        out is not None
        or not torch.is_tensor(input)
        or not torch.is_tensor(boundaries)
        or boundaries.dim() != 1
    ):
        return passthrough(
            bucketize.original, input, boundaries, out_int32=out_int32, right=right, out=out
        )
    below = input[..., None] >= boundaries if right else input[..., None] > boundaries
    return below.sum(-1, dtype=torch.int32 if out_int32 else torch.int64)


def _install_bucketize_as_count(patcher: Any, model: Any) -> None:
    """Trace ``torch.bucketize`` as a count of comparisons, which onnxruntime runs.

    Fixes: ``INVALID_ARGUMENT : Non-zero status code returned while running GatherND
    node ... invalid index found, index = 6`` in onnxruntime: torch.onnx (onnxscript
    0.7.2's torchlib) lowers ``aten::bucketize`` to a binary search whose ``GatherND``
    reads the boundary at index ``len(boundaries)`` once a value lies beyond the last
    boundary. The vision embeddings of Idefics 2 and 3 and their relatives (Aria,
    SmolVLM) bucket each patch's fractional coordinate this way. For sorted 1-D
    boundaries, the bucket of ``x`` is the number of boundaries ``<= x`` (``right=True``)
    or ``< x`` (``right=False``): the same integers, computed with ``GreaterOrEqual``
    (``Greater``) and ``ReduceSum``. Other calls (an ``out`` tensor, N-D boundaries)
    run the original.

    Remove when: torch.onnx's bucketize runs in onnxruntime for values beyond the last
    boundary.
    """
    patcher.replace_in("torch", None, "bucketize", bucketize)


BUCKETIZE_AS_COUNT = register_patch(
    Patch(
        name="torch_bucketize_as_count",
        fixes="while running GatherND node ... invalid index found",
        remove_when="torch.onnx's bucketize runs in onnxruntime for values beyond the last boundary.",
        install=_install_bucketize_as_count,
        runtimes=("onnx",),
    )
)
