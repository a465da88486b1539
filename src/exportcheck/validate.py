"""Compare what an exported model computes with what eager PyTorch computes."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.utils._pytree as pytree

from .pytrees import cache_pytrees

__all__ = ["max_diff"]


def _leaves(obj: Any) -> list[Any]:
    with cache_pytrees():
        leaves = pytree.tree_leaves(obj)
    return [x for x in leaves if x is not None]


def _as_tensor(x: Any) -> torch.Tensor | None:
    if isinstance(x, torch.Tensor):
        return x.detach()
    if isinstance(x, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(x))
    if type(x).__name__ == "OrtValue":
        return torch.from_numpy(x.numpy())
    if isinstance(x, bool | int | float):
        return torch.tensor(x)
    return None


def max_diff(expected: Any, got: Any) -> dict[str, Any]:
    """Largest absolute and relative differences between two nested outputs.

    Both sides are flattened into tensors first (transformers outputs and caches
    included), so an eager output can be compared with the flat list of arrays that
    onnxruntime returns. The result is a dict:

    * ``abs``, ``rel``: max absolute and max relative difference over every leaf,
      ``inf`` if anything does not match in count or shape
    * ``leaves``: the number of leaves compared
    * ``nan``: leaves where one side has NaN at a place the other does not
    * ``mismatch``: a sentence saying what did not match, or ``None``

    >>> import torch
    >>> d = max_diff({"a": torch.tensor([1.0, 2.0])}, [torch.tensor([1.0, 2.5])])
    >>> d["abs"], d["mismatch"]
    (0.5, None)
    """
    exp = _leaves(expected)
    res = _leaves(got)
    out: dict[str, Any] = {"abs": 0.0, "rel": 0.0, "leaves": 0, "nan": 0, "mismatch": None}
    if len(exp) != len(res):
        out.update(
            abs=float("inf"),
            rel=float("inf"),
            mismatch=f"expected {len(exp)} output tensors, got {len(res)}",
        )
        return out
    for i, (e, r) in enumerate(zip(exp, res, strict=True)):
        te, tr = _as_tensor(e), _as_tensor(r)
        if te is None or tr is None:
            raise TypeError(
                f"max_diff: output {i} is a {type(e).__name__} on one side and a "
                f"{type(r).__name__} on the other; only tensors, arrays and numbers compare."
            )
        if tuple(te.shape) != tuple(tr.shape):
            out.update(
                abs=float("inf"),
                rel=float("inf"),
                mismatch=f"output {i} has shape {tuple(tr.shape)}, expected {tuple(te.shape)}",
            )
            return out
        out["leaves"] += 1
        if te.numel() == 0:
            continue
        te64, tr64 = te.to(torch.float64), tr.to(torch.float64)
        nan_e, nan_r = torch.isnan(te64), torch.isnan(tr64)
        if bool((nan_e != nan_r).any()):
            out["nan"] += 1
        both = ~(nan_e | nan_r)
        if not bool(both.any()):
            continue
        diff = (te64[both] - tr64[both]).abs()
        out["abs"] = max(out["abs"], float(diff.max()))
        rel = diff / (te64[both].abs() + 1e-12)
        out["rel"] = max(out["rel"], float(rel.max()))
    if out["nan"]:
        out["abs"] = out["rel"] = float("inf")
        out["mismatch"] = f"{out['nan']} outputs have NaN where the other side has a number"
    return out
