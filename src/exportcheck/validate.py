"""Export a model and compare what the export computes with eager PyTorch.

:func:`validate` runs the stages below and returns a :class:`ValidationReport`. A
failure of the model in any stage is recorded in the report, never raised; misuse of
the API (an unknown exporter, a bad tolerance) raises.

==================  ==========================================================
stage               what it does
==================  ==========================================================
``build``           :func:`exportcheck.untrained_model`: model, input sets, dynamic
                    shapes (skipped when an :class:`UntrainedModel` is given)
``eager``           the model on ``inputs`` and every ``other_inputs`` set, each
                    deep-copied (eager appends to the cache it receives)
``export``          ``torch.export.export`` with the dynamic shapes, inside
                    :func:`exportcheck.export_patches`
``exported_run``    the ExportedProgram on every input set, compared with eager
``onnx``            ``torch.onnx.export`` of the ExportedProgram (onnx only)
``ort_session``     an onnxruntime ``InferenceSession`` on CPU (onnx only)
``ort_run``         onnxruntime on every input set, compared with eager (onnx only)
==================  ==========================================================
"""

from __future__ import annotations

import collections
import copy
import dataclasses
import os
import platform
import re
import tempfile
import time
import traceback
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.utils._pytree as pytree

from .ort import ort_feeds
from .pytrees import cache_pytrees

__all__ = ["ValidationReport", "max_diff", "validate"]


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


EXPORTERS = ("export", "onnx")


@dataclasses.dataclass
class ValidationReport:
    """What :func:`validate` found. ``ok`` is True when every stage passed and every
    compared input set is within ``atol``. ``to_dict()`` gives a JSON-ready dict."""

    source: str
    exporter: str
    atol: float
    stages: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    runs: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    model: dict[str, Any] = dataclasses.field(default_factory=dict)
    onnx: dict[str, Any] = dataclasses.field(default_factory=dict)
    versions: dict[str, str] = dataclasses.field(default_factory=dict)
    notes: list[str] = dataclasses.field(default_factory=list)

    @property
    def ok(self) -> bool:
        expected = ["build", "eager", "export", "exported_run"]
        if self.exporter == "onnx":
            expected += ["onnx", "ort_session", "ort_run"]
        done = {s["stage"]: s["ok"] for s in self.stages}
        return all(done.get(stage, False) for stage in expected)

    @property
    def failed_stage(self) -> str | None:
        """The first stage that failed, None if all passed."""
        return next((s["stage"] for s in self.stages if not s["ok"]), None)

    def worst(self, runner: str) -> float | None:
        """Largest max-abs difference of a runner (``exported`` or ``ort``), None if it never ran."""
        values = [r["abs"] for r in self.runs if r["runner"] == runner]
        return max(values) if values else None

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["ok"] = self.ok
        data["failed_stage"] = self.failed_stage
        data["worst_exported_abs"] = self.worst("exported")
        data["worst_ort_abs"] = self.worst("ort")
        return data

    def table(self) -> str:
        """A readable summary: one line per stage, then one line per compared run."""
        lines = [f"{self.source} ({self.exporter}): {'OK' if self.ok else 'FAILED'}"]
        for st in self.stages:
            status = "ok" if st["ok"] else "FAILED"
            error = "" if st["ok"] else f"  {st['error_type']}: {st['error']}"
            lines.append(f"  {st['stage']:13} {status:6} {st['seconds']:7.2f} s{error}")
        for run in self.runs:
            verdict = "ok" if run["ok"] else "DIFF"
            extra = f"  {run['mismatch']}" if run.get("mismatch") else ""
            lines.append(
                f"  {run['runner']:9} {run['input_set']:34} abs {run['abs']:9.2e} "
                f"rel {run['rel']:9.2e} {verdict}{extra}"
            )
        for note in self.notes:
            lines.append(f"  note: {note}")
        if self.onnx:
            top = ", ".join(f"{k}:{v}" for k, v in list(self.onnx["op_types"].items())[:6])
            lines.append(
                f"  onnx: {self.onnx['nodes']} nodes, {self.onnx['bytes'] / 2**20:.1f} MiB, {top}"
            )
        return "\n".join(lines)


