"""Export a model and compare what each runtime computes with eager PyTorch.

:func:`validate` builds the model of a task, runs eager on every input set, then for
each **component** of the task (one graph, or several) exports it with
``torch.export.export`` and, for each **runtime** asked for, runs its stages. The plan
of a validation (its stages, in order) is derived from the components and the
runtimes; nothing else lists stages. A failure of the model in any stage is recorded
in the report, never raised; misuse of the API (an unknown runtime, a bad tolerance)
raises.

======================  ==============================================================
stage                   what it does
======================  ==============================================================
``build``               :func:`exportcheck.untrained_model`: model, input sets,
                        dynamic shapes (skipped when an :class:`UntrainedModel` is
                        given)
``eager``               the model on every input set, each deep-copied (eager appends
                        to the cache it receives)
``eager_consistent``    eager checked against itself
                        (:meth:`exportcheck.tasks.Task.check_eager`: a decode step
                        equals a full forward over prompt + new tokens); a model whose
                        eager disagrees is red, its reference cannot be trusted
``export``              ``torch.export.export`` of each component with its dynamic
                        shapes, inside :func:`exportcheck.export_patches` (the patches
                        the ExportedProgram needs)
runtime stages          the stages of each runtime
                        (:data:`exportcheck.runtimes.RUNTIMES`), such as
                        ``exported_run`` (the ExportedProgram on every input set),
                        ``onnx``, ``ort_session`` and ``ort_run``
``eager_generate``      for a task that generates: the greedy loop
                        (:meth:`exportcheck.tasks.Task.generate`) run eagerly, step by
                        step, equals transformers' ``generate(do_sample=False)``
``<runner>_generate``   the same loop through each runtime (``exported_generate``,
                        ``ort_generate``), each step's state fed back: its tokens equal
                        eager's and its logits are within ``atol`` at every step
======================  ==============================================================

A task with several components prefixes the stages of each with its name
(``encoder.export``). Whether a validation is green, per runtime, is
:func:`exportcheck.compare.verdict`.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
import os
import platform
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch

from .compare import compare_generation, green, max_diff, verdict
from .describe import string_type
from .dims import REFINEMENTS, describe_shapes, refine_dynamic_shapes
from .models import UntrainedModel
from .patches import eager_fixes, export_patches, runtime_only
from .runtimes import RUNTIMES, get_runtime, runtimes_of
from .saved import INPUTS, save_programs, write_report
from .tasks import get_task, untrained_model

__all__ = ["ValidationReport", "recheck", "validate"]

#: The runtime whose patches torch.export runs with: every runtime starts from its program.
BASE_RUNTIME = "exported_program"


@dataclasses.dataclass
class ValidationReport:
    """What :func:`validate` found. ``ok`` is True when every runtime asked for is green
    (:func:`exportcheck.compare.verdict`). ``to_dict()`` gives a JSON-ready dict.

    * ``plan``: the stages planned, as ``[stage, component, runtime]``
    * ``stages``: the stages that ran, each with ``ok``, ``seconds`` and, on failure,
      ``error_type``, ``error`` and ``where``
    * ``runs``: one comparison with eager per runtime, component and input set
    * ``artifacts``: what each runtime made of each component (``component/runtime``)
    * ``generation``: the generation stage: prompt, new tokens, how the prompt went in,
      and per runner (``eager``, ``exported``, ``ort``) the comparison of
      :func:`exportcheck.compare.compare_generation`, or why the model was not generated
    * ``patches_applied``: per runtime, the patches that changed something while its
      program was exported (and converted): torch.export runs with the patches the
      ExportedProgram needs only; a runtime that needs more (ONNX-only fixes that change
      this model) gets its own export with them
    """

    source: str
    exporter: str
    atol: float
    task: str = "text-generation"
    runtimes: list[str] = dataclasses.field(default_factory=list)
    plan: list[list[Any]] = dataclasses.field(default_factory=list)
    stages: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    runs: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    model: dict[str, Any] = dataclasses.field(default_factory=dict)
    artifacts: dict[str, Any] = dataclasses.field(default_factory=dict)
    patches_applied: dict[str, list[str]] = dataclasses.field(default_factory=dict)
    generation: dict[str, Any] = dataclasses.field(default_factory=dict)
    versions: dict[str, str] = dataclasses.field(default_factory=dict)
    notes: list[str] = dataclasses.field(default_factory=list)

    @property
    def verdicts(self) -> dict[str, bool]:
        """``{runtime: green}``."""
        return verdict(self)

    @property
    def ok(self) -> bool:
        return green(self)

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
        data["verdicts"] = self.verdicts
        data["failed_stage"] = self.failed_stage
        for name in self.runtimes:
            runner = RUNTIMES[name].runner if name in RUNTIMES else name
            data[f"worst_{runner}_abs"] = self.worst(runner)
        return data

    def table(self) -> str:
        """A readable summary: one line per stage, then one line per compared run."""
        verdicts = ", ".join(f"{k} {'ok' if v else 'FAILED'}" for k, v in self.verdicts.items())
        lines = [f"{self.source} ({self.task}; {verdicts}): {'OK' if self.ok else 'FAILED'}"]
        for st in self.stages:
            status = "ok" if st["ok"] else "FAILED"
            error = "" if st["ok"] else f"  {st['error_type']}: {st['error']}"
            lines.append(f"  {st['stage']:17} {status:6} {st['seconds']:7.2f} s{error}")
        for run in self.runs:
            flag = "ok" if run["ok"] else "DIFF"
            extra = f"  {run['mismatch']}" if run.get("mismatch") else ""
            where = (
                run["input_set"]
                if run["component"] == "model"
                else (f"{run['component']}: {run['input_set']}")
            )
            lines.append(
                f"  {run['runner']:9} {where:34} abs {run['abs']:9.2e} "
                f"rel {run['rel']:9.2e} {flag}{extra}"
            )
        for note in self.notes:
            lines.append(f"  note: {note}")
        for key, details in self.artifacts.items():
            runtime = RUNTIMES.get(key.split("/")[-1])
            text = runtime.describe(details) if runtime is not None else ""
            if text:
                lines.append(f"  {key}: {text}")
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


def _source_name(source: Any) -> str:
    if isinstance(source, UntrainedModel):
        return str(getattr(source.config, "model_type", "model"))
    if isinstance(source, str | os.PathLike):
        return os.fspath(source)
    if isinstance(source, dict):
        return str(source.get("model_type") or "dict")
    return str(getattr(source, "model_type", None) or type(source).__name__)


def _check_arguments(runtimes: Any, atol: Any, onnx_dir: Any) -> list[str]:
    if isinstance(runtimes, str) or not isinstance(runtimes, Sequence) or not runtimes:
        raise ValueError(
            f"validate: runtimes must be a non-empty list of {tuple(RUNTIMES)}, got {runtimes!r}."
        )
    names = [get_runtime(r).name for r in runtimes]
    if not isinstance(atol, int | float) or isinstance(atol, bool) or not atol > 0:
        raise ValueError(f"validate: atol must be a positive number, got {atol!r}.")
    if onnx_dir is not None and not isinstance(onnx_dir, str | os.PathLike):
        raise TypeError(f"validate: onnx_dir must be a path, got {type(onnx_dir).__name__}.")
    return names


def validate(
    source_or_experiment: Any,
    exporter: str | None = "onnx",
    *,
    runtimes: Sequence[str] | None = None,
    task: str | None = None,
    atol: float = 1e-4,
    eager_atol: float = 1e-4,
    onnx_dir: str | None = None,
    save_dir: str | os.PathLike | None = None,
    progress: Callable[[str], None] | None = None,
) -> ValidationReport:
    """Export a model, run the export on every input set in each runtime, compare with eager.

    :param source_or_experiment: what :func:`exportcheck.untrained_model` accepts (a
        hub id, a model_type, a config) or an :class:`exportcheck.UntrainedModel`
    :param exporter: ``export`` (the ExportedProgram only) or ``onnx`` (the
        ExportedProgram, then ONNX run with onnxruntime); see
        :data:`exportcheck.runtimes.EXPORTERS`
    :param runtimes: the runtimes to validate, instead of ``exporter``
    :param task: the task to build the model for (by default the first task whose
        mapping has the model type); ignored when an UntrainedModel is given
    :param atol: largest max-abs difference with eager that counts as correct
    :param eager_atol: largest difference between eager's decode step and its full
        forward that counts as consistent (float rounding of two ways to compute it)
    :param onnx_dir: where to write what the runtimes convert (ONNX files); a temporary
        folder, removed at the end, by default
    :param save_dir: keep what was checked in this folder: each exported program
        (``.pt2``), each ONNX model, the input sets with eager's outputs, the report and
        a README (:mod:`exportcheck.saved`; ``exportcheck validate --from DIR`` checks
        them again); saving is a planned stage, so a failure to save is red
    :param progress: called with the name of each stage as it starts
    :return: a :class:`ValidationReport`; ``report.ok`` says if everything passed

    >>> from exportcheck import validate
    >>> report = validate("arnir0/Tiny-LLM", exporter="export")
    >>> report.ok, [s["stage"] for s in report.stages]
    (True, ['build', 'eager', 'eager_consistent', 'export', 'exported_run', 'eager_generate', 'exported_generate'])
    """
    if runtimes is None:
        if exporter is None:
            raise ValueError("validate: give an exporter or a list of runtimes.")
        try:
            runtimes = runtimes_of(exporter)
        except ValueError as e:
            raise ValueError(f"validate: {e}") from None
    if save_dir is not None:
        save_dir = os.fspath(save_dir)
        if os.path.exists(save_dir) and not os.path.isdir(save_dir):
            raise ValueError(f"validate: save_dir {save_dir!r} is a file: give a folder.")
        onnx_dir = onnx_dir or save_dir
    names = _check_arguments(runtimes, atol, onnx_dir)
    _check_arguments(names, eager_atol, None)
    if task is not None:
        get_task(task)  # an unknown task is misuse: raise now
    report = ValidationReport(
        source=_source_name(source_or_experiment),
        exporter=exporter or "+".join(names),
        atol=float(atol),
        runtimes=names,
        task=source_or_experiment.task
        if isinstance(source_or_experiment, UntrainedModel)
        else (task or ""),
    )
    report.versions = _versions()
    report.plan = [["build", None, None], ["eager", None, None]]
    state: dict[str, Any] = {}

    def stage(name: str, component: str | None, runtime: str | None, fn: Callable[[], Any]) -> bool:
        if progress is not None:
            progress(name)
        begin = time.perf_counter()
        entry: dict[str, Any] = {
            "stage": name,
            "ok": True,
            "component": component,
            "runtime": runtime,
        }
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
        m = (
            source_or_experiment
            if isinstance(source_or_experiment, UntrainedModel)
            else untrained_model(source_or_experiment, task=task)
        )
        state["m"] = m
        state["task"] = get_task(m.task)
        report.task = m.task
        state["components"] = state["task"].components(m)
        report.model = {
            "class": type(m.model).__name__,
            "model_type": getattr(m.config, "model_type", None),
            "parameters": sum(p.numel() for p in m.model.parameters()),
            "cache_argument": m.cache_argument,
            "components": [c.name for c in state["components"]],
            "input_sets": [label for c in state["components"] for label in c.labels],
            # the columns of compare.depth that apply to the task
            "columns": list(state["task"].columns),
            # how these inputs differ from the usual ones (the task's notes)
            "notes": list(m.notes),
        }

    def eager() -> None:
        m = state["m"]
        expected = {}
        with eager_fixes(m.model) as fixes, torch.no_grad():
            for c in state["components"]:
                expected[c.name] = [c.module(**copy.deepcopy(f)) for f in c.input_sets]
        state["expected"] = expected
        report.notes.extend(
            f"eager reference computed with {name}: it corrects eager transformers"
            for name in fixes
        )

    def applied(runtime: str, log: Any) -> None:
        names = report.patches_applied.setdefault(runtime, [])
        names.extend(n for n in log.changed if n not in names)

    def export_for(c: Any, runtime: str, dynamic_shapes: Any) -> Any:
        patched_as = RUNTIMES[runtime].patched_as if runtime in RUNTIMES else runtime
        with export_patches(c.module, runtime=patched_as or runtime) as log, torch.no_grad():
            program = torch.export.export(
                c.module, (), kwargs=copy.deepcopy(c.input_sets[0]), dynamic_shapes=dynamic_shapes
            )
        applied(runtime, log)
        return program

    def program_for(c: Any, rt: Any) -> Any:
        """The ExportedProgram a runtime converts: the shared one, unless patches that only
        this runtime needs change the model, in which case it is exported again with them."""
        base = ("ep", c.name)
        extra = runtime_only(rt.patched_as or rt.name)
        if not extra or rt.name == BASE_RUNTIME:
            return state[base]
        if ("ep", c.name, rt.name) not in state:
            # under the shared export's patches too, for a forward that fails without them
            with (
                export_patches(c.module, runtime=BASE_RUNTIME),
                export_patches(c.module, only=extra) as log,
                torch.no_grad(),
            ):
                c.module(**copy.deepcopy(c.input_sets[0]))
            if log.changed:
                state[("ep", c.name, rt.name)] = export_for(c, rt.name, state[("shapes", c.name)])
            else:
                state[("ep", c.name, rt.name)] = state[base]
                applied(rt.name, state[("log", c.name)])
        return state[("ep", c.name, rt.name)]

    def export(c: Any) -> Callable[[], None]:
        def run() -> None:
            dynamic_shapes = c.dynamic_shapes
            for attempt in range(REFINEMENTS + 1):
                try:
                    with export_patches(c.module, runtime=BASE_RUNTIME) as log, torch.no_grad():
                        state[("ep", c.name)] = torch.export.export(
                            c.module,
                            (),
                            kwargs=copy.deepcopy(c.input_sets[0]),
                            dynamic_shapes=dynamic_shapes,
                        )
                    state[("log", c.name)] = log
                    applied(BASE_RUNTIME, log)
                    break
                except Exception as e:
                    refined = (
                        None if attempt == REFINEMENTS else refine_dynamic_shapes(dynamic_shapes, e)
                    )
                    if refined is None:
                        raise
                    dynamic_shapes, note = refined
                    report.notes.append(
                        note if len(state["components"]) == 1 else f"{c.name}: {note}"
                    )
            state[("shapes", c.name)] = dynamic_shapes
            key = "dynamic_shapes" if len(state["components"]) == 1 else f"dynamic_shapes.{c.name}"
            report.model[key] = describe_shapes(dynamic_shapes)

        return run

    def runtime_stage(c: Any, rt: Any, steps: tuple[str, ...]) -> Callable[[], None]:
        key = (rt.name, c.name)

        def run() -> None:
            program = program_for(c, rt)
            state[("program", key)] = program
            with export_patches(c.module, runtime=rt.patched_as or rt.name), torch.no_grad():
                if "convert" in steps:
                    folder = onnx_dir or state["tmp"]
                    os.makedirs(folder, exist_ok=True)
                    state[("artifact", key)] = rt.convert(program, c, folder)
                    details = rt.details(state[("artifact", key)])
                    if details:
                        report.artifacts[f"{c.name}/{rt.name}"] = details
                if "load" in steps:
                    state[("loaded", key)] = rt.load(state.get(("artifact", key), program))
                if "run" in steps:
                    compare(c, rt, state[("loaded", key)])

        return run

    def compare(c: Any, rt: Any, loaded: Any) -> None:
        failures = []
        for i, feeds in enumerate(c.input_sets):
            got = rt.run(loaded, feeds)
            diff = max_diff(state["expected"][c.name][i], got)
            ok = diff["mismatch"] is None and diff["abs"] <= atol
            report.runs.append(
                {
                    "runner": rt.runner,
                    "runtime": rt.name,
                    "component": c.name,
                    "input_set": c.labels[i],
                    "ok": ok,
                    **diff,
                }
            )
            if not ok:
                failures.append(f"{c.labels[i]}: abs {diff['abs']:.3g}")
        if failures:
            raise AssertionError(
                f"{rt.runner} differs from eager beyond {atol}: " + "; ".join(failures)
            )

    def eager_consistent() -> None:
        with eager_fixes(state["m"].model):
            checks = state["task"].check_eager(state["m"], eager_atol)
        report.model["eager_consistency"] = checks
        bad = [c for c in checks if not c["ok"]]
        if bad:
            labels = [f"set {c['input_set']}: abs {c['abs']:.3g}" for c in bad]
            raise AssertionError(
                "eager is inconsistent: the decode step differs from a full forward over "
                f"prompt + new tokens beyond {eager_atol} ({'; '.join(labels)})"
            )

    def eager_generate() -> None:
        m, task_ = state["m"], state["task"]
        with eager_fixes(m.model), torch.no_grad():
            reference = task_.generate_eager(m)
            state["generated"] = reference

            def call(name: str, feeds: dict[str, Any]) -> Any:
                module = next(c.module for c in state["components"] if c.name == name)
                return module(**feeds)

            loop = task_.generate(m, call, reference.tokens)
        state["eager_loop"] = loop
        if all(len(set(row)) == 1 for row in reference.tokens.tolist()):
            report.notes.append(
                "generation: each row repeats one token (untrained weights), so equal tokens "
                "say little; the stage still compares the logits of every step"
            )
        result = compare_generation(reference, loop, eager_atol)
        report.generation["eager"] = {"calls": loop.calls, **result}
        report.generation["prefill"] = loop.prefill
        report.generation["tokens"] = reference.tokens.tolist()
        _note_ties(report, "eager", result, eager_atol)
        if not result["ok"]:
            raise AssertionError(
                "eager's step-by-step loop differs from generate(do_sample=False): "
                + _generation_failure(result, eager_atol)
                + (f" ({reference.note})" if reference.note else "")
            )

    def runtime_generate(rt: Any) -> Callable[[], None]:
        def run() -> None:
            m, task_ = state["m"], state["task"]
            if "eager_loop" not in state:
                raise RuntimeError("no eager generation to compare with (eager_generate failed)")
            module = state["components"][0].module

            def call(name: str, feeds: dict[str, Any]) -> Any:
                key = (rt.name, name)
                return rt.step(state[("loaded", key)], feeds, state[("program", key)])

            with (
                eager_fixes(m.model),
                export_patches(module, runtime=rt.patched_as or rt.name),
                torch.no_grad(),
            ):
                loop = task_.generate(m, call, state["generated"].tokens)
            result = compare_generation(state["eager_loop"], loop, atol)
            # the tokens against generate's own, ties judged on its logits
            direct = compare_generation(state["generated"], loop, float("inf"))
            result["tokens_equal_generate"] = direct["tokens_equal"]
            report.generation[rt.runner] = {"calls": loop.calls, "prefill": loop.prefill, **result}
            if loop.prefill != state["eager_loop"].prefill:
                report.notes.append(f"{rt.title} generation: {loop.prefill}")
            _note_ties(report, rt.title, result, atol)
            if not result["ok"]:
                raise AssertionError(
                    f"{rt.runner} generation differs from eager: "
                    + _generation_failure(result, atol)
                )

        return run

    with tempfile.TemporaryDirectory(prefix="exportcheck-") as tmp:
        state["tmp"] = tmp
        if not stage("build", None, None, build) or not stage("eager", None, None, eager):
            # the plan still says what would have run after the build
            _extend_plan(report, state.get("components"), names)
            return report
        m = state["m"]
        if any(p is not None for p in m.prompts):
            report.plan.append(["eager_consistent", None, None])
            # An inconsistent eager makes every verdict red, but the export still runs:
            # the row then says what the export does against that reference.
            stage("eager_consistent", None, None, eager_consistent)
        elif "eager_consistent" in state["task"].columns:
            report.notes.append(
                "eager consistency not checked: no input set has a prompt (no cache)"
            )
        # counted on the tensors themselves: two sets that differ only in a length the
        # model does not keep (a fixed-size recurrent state) are one shape
        report.model["distinct_shapes"] = len(
            {string_type(f, with_shape=True) for c in state["components"] for f in c.input_sets}
        )
        _extend_plan(report, state["components"], names)
        task_obj = state["task"]
        labels = [label for c in state["components"] for label in c.labels]
        if "padded" in task_obj.columns and not any("padded" in label for label in labels):
            takes_mask = any(
                "attention_mask" in f for c in state["components"] for f in c.input_sets
            )
            report.notes.append(
                "padded batch not checked: "
                + (
                    "no input set is padded"
                    if takes_mask
                    else f"{type(m.model).__name__}.forward takes no attention mask, so no "
                    "input set can be padded"
                )
            )
        why_not = task_obj.cannot_generate(m)
        generates = bool(task_obj.new_tokens) and why_not is None
        if generates:
            report.generation.update(new_tokens=task_obj.new_tokens)
            report.plan.append(["eager_generate", None, None])
            report.plan.extend([f"{RUNTIMES[n].runner}_generate", None, n] for n in names)
        elif task_obj.new_tokens:
            report.generation["not_checked"] = why_not
            report.notes.append(f"generation not checked: {why_not}")
        single = len(state["components"]) == 1
        for c in state["components"]:
            prefix = "" if single else f"{c.name}."
            if not stage(f"{prefix}export", c.name, None, export(c)):
                break
            for name in names:
                rt = RUNTIMES[name]
                for stage_name, _title, steps in rt.stages:
                    # A runtime failing does not stop the others: each verdict counts.
                    if not stage(
                        f"{prefix}{stage_name}", c.name, rt.name, runtime_stage(c, rt, steps)
                    ):
                        break
        if generates:
            stage("eager_generate", None, None, eager_generate)
            for name in names:
                rt = RUNTIMES[name]
                ready = all(("loaded", (rt.name, c.name)) in state for c in state["components"])
                if ready:
                    stage(f"{rt.runner}_generate", None, rt.name, runtime_generate(rt))
        if save_dir is not None:

            def save() -> None:
                programs = {
                    c.name: state[("ep", c.name)]
                    for c in state["components"]
                    if ("ep", c.name) in state
                }
                saved = save_programs(
                    save_dir, report, state["components"], state["expected"], programs
                )
                report.notes.append(f"saved in {save_dir}: {', '.join(saved)}")

            report.plan.append(["save", None, None])
            stage("save", None, None, save)
        state.clear()
    if save_dir is not None and os.path.isdir(save_dir):
        write_report(save_dir, report)
    return report


def _note_ties(report: ValidationReport, who: str, result: dict[str, Any], atol: float) -> None:
    """Say so in the row when a generated token differs only because of a tie."""
    ties = result.get("ties") or []
    if ties:
        steps = ", ".join(f"step {t['step']} row {t['row']}" for t in ties)
        report.notes.append(
            f"{who} generation: {len(ties)} token(s) differ where the reference's two best "
            f"logits are within {atol:g} of each other ({steps}): allowed"
        )


def _generation_failure(result: dict[str, Any], atol: float) -> str:
    bad = result["mismatches"]
    parts = []
    if bad:
        first = bad[0]
        parts.append(
            first.get("error")
            or f"{len(bad)} tokens differ, first at step {first['step']} row {first['row']} "
            f"({first['got']} instead of {first['expected']}, whose logit leads by "
            f"{first['gap']:.3g})"
        )
    if result["abs"] > atol:
        parts.append(f"logits differ by {result['abs']:.3g} > {atol}")
    return "; ".join(parts)


def _extend_plan(report: ValidationReport, components: Any, names: list[str]) -> None:
    """Add the stages of every component and runtime to the plan (``[stage, component, runtime]``).

    When the build failed the components are unknown: one ``model`` component is planned,
    so that the verdict of every runtime is red.
    """
    labels = [c.name for c in components] if components else ["model"]
    single = len(labels) == 1
    for name in labels:
        prefix = "" if single else f"{name}."
        report.plan.append([f"{prefix}export", name, None])
        for runtime in names:
            for stage_name, _title, _steps in RUNTIMES[runtime].stages:
                report.plan.append([f"{prefix}{stage_name}", name, runtime])


def _since(begin: float) -> float:
    return round(time.perf_counter() - begin, 3)


@contextlib.contextmanager
def _quiet_example_inputs() -> Iterator[None]:
    """torch.export.load reads a program's example inputs with weights_only=True first;
    a cache among them makes it fall back to a full unpickling, which it logs with a
    message whose formatting fails (a traceback on stderr for nothing). The fallback
    still happens; only that log is muted."""
    logger = logging.getLogger("torch._export.serde.serialize")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def recheck(folder: str | os.PathLike, atol: float | None = None) -> Any:
    """Run the programs and ONNX models saved in ``folder`` on the saved input sets and
    compare them with eager's saved outputs.

    :param folder: what ``validate(..., save_dir=folder)`` wrote
    :param atol: the tolerance; the saved validation's by default
    :return: a :class:`exportcheck.ValidationReport` (``exporter`` is ``saved``) with one
        load stage and one run stage per file, and one run per input set
    :raises ValueError: when ``folder`` is not a saved validation
    """
    import torch

    from .caches.pytrees import cache_pytrees

    folder = os.fspath(folder)
    path = os.path.join(folder, INPUTS)
    if not os.path.isfile(path):
        raise ValueError(
            f"recheck: {folder} holds no {INPUTS}: pass a folder written by "
            "'exportcheck validate SOURCE --save DIR'."
        )
    # The programs' output specs name transformers' output classes, which are pytree
    # nodes once their module is imported; torch.load imports the modules of the inputs.
    import transformers.modeling_outputs  # noqa: F401

    with cache_pytrees():
        saved = torch.load(path, weights_only=False)
    tolerance = float(saved["atol"] if atol is None else atol)
    files = {"exported_program": ".pt2", "onnx": ".onnx"}
    present = [
        name
        for name, suffix in files.items()
        if any(
            os.path.isfile(os.path.join(folder, c["name"] + suffix)) for c in saved["components"]
        )
    ]
    report = ValidationReport(
        source=f"{saved['source']} (saved in {folder})",
        exporter="saved",
        atol=tolerance,
        task=saved["task"],
        runtimes=present,
    )
    single = len(saved["components"]) == 1
    for c in saved["components"]:
        prefix = "" if single else f"{c['name']}."
        for name in present:
            rt = RUNTIMES[name]
            artifact = os.path.join(folder, c["name"] + files[name])
            load_stage, run_stage = f"{prefix}{name}_load", f"{prefix}{rt.runner}_run"
            report.plan += [[load_stage, c["name"], name], [run_stage, c["name"], name]]
            entry = {"stage": load_stage, "component": c["name"], "runtime": name, "seconds": 0.0}
            if not os.path.isfile(artifact):
                report.stages.append(
                    {
                        **entry,
                        "ok": False,
                        "error_type": "FileNotFoundError",
                        "error": f"{artifact} is missing",
                    }
                )
                continue
            begin = time.perf_counter()
            with cache_pytrees(), _quiet_example_inputs():
                loaded = (
                    torch.export.load(artifact).module()
                    if name == "exported_program"
                    else rt.load(artifact)
                )
            report.stages.append({**entry, "ok": True, "seconds": _since(begin)})
            begin = time.perf_counter()
            bad = []
            with cache_pytrees(), torch.no_grad():
                for label, feeds, want in zip(
                    c["labels"], c["input_sets"], c["expected"], strict=True
                ):
                    diff = max_diff(want, rt.run(loaded, copy.deepcopy(feeds)))
                    ok = diff["mismatch"] is None and diff["abs"] <= tolerance
                    report.runs.append(
                        {
                            "runner": rt.runner,
                            "runtime": name,
                            "component": c["name"],
                            "input_set": label,
                            "ok": ok,
                            **diff,
                        }
                    )
                    if not ok:
                        bad.append(f"{label}: abs {diff['abs']:.3g}")
            report.stages.append(
                {
                    "stage": run_stage,
                    "component": c["name"],
                    "runtime": name,
                    "seconds": _since(begin),
                    "ok": not bad,
                    **(
                        {
                            "error_type": "AssertionError",
                            "error": f"differs from the saved eager outputs beyond {tolerance}: "
                            + "; ".join(bad),
                        }
                        if bad
                        else {}
                    ),
                }
            )
    return report
