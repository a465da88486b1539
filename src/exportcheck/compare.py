"""Comparing outputs, and the one definition of "green".

:func:`max_diff` compares two nested outputs (transformers outputs and caches
included); :func:`verdict` reads a validation result (a report or a row of a results
file) and says, per runtime, whether it is green. Validation, the status report, the
command line's exit status and the recipes all use :func:`verdict`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.utils._pytree as pytree

from .caches.pytrees import cache_pytrees

__all__ = [
    "compare_generation",
    "depth",
    "green",
    "green_everywhere",
    "max_diff",
    "verdict",
]


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


def compare_generation(expected: Any, got: Any, atol: float) -> dict[str, Any]:
    """Compare two greedy generations step by step: tokens first, then logits.

    :param expected: the reference, with ``tokens`` (``(batch, steps)``) and ``logits``
        (one ``(batch, vocab)`` tensor per step), such as
        :class:`exportcheck.tasks.Generation`
    :param got: the same from another runtime
    :param atol: largest max-abs difference of logits that counts as equal
    :return: a dict: ``ok``, ``steps``, ``abs`` (largest logits difference over every
        step), ``tokens_equal``, ``mismatches`` and ``ties`` (``step``, ``row``,
        ``expected``, ``got`` token and ``gap``, the distance between the reference's
        two best logits)

    A token may differ from the reference's only where the reference's two best logits
    are within ``atol`` of each other: such a step is a *tie*, listed and allowed; any
    other differing token is a mismatch and fails.

    >>> import torch
    >>> from types import SimpleNamespace as G
    >>> ref = G(tokens=torch.tensor([[1, 0]]), logits=[torch.tensor([[0.0, 1.0]]),
    ...     torch.tensor([[2.0, 0.0]])])
    >>> run = G(tokens=torch.tensor([[1, 1]]), logits=[torch.tensor([[0.0, 1.0]]),
    ...     torch.tensor([[0.0, 2.0]])])
    >>> r = compare_generation(ref, run, 1e-4)
    >>> r["ok"], r["abs"], r["mismatches"]
    (False, 2.0, [{'step': 1, 'row': 0, 'expected': 0, 'got': 1, 'gap': 2.0}])
    """
    steps = len(expected.logits)
    out: dict[str, Any] = {
        "ok": True,
        "steps": steps,
        "abs": 0.0,
        "tokens_equal": True,
        "mismatches": [],
        "ties": [],
    }
    if len(got.logits) != steps or tuple(got.tokens.shape) != tuple(expected.tokens.shape):
        out.update(ok=False, abs=float("inf"), tokens_equal=False)
        out["mismatches"].append(
            {
                "step": None,
                "error": f"expected {steps} steps of tokens {tuple(expected.tokens.shape)}, "
                f"got {len(got.logits)} of {tuple(got.tokens.shape)}",
            }
        )
        return out
    for t in range(steps):
        e = expected.logits[t].detach().to(torch.float64)
        g = got.logits[t].detach().to(torch.float64)
        if e.shape != g.shape:
            out.update(ok=False, abs=float("inf"))
            out["mismatches"].append(
                {"step": t, "error": f"logits {tuple(g.shape)}, expected {tuple(e.shape)}"}
            )
            continue
        diff = float((e - g).abs().max()) if e.numel() else 0.0
        if diff != diff:  # NaN
            diff = float("inf")
        out["abs"] = max(out["abs"], diff)
        for row in range(e.shape[0]):
            want, have = int(expected.tokens[row, t]), int(got.tokens[row, t])
            if want == have:
                continue
            best = torch.topk(e[row], 2).values if e.shape[-1] > 1 else e[row]
            gap = float(best[0] - best[-1])
            entry = {"step": t, "row": row, "expected": want, "got": have, "gap": gap}
            out["ties" if gap <= atol else "mismatches"].append(entry)
    out["tokens_equal"] = not out["mismatches"] and not out["ties"]
    out["ok"] = not out["mismatches"] and out["abs"] <= atol
    return out


def _stages(result: Any) -> list[dict[str, Any]]:
    if isinstance(result, dict):
        return list(result.get("stages", []))
    return list(getattr(result, "stages", []))


def _field(result: Any, name: str, default: Any = None) -> Any:
    return result.get(name, default) if isinstance(result, dict) else getattr(result, name, default)


def verdict(result: Any) -> dict[str, bool]:
    """Per runtime, whether a validation result is green.

    :param result: a :class:`exportcheck.ValidationReport` or a row of a results file
        (its ``to_dict()``)
    :return: ``{runtime: green}`` for every runtime the validation asked for

    A validation has a *plan*: its stages as ``[stage, component, runtime]``, derived
    from the task's components and the runtimes asked for. A runtime is green when
    every planned stage it depends on ran and passed: the shared ones (``runtime``
    None: building the model, eager, the export of each component) and its own
    (converting, loading, running and comparing every input set within the tolerance).
    A stage that did not run because an earlier one failed is not a pass.

    >>> row = {"runtimes": ["exported_program", "onnx"],
    ...     "plan": [["export", "model", None], ["exported_run", "model", "exported_program"],
    ...              ["onnx", "model", "onnx"], ["ort_run", "model", "onnx"]],
    ...     "stages": [{"stage": "export", "component": "model", "runtime": None, "ok": True},
    ...         {"stage": "exported_run", "component": "model", "runtime": "exported_program",
    ...          "ok": True},
    ...         {"stage": "onnx", "component": "model", "runtime": "onnx", "ok": False}]}
    >>> verdict(row)
    {'exported_program': True, 'onnx': False}
    """
    done = {
        (s["stage"], s.get("component"), s.get("runtime")): bool(s["ok"]) for s in _stages(result)
    }
    plan = [tuple(p) for p in _field(result, "plan", None) or []]
    out = {}
    for runtime in _field(result, "runtimes", None) or []:
        needed = [p for p in plan if p[2] is None or p[2] == runtime]
        out[runtime] = bool(needed) and all(done.get(p, False) for p in needed)
    return out


def green(result: Any, runtimes: Any = None) -> bool:
    """True when ``result`` is green for every runtime (or every one of ``runtimes``).

    >>> green({"runtimes": ["exported_program"], "plan": [["build", None, None]],
    ...     "stages": [{"stage": "build", "ok": True}]})
    True
    """
    verdicts = verdict(result)
    wanted = list(verdicts) if runtimes is None else list(runtimes)
    return bool(wanted) and all(verdicts.get(r, False) for r in wanted)


def depth(result: Any) -> dict[str, bool]:
    """How deep a validation checked, beyond its verdicts: one mark per column.

    * ``state``: the inputs carry the model's state (a cache, recurrent states, a
      drafter's key-value states): a decode step, not a forward from scratch
    * ``distinct_shapes``: every input set has a shape of its own, five or more, so at
      least four the export did not see
    * ``padded``: one input set is padded (left-padded, as ``generate`` pads a batch;
      right-padded, as a tokenizer pads an encoder's)
    * ``eager_consistent``: eager's decode step equals a full forward over prompt + new
      tokens, so the reference can be trusted
    * ``generation``: greedy generation was planned and passed, eagerly against
      ``generate`` and through every runtime (stages ending in ``_generate``)

    Only the columns that apply to the row's task are returned (``model.columns``, which
    validation records; all five for a row without it).

    >>> depth({"model": {"cache_argument": "cache", "distinct_shapes": 6,
    ...     "input_sets": ["a", "b", "c", "d", "e", "f left-padded"]},
    ...     "plan": [["eager_generate", None, None]],
    ...     "stages": [{"stage": "eager_consistent", "ok": True},
    ...                {"stage": "eager_generate", "ok": True}]})
    {'state': True, 'distinct_shapes': True, 'padded': True, 'eager_consistent': True, 'generation': True}
    """
    model = _field(result, "model", None) or {}
    labels = list(model.get("input_sets", []))
    consistent = any(s["stage"] == "eager_consistent" and s["ok"] for s in _stages(result))
    planned = [p for p in _field(result, "plan", None) or [] if str(p[0]).endswith("_generate")]
    done = {(s["stage"], s.get("runtime")) for s in _stages(result) if s["ok"]}
    generation = bool(planned) and all((p[0], p[2]) in done for p in planned)
    marks = {
        "state": model.get("cache_argument") is not None,
        "distinct_shapes": len(labels) >= 5 and model.get("distinct_shapes") == len(labels),
        "padded": any("padded" in label for label in labels),
        "eager_consistent": consistent,
        "generation": generation,
    }
    columns = model.get("columns") or list(marks)
    return {column: marks[column] for column in columns if column in marks}


def green_everywhere(result: Any) -> bool:
    """Green on every runtime and on every column of :func:`depth`."""
    return green(result) and all(depth(result).values())