def _versions() -> dict[str, str]:
    import importlib.metadata

    out = {"python": platform.python_version()}
    for name in ("torch", "transformers", "onnx", "onnxscript", "onnxruntime", "exportcheck"):
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:500] if text else ""


def _label(feeds: dict[str, Any]) -> str:
    ids = feeds.get("input_ids", feeds.get("inputs_embeds"))  # a drafter takes embeddings
    batch, seq = tuple(ids.shape[:2]) if ids is not None else ("?", "?")
    cache = next((v for k, v in feeds.items() if k in ("cache", "past_key_values")), None)
    length = None
    if isinstance(feeds.get("shared_kv_states"), dict) and feeds["shared_kv_states"]:
        length = int(next(iter(feeds["shared_kv_states"].values()))[0].shape[2])
    elif cache is not None:
        try:
            length = int(cache.get_seq_length())
        except Exception:  # some caches hold only linear-attention layers
            length = None
    return f"batch={batch} seq={seq}" + (f" cache={length}" if length is not None else "")


def _onnx_summary(path: str) -> dict[str, Any]:
    import onnx

    proto = onnx.load(path, load_external_data=False)
    ops = collections.Counter(node.op_type for node in proto.graph.node)
    folder = os.path.dirname(path)
    size = sum(os.path.getsize(os.path.join(folder, f)) for f in os.listdir(folder))
    return {
        "nodes": len(proto.graph.node),
        "op_types": dict(ops.most_common()),
        "bytes": size,
        "inputs": [i.name for i in proto.graph.input],
        "outputs": [o.name for o in proto.graph.output],
    }


_REFINEMENTS = 2
_SUGGESTION = re.compile(r"^\s*(\w+) = Dim\('(\w+)'(?:, min=(\d+))?(?:, max=(\d+))?\)\s*$")


def _map_dims(spec: Any, fn: Callable[[Any], Any]) -> Any:
    if isinstance(spec, dict) and all(isinstance(k, int) for k in spec):
        return {k: fn(v) for k, v in spec.items()}
    if isinstance(spec, dict):
        return {k: _map_dims(v, fn) for k, v in spec.items()}
    if isinstance(spec, list | tuple):
        return type(spec)(_map_dims(v, fn) for v in spec)
    return spec


def _describe_shapes(spec: Any) -> str:
    from .describe import string_type

    return string_type(spec, limit=1000)


def refine_dynamic_shapes(dynamic_shapes: Any, error: BaseException) -> tuple[Any, str] | None:
    """Narrow the bounds of named dimensions after a constraint violation.

    When ``torch.export`` reports that the model's code only supports part of a
    declared range (a learned position table of 512, a window), it suggests new
    bounds such as ``cache_length = Dim('cache_length', max=510)``. Those suggestions
    are applied. When it cannot suggest bounds (a guard its solver cannot prove),
    named dimensions become ``Dim.AUTO`` with the same bounds, so that export decides.
    Specializations to a constant are never applied: they are failures.

    :return: the new dynamic shapes and a note saying what changed, or None when the
        error is not a constraint violation or nothing can be refined
    """
    from torch.export import Dim
    from torch.export.dynamic_shapes import _DimHint

    text = str(error)
    if "Constraints violated" not in text:
        return None
    bounds: dict[str, tuple[int | None, int | None]] = {}
    if "Suggested fixes:" in text:
        for line in text.split("Suggested fixes:", 1)[1].splitlines():
            match = _SUGGESTION.match(line)
            if match and match.group(1) == match.group(2):
                low, high = match.group(3), match.group(4)
                if low and high and int(low) >= int(high):
                    return None  # a range of one value is a specialization
                bounds[match.group(1)] = (
                    int(low) if low else None,
                    int(high) if high else None,
                )
            elif line.strip() and "=" in line and not line.startswith("The error"):
                return None  # a specialization or a relation between dimensions
    if bounds:
        declared: dict[str, Any] = {}
        _map_dims(
            dynamic_shapes,
            lambda d: declared.setdefault(d.__name__, d) if isinstance(d, Dim) else d,
        )
        for name, (low, high) in list(bounds.items()):
            if name in declared:
                low = declared[name].min if low is None else low
                high = declared[name].max if high is None else high
                if low >= high:
                    return None  # max=1 on a Dim of min=1: one value, a specialization
                bounds[name] = (low, high)

        def narrow(dim: Any) -> Any:
            name = getattr(dim, "__name__", None)
            if name in bounds and not isinstance(dim, _DimHint):
                return Dim(name, min=bounds[name][0], max=bounds[name][1])
            return dim

        changes = ", ".join(f"{n} in [{lo or '.'}, {hi or '.'}]" for n, (lo, hi) in bounds.items())
        return _map_dims(dynamic_shapes, narrow), f"export suggested narrower bounds: {changes}"

    def relax(dim: Any) -> Any:
        if isinstance(dim, Dim):
            return Dim.AUTO(min=dim.min, max=dim.max)
        return dim

    relaxed = _map_dims(dynamic_shapes, relax)
    if _describe_shapes(relaxed) == _describe_shapes(dynamic_shapes):
        return None
    first = next((line.strip() for line in text.splitlines() if "Not all values" in line), "")
    return relaxed, f"named dimensions relaxed to Dim.AUTO after an unprovable guard: {first[:300]}"


def validate(
    source_or_experiment: Any,
    exporter: str = "onnx",
    *,
    atol: float = 1e-4,
    onnx_dir: str | None = None,
    progress: Callable[[str], None] | None = None,
) -> ValidationReport:
    """Export a model, run the export on every input set and compare with eager.

    :param source_or_experiment: what :func:`exportcheck.untrained_model` accepts (a
        hub id, a model_type, a config) or an :class:`exportcheck.UntrainedModel`
    :param exporter: ``export`` (torch.export only) or ``onnx`` (torch.export, then
        the ExportedProgram converted to ONNX and run with onnxruntime)
    :param atol: largest max-abs difference with eager that counts as correct
    :param onnx_dir: where to write the ONNX model; a temporary folder, removed at
        the end, by default
    :param progress: called with the name of each stage as it starts
    :return: a :class:`ValidationReport`; ``report.ok`` says if everything passed

    >>> from exportcheck import validate
    >>> report = validate("arnir0/Tiny-LLM", exporter="export")
    >>> report.ok, [s["stage"] for s in report.stages]
    (True, ['build', 'eager', 'export', 'exported_run'])
    """
    from .models import UntrainedModel, untrained_model
    from .patches import eager_fixes, export_patches

    if exporter not in EXPORTERS:
        raise ValueError(f"validate: exporter must be one of {EXPORTERS}, got {exporter!r}.")
    if not isinstance(atol, int | float) or isinstance(atol, bool) or not atol > 0:
        raise ValueError(f"validate: atol must be a positive number, got {atol!r}.")
    if onnx_dir is not None and not isinstance(onnx_dir, str | os.PathLike):
        raise TypeError(f"validate: onnx_dir must be a path, got {type(onnx_dir).__name__}.")
    name = (
        getattr(source_or_experiment.config, "model_type", "model")
        if isinstance(source_or_experiment, UntrainedModel)
        else source_or_experiment
        if isinstance(source_or_experiment, str)
        else getattr(source_or_experiment, "model_type", None)
        or (
            source_or_experiment.get("model_type")
            if isinstance(source_or_experiment, dict)
            else None
        )
        or type(source_or_experiment).__name__
    )
    report = ValidationReport(source=str(name), exporter=exporter, atol=float(atol))
    report.versions = _versions()
    state: dict[str, Any] = {}

    def stage(stage_name: str, fn: Callable[[], Any]) -> bool:
        if progress is not None:
            progress(stage_name)
        begin = time.perf_counter()
        entry: dict[str, Any] = {"stage": stage_name, "ok": True}
        try:
            fn()
        except Exception as e:  # a model's failure is a result, not an error of validate
            tb = traceback.extract_tb(e.__traceback__)
            entry.update(
                ok=False,
                error_type=type(e).__name__,
                error=_first_line(e),
                where=f"{tb[-1].filename.split('site-packages/')[-1]}:{tb[-1].lineno}"
                if tb
                else "",
            )
        entry["seconds"] = round(time.perf_counter() - begin, 3)
        report.stages.append(entry)
        return entry["ok"]

    def build() -> None:
        if isinstance(source_or_experiment, UntrainedModel):
            state["m"] = source_or_experiment
        else:
            state["m"] = untrained_model(source_or_experiment)
        m = state["m"]
        report.model = {
            "class": type(m.model).__name__,
            "model_type": getattr(m.config, "model_type", None),
            "parameters": sum(p.numel() for p in m.model.parameters()),
            "cache_argument": m.cache_argument,
            "input_sets": [_label(f) for f in [m.inputs, *m.other_inputs]],
            # how these inputs differ from the usual decode step (untrained_model's notes)
            "notes": list(m.notes),
        }

    def eager() -> None:
        m = state["m"]
        with eager_fixes(m.model) as fixes, torch.no_grad():
            state["expected"] = [m.model(**copy.deepcopy(f)) for f in [m.inputs, *m.other_inputs]]
        report.notes.extend(
            f"eager reference computed with {name}: it corrects eager transformers"
            for name in fixes
        )

    def export() -> None:
        m = state["m"]
        dynamic_shapes = m.dynamic_shapes
        for attempt in range(_REFINEMENTS + 1):
            try:
                with export_patches(m.model), torch.no_grad():
                    state["ep"] = torch.export.export(
                        m.model, (), kwargs=copy.deepcopy(m.inputs), dynamic_shapes=dynamic_shapes
                    )
                break
            except Exception as e:
                refined = (
                    None if attempt == _REFINEMENTS else refine_dynamic_shapes(dynamic_shapes, e)
                )
                if refined is None:
                    raise
                dynamic_shapes, note = refined
                report.notes.append(note)
        report.model["dynamic_shapes"] = _describe_shapes(dynamic_shapes)

    def compare(runner: str, run_one: Callable[[dict[str, Any]], Any]) -> None:
        m = state["m"]
        failures = []
        for i, feeds in enumerate([m.inputs, *m.other_inputs]):
            got = run_one(feeds)
            diff = max_diff(state["expected"][i], got)
            ok = diff["mismatch"] is None and diff["abs"] <= atol
            report.runs.append({"runner": runner, "input_set": _label(feeds), "ok": ok, **diff})
            if not ok:
                failures.append(f"{_label(feeds)}: abs {diff['abs']:.3g}")
        if failures:
            raise AssertionError(
                f"{runner} differs from eager beyond {atol}: " + "; ".join(failures)
            )

    def exported_run() -> None:
        # The module must be built while the caches are pytree nodes: its input
        # flattening code is generated from the registrations.
        with export_patches(state["m"].model), torch.no_grad():
            module = state["ep"].module()
            compare("exported", lambda feeds: module(**copy.deepcopy(feeds)))

    def to_onnx() -> None:
        folder = onnx_dir or state["tmp"]
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, f"{report.source.replace('/', '--')}.onnx")
        with export_patches(state["m"].model), torch.no_grad():
            torch.onnx.export(
                state["ep"], (), path, kwargs=copy.deepcopy(state["m"].inputs), dynamo=True
            )
        state["onnx_path"] = path
        report.onnx = _onnx_summary(path)

    def ort_session() -> None:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3
        state["session"] = onnxruntime.InferenceSession(
            state["onnx_path"], options, providers=["CPUExecutionProvider"]
        )

    def ort_run() -> None:
        session = state["session"]
        compare("ort", lambda feeds: session.run(None, ort_feeds(session, feeds)))

    steps: list[tuple[str, Callable[[], None]]] = [
        ("build", build),
        ("eager", eager),
        ("export", export),
        ("exported_run", exported_run),
    ]
    if exporter == "onnx":
        steps += [("onnx", to_onnx), ("ort_session", ort_session), ("ort_run", ort_run)]
    with tempfile.TemporaryDirectory(prefix="exportcheck-") as tmp:
        state["tmp"] = tmp
        for stage_name, fn in steps:
            # exported_run failing does not stop the ONNX conversion: both verdicts count.
            if not stage(stage_name, fn) and stage_name != "exported_run":
                break
        state.pop("session", None)
    return report
