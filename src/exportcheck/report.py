"""Sweep results -> the status page of the docs: tables (reST, Markdown) and plots."""

from __future__ import annotations

import collections
import os
import re
import shutil
import time
from typing import Any

from .compare import depth, green_everywhere, verdict
from .runtimes import RUNTIMES
from .sweep import read_results, upgrade_row

__all__ = ["categorize", "summarize_results", "task_summaries", "write_report", "write_status"]

# Titles of the stages every validation has; each runtime titles its own stages.
_SHARED_TITLES = {
    "build": "tiny model builds",
    "eager": "eager on every input set",
    "eager_consistent": "eager decode step equals a full forward",
    "export": "torch.export",
    "eager_generate": "eager greedy loop equals generate()",
    "process": "the validation process ended normally",
}


def stage_title(stage: str) -> str:
    """A readable title of a stage name (``ort_run`` -> ``onnxruntime correct on ...``)."""
    component, _, name = stage.rpartition(".")
    title = _SHARED_TITLES.get(name)
    runner = name[: -len("_generate")] if name.endswith("_generate") else None
    if title is None and runner is not None:
        rt = next((rt for rt in RUNTIMES.values() if rt.runner == runner), None)
        if rt is not None:
            title = f"{rt.title}: greedy generation equals eager"
    if title is None:
        title = next((t for rt in RUNTIMES.values() for n, t, _ in rt.stages if n == name), name)
    return f"{component}: {title}" if component else title


# (category, stage or None, pattern of "ErrorType: message"), first match wins.
_CATEGORIES: list[tuple[str, str | None, str]] = [
    ("process crashed, timed out or ran out of memory", "process", r".*"),
    ("no ONNX translation for an operator", None, r"No ONNX function found|DispatchError"),
    (
        "dimension specialized or constrained by the model code",
        "export",
        r"Constraints violated|specialized|Not all values of",
    ),
    (
        "data-dependent control flow or shape",
        "export",
        r"data.dependent|GuardOnDataDependentSymNode|unbacked|Could not guard",
    ),
    ("cache or input not flattenable", None, r"cache_pytrees|Cannot associate shape|pytree"),
    (
        "ExportedProgram rejects other shapes (guard)",
        "exported_run",
        r"Guard failed|guard|Expected input|_check_input_constraints",
    ),
    ("ExportedProgram differs from eager", "exported_run", r"differs from eager"),
    ("onnxruntime differs from eager", "ort_run", r"differs from eager"),
    (
        "onnxruntime cannot load or run the model",
        None,
        r"onnxruntime|ONNXRuntimeError|Fail|INVALID",
    ),
    (
        "eager decode step differs from a full forward (reference not trusted)",
        "eager_consistent",
        r".*",
    ),
    ("transformers' generate differs from the model's own decode steps", "eager_generate", r".*"),
    ("ExportedProgram generation differs from eager", "exported_generate", r".*"),
    ("onnxruntime generation differs from eager", "ort_generate", r".*"),
    ("tiny config does not build or run", "build", r".*"),
    ("eager forward fails on the input sets", "eager", r".*"),
    ("torch.export fails", "export", r".*"),
    ("ONNX conversion fails", "onnx", r".*"),
]


def categorize(row: dict[str, Any]) -> str | None:
    """The category of the first failure of a result row, None if the row passed.

    >>> categorize({"ok": False, "stages": [{"stage": "export", "ok": False,
    ...     "error_type": "UserError", "error": "Constraints violated (seq_length)!"}]})
    'dimension specialized or constrained by the model code'
    """
    if row.get("ok"):
        return None
    failed = next((s for s in row.get("stages", []) if not s["ok"]), None)
    if failed is None:
        return "unknown"
    text = f"{failed.get('error_type', '')}: {failed.get('error', '')}"
    for category, stage, pattern in _CATEGORIES:
        if (stage is None or stage == failed["stage"]) and re.search(pattern, text, re.IGNORECASE):
            return category
    return f"{failed['stage']} fails"


def _stage(row: dict[str, Any], name: str) -> dict[str, Any] | None:
    return next((s for s in row.get("stages", []) if s["stage"] == name), None)


def _failed(row: dict[str, Any], name: str) -> bool:
    st = _stage(row, name)
    return bool(st and not st["ok"])


def _passed(row: dict[str, Any], name: str) -> bool:
    st = _stage(row, name)
    return bool(st and st["ok"])


def _runtimes(rows: list[dict[str, Any]]) -> list[str]:
    """Every runtime the rows were validated on, in registration order."""
    seen = {r for row in rows for r in row.get("runtimes", [])}
    return [r for r in RUNTIMES if r in seen] + sorted(seen - set(RUNTIMES))


def _planned_stages(rows: list[dict[str, Any]]) -> list[str]:
    """Stage names in the order the rows planned them (the process stage of a crash last)."""
    names: dict[str, None] = {}
    for row in rows:
        for stage, _component, _runtime in row.get("plan", []):
            if stage != "process":
                names.setdefault(stage)
    return list(names)


def summarize_results(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Counts per stage and per verdict (:func:`exportcheck.verdict`), failure categories,
    measured sweep time."""
    latest: dict[str, dict[str, Any]] = {}
    for row in map(upgrade_row, rows):
        latest[row["source"]] = row  # a rerun replaces an earlier row
    rows = sorted(latest.values(), key=lambda r: r["source"])
    per_stage = collections.OrderedDict(
        (s, sum(_passed(r, s) for r in rows)) for s in _planned_stages(rows)
    )
    runtimes = _runtimes(rows)
    verdicts = [verdict(r) for r in rows]
    categories = collections.Counter(c for r in rows if (c := categorize(r)) is not None)
    failed_at = collections.Counter(r.get("failed_stage") or "none" for r in rows)
    runs = sweep_runs(rows)
    versions = next((r["versions"] for r in rows if r.get("versions")), {})
    return {
        "rows": rows,
        "total": len(rows),
        "runtimes": runtimes,
        # per runtime, the rows green on it; all_green: green on every runtime
        "green": {rt: sum(v.get(rt, False) for v in verdicts) for rt in runtimes},
        "all_green": sum(bool(v) and all(v.values()) for v in verdicts),
        # per column of compare.depth, the rows that have it; everywhere: green on every
        # runtime and every column
        # (only the columns that apply to the rows' task)
        "depth": {
            column: sum(depth(r).get(column, False) for r in rows)
            for column in _DEPTH_TITLES
            if any(column in depth(r) for r in rows)
        },
        "everywhere": sum(green_everywhere(r) for r in rows),
        "per_stage": per_stage,
        "categories": categories,
        "failed_at": failed_at,
        # wall time: the sum of the runs' (a resumed sweep or a rerun of a few rows
        # is a run of its own: the time between runs is not sweep time)
        "elapsed": sum(runs) if runs else None,
        "runs": runs,
        "workers": max((r.get("workers", 1) for r in rows), default=1),
        "cpus": max((r["cpus"] for r in rows if r.get("cpus")), default=None),
        "versions": versions,
    }


def sweep_runs(rows: list[dict[str, Any]], gap: float = 60.0) -> list[float]:
    """The wall time of each run that wrote ``rows``, in seconds: rows whose process
    started more than ``gap`` seconds after every earlier one finished begin a new run
    (a resumed sweep, a rerun of some rows), and each run is measured from its first
    start to its last finish."""
    spans = sorted(
        (r["started_at"], r["finished_at"])
        for r in rows
        if "started_at" in r and "finished_at" in r
    )
    runs: list[list[float]] = []
    for begin, end in spans:
        if runs and begin <= runs[-1][1] + gap:
            runs[-1][1] = max(runs[-1][1], end)
        else:
            runs.append([begin, end])
    return [end - begin for begin, end in runs]


def _fmt_diff(value: Any) -> str:
    return "" if value is None else f"{value:.1e}"


def _fmt_s(row: dict[str, Any], stage: str) -> str:
    st = _stage(row, stage)
    return "" if st is None else f"{st['seconds']:.1f}"


def _first_error(row: dict[str, Any]) -> str:
    failed = next((s for s in row.get("stages", []) if not s["ok"]), None)
    if failed is None:
        return ""
    text = f"{failed['stage']}: {failed.get('error_type', '')}: {failed.get('error', '')}"
    return text[:160]


def _convert_stage(runtime: str) -> str | None:
    rt = RUNTIMES.get(runtime)
    return next((n for n, _t, steps in rt.stages if "convert" in steps), None) if rt else None


def _runner(runtime: str) -> str:
    return RUNTIMES[runtime].runner if runtime in RUNTIMES else runtime


def _title(runtime: str) -> str:
    return RUNTIMES[runtime].title if runtime in RUNTIMES else runtime


def _header(summary: dict[str, Any]) -> list[str]:
    runtimes = summary["runtimes"]
    converts = [c for rt in runtimes if (c := _convert_stage(rt))]
    return [
        "model type",
        *(_title(rt) for rt in runtimes),
        *(f"max abs diff ({_title(rt)})" for rt in runtimes),
        "checked",
        "patches applied",
        "export s",
        *(f"{c} s" for c in converts),
        "failure category",
        "first error",
    ]


_DEPTH_TITLES = {
    "state": "decode step with the model's state (cache)",
    "distinct_shapes": "every input set a distinct shape (4 or more unseen)",
    "padded": "a padded batch among the input sets",
    "eager_consistent": "eager decode step equals a full forward (reference trusted)",
    "generation": "8 greedy tokens through every runtime equal eager generate()",
}
_DEPTH_SHORT = {
    "state": "state",
    "distinct_shapes": "distinct shapes",
    "padded": "padded",
    "eager_consistent": "eager consistent",
    "generation": "generation",
}


def _checked(row: dict[str, Any]) -> str:
    marks = depth(row)
    done = [_DEPTH_SHORT[k] for k, v in marks.items() if v]
    missing = [_DEPTH_SHORT[k] for k, v in marks.items() if not v]
    return ", ".join(done) + (f"; not: {', '.join(missing)}" if missing else "")


def _patches(row: dict[str, Any]) -> str:
    applied = row.get("patches_applied") or {}
    parts = []
    for runtime, names in applied.items():
        names = [n for n in names if n != "cache_pytrees"]
        if names:
            parts.append(f"{_title(runtime)}: {', '.join(names)}")
    return "; ".join(parts)


def _table_rows(summary: dict[str, Any]) -> list[list[str]]:
    runtimes = summary["runtimes"]
    converts = [c for rt in runtimes if (c := _convert_stage(rt))]
    out = []
    for row in summary["rows"]:
        verdicts = verdict(row)
        out.append(
            [
                row["source"],
                *(_verdict_label(verdicts.get(rt, False)) for rt in runtimes),
                *(_fmt_diff(row.get(f"worst_{_runner(rt)}_abs")) for rt in runtimes),
                _checked(row),
                _patches(row),
                _fmt_s(row, "export"),
                *(_fmt_s(row, c) for c in converts),
                categorize(row) or "",
                _first_error(row),
            ]
        )
    return out


def _note_rows(summary: dict[str, Any]) -> list[list[str]]:
    """Model types whose check differs from the usual one: their inputs (one new
    token, no cache, a drafter's step), narrowed or relaxed bounds, eager fixes."""
    out = []
    for row in summary["rows"]:
        notes = [*(row.get("model") or {}).get("notes", []), *row.get("notes", [])]
        if notes:
            out.append([row["source"], "; ".join(n[:500] for n in notes)])
    return out


def _rst_escape(text: str) -> str:
    """``text`` as plain reST: no roles, emphasis or references (a word ending in ``_``,
    as a truncated ``MAPPING_`` does, would be a link target)."""
    text = text.replace("\\", "\\\\").replace("`", "'").replace("*", "\\*").replace("|", "/")
    return re.sub(r"_(?=\W|$)", r"\\_", text)


class _Verdict(str):
    """A verdict cell, the word ``pass`` or ``fail``: reST renders it as a coloured label."""


def _verdict_label(green: bool) -> _Verdict:
    return _Verdict("pass" if green else "fail")


# Roles that render a verdict as <span class="verdict verdict-pass">pass</span> (HTML) and
# as the plain word elsewhere; docs/_static/exportcheck.css colours them.
_VERDICT_ROLES = [
    ".. role:: verdict-pass",
    "   :class: verdict verdict-pass",
    "",
    ".. role:: verdict-fail",
    "   :class: verdict verdict-fail",
    "",
]


def _rst_cell(cell: str) -> str:
    if isinstance(cell, _Verdict):
        return f":verdict-{cell}:`{cell}`"
    return _rst_escape(cell)


def _rst_table(header: list[str], rows: list[list[str]]) -> str:
    """A reST list-table; verdict cells become labels, spans of class ``verdict`` in HTML.

    >>> from docutils.core import publish_parts
    >>> rst = _rst_table(["model type", "onnxruntime"], [["llama", _verdict_label(False)]])
    >>> print(rst.splitlines()[-1])
         - :verdict-fail:`fail`
    >>> html = publish_parts(rst, writer="html5")["body"]
    >>> '<span class="verdict verdict-fail">fail</span>' in html
    True
    """
    labels = any(isinstance(cell, _Verdict) for cells in rows for cell in cells)
    lines = [*(_VERDICT_ROLES if labels else []), ".. list-table::", "   :header-rows: 1", ""]
    for i, cells in enumerate([header, *rows]):
        for j, cell in enumerate(cells):
            prefix = "   * - " if j == 0 else "     - "
            lines.append(prefix + (_rst_cell(cell) if i else cell))
    return "\n".join(lines)


def markdown_table(summary: dict[str, Any]) -> str:
    """The per-model table in Markdown."""
    header = _header(summary)
    rows = [header, ["---"] * len(header), *_table_rows(summary)]
    return "\n".join("| " + " | ".join(c.replace("|", "/") for c in r) + " |" for r in rows)


def _plots(summary: dict[str, Any], out_dir: str) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    written = []
    # Per stage: the model types that ran it and failed there (named when few), and
    # those that never reached it because an earlier shared stage failed.
    stages = list(summary["per_stage"])
    failed = {s: [r["source"] for r in summary["rows"] if _failed(r, s)] for s in stages}
    planned = {
        s: [r for r in summary["rows"] if any(p[0] == s for p in r.get("plan", []))] for s in stages
    }
    unreached = {s: sum(_stage(r, s) is None for r in planned[s]) for s in stages}
    fig, ax = plt.subplots(figsize=(9, 0.35 * len(stages) + 1.2))
    ys = range(len(stages))[::-1]
    ax.barh(ys, [len(failed[s]) for s in stages], color="#c44e52", label="failed at this stage")
    ax.barh(
        ys,
        [unreached[s] for s in stages],
        left=[len(failed[s]) for s in stages],
        color="#bbbbbb",
        label="not reached (an earlier stage failed)",
    )
    longest = max([len(failed[s]) + unreached[s] for s in stages] + [1])
    for y, s in zip(ys, stages, strict=True):
        names = failed[s]
        text = ", ".join(names[:4]) + (f" +{len(names) - 4}" if len(names) > 4 else "")
        ax.text(len(names) + unreached[s] + 0.2, y, f" {text}", va="center", fontsize=7)
    ax.set_yticks(list(ys), [stage_title(s) for s in stages], fontsize=8)
    ax.set_xlim(0, longest * 2.2)
    ax.set_xlabel(f"model types (of {summary['total']})")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title("Where models fail")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    path = os.path.join(out_dir, "stages.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    written.append(path)

    timed = [
        (r["source"], _stage(r, "export"), _stage(r, "onnx"))
        for r in summary["rows"]
        if _stage(r, "export") is not None
    ]
    timed.sort(key=lambda t: (t[2] or {"seconds": 0})["seconds"] + t[1]["seconds"])
    fig, ax = plt.subplots(figsize=(8, 3.5))
    xs = range(len(timed))
    ax.bar(xs, [t[1]["seconds"] for t in timed], label="torch.export", color="#4c72b0")
    ax.bar(
        xs,
        [(t[2] or {"seconds": 0})["seconds"] for t in timed],
        bottom=[t[1]["seconds"] for t in timed],
        label="ONNX conversion",
        color="#dd8452",
    )
    ax.set_xlabel("model types, sorted by total time")
    ax.set_ylabel("seconds")
    ax.set_xticks([])
    ax.set_title("Export and conversion time per model type (tiny configs, 1 thread)")
    ax.legend()
    fig.tight_layout()
    path = os.path.join(out_dir, "conversion_time.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    written.append(path)
    return written


def _intro(rows: list[dict[str, Any]]) -> str:
    """What the rows' task checks, from the task itself, and the tolerance."""
    from .tasks import TASKS

    names = sorted({r.get("task") or "text-generation" for r in rows})
    checks = " ".join(TASKS[n].status_intro for n in names if n in TASKS)
    return (
        f"{checks} A model is green when every stage passes and every max abs difference is "
        f"at most {rows[0].get('atol', 1e-4):g}."
    )


def write_report(results: str, out_dir: str, title: str | None = None) -> list[str]:
    """Render ``results`` (a sweep's JSONL) as ``out_dir/index.rst`` with plots.

    :return: the paths written
    """
    rows = read_results(results)
    if not rows:
        raise ValueError(f"write_report: {results} holds no result rows.")
    if title is None:
        title = f"Status: {rows[0].get('task') or 'text-generation'}"
    os.makedirs(out_dir, exist_ok=True)
    # The page links the results file: keep a copy next to it.
    local = os.path.join(out_dir, os.path.basename(results))
    if os.path.abspath(local) != os.path.abspath(results):
        shutil.copyfile(results, local)
    summary = summarize_results(rows)
    written = _plots(summary, out_dir)
    total = summary["total"]
    versions = ", ".join(f"{k} {v}" for k, v in summary["versions"].items())
    elapsed = summary["elapsed"]
    finished = [r["finished_at"] for r in rows if "finished_at" in r]
    when = time.strftime("%Y-%m-%d", time.gmtime(max(finished))) if finished else "an unknown date"
    lines = [
        title,
        "=" * len(title),
        "",
        _intro(rows),
        "",
        f"* Swept on {when} with {versions}.",
        f"* **{summary['all_green']} of {total}** model types are green on every runtime "
        f"({100 * summary['all_green'] / total:.1f} %); "
        + ", ".join(f"{_title(rt)}: {n}" for rt, n in summary["green"].items())
        + ".",
    ]
    if elapsed is not None:
        lines.append(
            f"* The sweep took {elapsed / 60:.1f} minutes with {summary['workers']} worker(s)"
            + (f" on {summary['cpus']} CPU cores" if summary["cpus"] else "")
            + (
                " (measured from the first start to the last finish)."
                if len(summary["runs"]) == 1
                else f" in {len(summary['runs'])} runs ("
                + " + ".join(f"{run / 60:.1f}" for run in summary["runs"])
                + " minutes, each measured from its first start to its last finish)."
            )
        )
    lines.append(
        f"* Results file: :download:`{os.path.basename(results)} <{os.path.basename(results)}>`."
    )
    audit = os.path.join(os.path.dirname(results), "sensitivity.jsonl")
    if os.path.exists(audit):
        from .sensitivity import summary as audit_summary

        if os.path.abspath(os.path.dirname(audit)) != os.path.abspath(out_dir):
            shutil.copyfile(audit, os.path.join(out_dir, "sensitivity.jsonl"))
        lines.append(
            "* What the checks can see (``python -m exportcheck.sensitivity``: how far each "
            "graph's main output moves when one primary input of the green types changes): "
            f"{audit_summary(audit)}. File: :download:`sensitivity.jsonl <sensitivity.jsonl>`."
        )
    lines += [
        "",
        "Stages",
        "------",
        "",
        _rst_table(
            ["stage", "model types that passed it"],
            [[stage_title(s), str(n)] for s, n in summary["per_stage"].items()],
        ),
        "",
        ".. image:: stages.png",
        "",
        "What was checked",
        "----------------",
        "",
        "A green verdict counts only what ran. These columns say how deep each model was "
        "checked; a model is *green everywhere* when it is green on every runtime and has "
        "every column.",
        "",
        _rst_table(
            ["column", "model types"],
            [[_DEPTH_TITLES[k], str(n)] for k, n in summary["depth"].items()]
            + [["green on every runtime and every column", str(summary["everywhere"])]],
        ),
        "",
        "Failures by category",
        "--------------------",
        "",
        _rst_table(
            ["category", "count"],
            [[c, str(n)] for c, n in summary["categories"].most_common()] or [["none", "0"]],
        ),
        "",
        "Per model type",
        "--------------",
        "",
        _rst_table(_header(summary), _table_rows(summary)),
        "",
        "Time",
        "----",
        "",
        ".. image:: conversion_time.png",
        "",
    ]
    from .peer import PEER_RESULTS

    for name, section in ((FUSED_RESULTS, _fused_lines), (PEER_RESULTS, _peer_lines)):
        # a side results file beside the task's: copied beside the page, and a section
        side = os.path.join(os.path.dirname(os.path.abspath(results)), name)
        if os.path.isfile(side) and read_results(side):
            local = os.path.join(out_dir, name)
            if os.path.abspath(local) != os.path.abspath(side):
                shutil.copyfile(side, local)
            lines += section(side, rows)
    notes = _note_rows(summary)
    if notes:
        lines += [
            "Notes",
            "-----",
            "",
            "How the check of these model types differs from the usual decode step "
            "(inputs), and what export or validate changed on the way (bounds, eager "
            "reference).",
            "",
            _rst_table(["model type", "notes"], notes),
            "",
        ]
    page = os.path.join(out_dir, "index.rst")
    with open(page, "w", encoding="utf-8") as f:
        f.write("\n".join(lines))
    written.append(page)
    return written


#: the results file of ``exportcheck sweep --exporter fused`` beside a task's results.jsonl
FUSED_RESULTS = "fused.jsonl"


def fused_summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """What a sweep of the graphs fused for onnxruntime (``--exporter fused``) found: per
    model type, the fusions applied and whether the fused graph stayed correct (green on
    the ``onnx_ort`` runtime: every input set and the generation loop).

    ``fuse_and_correct`` counts the types with one fusion or more whose fused graph is
    green; ``unfused_correct`` the green ones no fusion applied to; ``failed`` the rest.
    """
    latest: dict[str, dict[str, Any]] = {}
    for row in map(upgrade_row, rows):
        latest[row["source"]] = row
    types = []
    for source, row in sorted(latest.items()):
        fusions: collections.Counter = collections.Counter()
        for key, details in (row.get("artifacts") or {}).items():
            if key.endswith("/onnx_ort"):
                fusions.update((details or {}).get("fusions") or {})
        correct = bool(verdict(row).get("onnx_ort", False))
        error = "" if correct else _first_error(row)
        types.append(
            {"source": source, "fusions": dict(fusions), "correct": correct, "error": error}
        )
    kinds = collections.Counter(k for t in types if t["correct"] for k in t["fusions"])
    return {
        "types": types,
        "total": len(types),
        "fuse_and_correct": sum(bool(t["fusions"]) and t["correct"] for t in types),
        "unfused_correct": sum(not t["fusions"] and t["correct"] for t in types),
        "failed": sum(not t["correct"] for t in types),
        "kinds": kinds,
    }


def _peer_lines(path: str, plain_rows: list[dict[str, Any]]) -> list[str]:
    """The task page's section on transformers' own exporters (``exportcheck peer``, see
    :mod:`exportcheck.peer`), beside exportcheck's verdict of each model type."""
    rows = [r for r in read_results(path) if r.get("stage") != "exportcheck_build"]
    green = {r["source"]: bool(r.get("ok")) for r in plain_rows}
    rows.sort(key=lambda r: (not green.get(r["source"]), r["source"]))
    with_vision = [
        r for r in rows if any("encoder" in c for c in r.get("generation_components") or ())
    ]
    # generate computed the features first: the prefill forward took them, not the images
    precomputed = [
        r
        for r in rows
        if r not in with_vision and "mm_encoder_outputs" in r.get("prefill_inputs", ())
    ]
    exported = [r for r in rows if r.get("stage") not in ("decompose", "export")]
    matched = [r for r in rows if r.get("ok")]
    silent = [
        r
        for r in rows
        if any(not s["ok"] and "abs" in s and "error" not in s for s in r.get("sets", ()))
    ]
    version = rows[0]["peer"] if rows else "transformers"

    def sets(r: dict[str, Any]) -> str:
        done = r.get("sets") or []
        return f"{sum(s['ok'] for s in done)} of {len(done)}" if done else ""

    def failure(r: dict[str, Any]) -> str:
        if r.get("ok"):
            return ""
        return f"{r['stage']}: {r['error']}"[:160]

    table = [
        [
            r["source"],
            _verdict_label(green.get(r["source"], False)),
            ", ".join(r.get("generation_components") or ["(failed)"]),
            r.get("image_encoder", ""),
            sets(r),
            _verdict_label(bool(r.get("ok"))),
            failure(r),
        ]
        for r in rows
    ]
    return [
        "Side by side: transformers.exporters",
        "------------------------------------",
        "",
        f"The same tiny models through {version} (``exportcheck peer``): its "
        "``decompose_for_generation`` on the generation prompt checked here, then the "
        "vision encoder as its ``decompose_multimodal`` captures it from one forward, "
        "exported with ``OnnxConfig(dynamic=True)`` and run in onnxruntime on the image "
        "sets of exportcheck's vision encoder whose shapes differ from the prompt's, "
        f"against the eager module (max abs diff {1e-4:g}). Of {len(rows)} model types "
        "exportcheck builds:",
        "",
        f"* ``decompose_for_generation`` returns a vision component for "
        f"**{len(with_vision)}**"
        + (
            f"; for {len(precomputed)} others, ``generate`` computed the image features "
            "before the prefill forward, which took them as ``mm_encoder_outputs``, so the "
            "capture never saw the vision encoder called;"
            if precomputed
            else ";"
        ),
        f"* ``OnnxExporter`` exports the vision encoder of **{len(exported)}**;",
        f"* that graph runs and matches eager on every unseen set for **{len(matched)}**; "
        f"for {len(silent)} it runs and returns other values on some set "
        "(a wrong answer with no error).",
        f"* Results file: :download:`{os.path.basename(path)} <{os.path.basename(path)}>`.",
        *(
            [
                "* Given with the patches that correct eager transformers, as exportcheck's "
                "eager reference is: "
                + ", ".join(f"{r['source']} ({', '.join(r['eager_fixes'])})" for r in fixed)
                + "."
            ]
            if (fixed := [r for r in rows if r.get("eager_fixes")])
            else []
        ),
        "",
        _rst_table(
            [
                "model type",
                "exportcheck",
                "decompose_for_generation",
                "vision encoder",
                "unseen sets matched",
                "transformers.exporters",
                "first failure",
            ],
            table,
        ),
        "",
    ]


def _fused_lines(path: str, plain_rows: list[dict[str, Any]]) -> list[str]:
    """The task page's section on the fused graphs of ``path``; ``plain_rows``, the task's
    sweep, tell the failures the fusions cause from those the plain graph has too."""
    summary = fused_summary(read_results(path))
    total = summary["total"]
    failed = [t for t in summary["types"] if not t["correct"]]
    plain = {}
    for row in map(upgrade_row, plain_rows):
        plain[row["source"]] = bool(verdict(row).get("onnx", False))
    broken = [t["source"] for t in failed if plain.get(t["source"])]
    unfused = [t["source"] for t in summary["types"] if t["correct"] and not t["fusions"]]
    lines = [
        "Fused for onnxruntime",
        "---------------------",
        "",
        "The ONNX conversion rewritten with onnxruntime's fused operators "
        "(``exportcheck sweep --exporter fused``; attention over the cache as "
        "``GroupQueryAttention`` with the graph's mask, other attention as "
        "``MultiHeadAttention``, "
        "skip and RMS normalizations, ...) and checked like the plain graph: every input "
        "set against eager, and the generation loop.",
        "",
        f"* **{summary['fuse_and_correct']} of {total}** model types fuse (one fusion or "
        f"more) and stay correct ({100 * summary['fuse_and_correct'] / total:.1f} %).",
        f"* {summary['unfused_correct']} "
        f"{'stays' if summary['unfused_correct'] == 1 else 'stay'} correct with no fusion applied"
        + (f": {', '.join(unfused)}." if unfused else "."),
        f"* {summary['failed']} are not green; "
        + (
            f"{len(broken)} of them {'is' if len(broken) == 1 else 'are'} green as a plain "
            f"ONNX graph, so the fusions broke {'it' if len(broken) == 1 else 'them'}: "
            f"{', '.join(broken)}."
            if broken
            else "none of them is green as a plain ONNX graph either."
        ),
        f"* Results file: :download:`{os.path.basename(path)} <{os.path.basename(path)}>`.",
        "",
        _rst_table(
            ["fusion", "model types where it applied and the graph stayed correct"],
            [[k, str(n)] for k, n in summary["kinds"].most_common()] or [["none", "0"]],
        ),
        "",
    ]
    if failed:
        lines += [
            _rst_table(
                ["model type", "fusions applied", "first error"],
                [
                    [
                        t["source"],
                        ", ".join(f"{k} {v}" for k, v in t["fusions"].items()),
                        t["error"],
                    ]
                    for t in failed
                ],
            ),
            "",
        ]
    return lines


def verdict_changes(old: list[dict[str, Any]], new: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Model types whose verdict differs between two sweeps, per runtime.

    :return: one dict per (source, task) that changed, appeared or disappeared:
        ``source``, ``task``, ``old`` and ``new`` (``{runtime: green}``, or None when
        the sweep has no row for it), and ``first_error`` of the new row

    >>> ok = {"source": "a", "runtimes": ["onnx"], "plan": [["build", None, None]],
    ...       "stages": [{"stage": "build", "ok": True}]}
    >>> bad = dict(ok, stages=[{"stage": "build", "ok": False}])
    >>> [(c["source"], c["old"], c["new"]) for c in verdict_changes([ok], [bad])]
    [('a', {'onnx': True}, {'onnx': False})]
    """

    def latest(rows: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
        out = {}
        for row in rows:  # a rerun replaces an earlier row
            out[(row["source"], row.get("task") or "text-generation")] = row
        return out

    before, after = latest(old), latest(new)
    changes = []
    for key in sorted(set(before) | set(after)):
        a = verdict(before[key]) if key in before else None
        b = verdict(after[key]) if key in after else None
        if a != b:
            changes.append(
                {
                    "source": key[0],
                    "task": key[1],
                    "old": a,
                    "new": b,
                    "first_error": _first_error(after[key]) if key in after else "",
                }
            )
    return changes


def _task_folders(status_dir: str) -> list[tuple[str, str]]:
    """(task, results file) of every ``<task>/results.jsonl`` under ``status_dir``, the
    default task first (:attr:`exportcheck.tasks.Task.rank`)."""
    from .tasks import TASKS

    found = [
        (name, os.path.join(status_dir, name, "results.jsonl"))
        for name in sorted(os.listdir(status_dir))
        if os.path.isfile(os.path.join(status_dir, name, "results.jsonl"))
    ]
    return sorted(found, key=lambda f: (TASKS[f[0]].rank if f[0] in TASKS else 1000, f[0]))


def task_summaries(status_dir: str) -> list[dict[str, Any]]:
    """One line per task swept under ``status_dir``: its mapping, model types, how many
    are green on every runtime and on every column, the columns that apply, sweep time."""
    from .tasks import TASKS

    out = []
    for name, path in _task_folders(status_dir):
        summary = summarize_results(read_results(path))
        task = TASKS.get(name)
        out.append(
            {
                "task": name,
                "mapping": task.mapping if task else "",
                "types": len(task.model_types()) if task else summary["total"],
                "swept": summary["total"],
                "green": summary["all_green"],
                "everywhere": summary["everywhere"],
                "columns": list(summary["depth"]),
                "minutes": None if summary["elapsed"] is None else summary["elapsed"] / 60,
                "fused": _fused_count(path),
            }
        )
    return out


def _fused_count(results: str) -> tuple[int, int] | None:
    """(fuse and stay correct, swept) of the fused sweep beside ``results``, if any."""
    fused = os.path.join(os.path.dirname(os.path.abspath(results)), FUSED_RESULTS)
    rows = read_results(fused) if os.path.isfile(fused) else []
    if not rows:
        return None
    summary = fused_summary(rows)
    return summary["fuse_and_correct"], summary["total"]


def summaries_markdown(summaries: list[dict[str, Any]]) -> str:
    """The per-task table of :func:`task_summaries` in Markdown (the README's)."""
    lines = [
        "| task | model types | green on both runtimes | green on every column | sweep |",
        "| --- | --- | --- | --- | --- |",
    ]
    for t in summaries:
        lines.append(
            f"| {t['task']} | {t['swept']} | {t['green']} ({100 * t['green'] / t['swept']:.1f} %)"
            f" | {t['everywhere']} ({100 * t['everywhere'] / t['swept']:.1f} %) | "
            + ("" if t["minutes"] is None else f"{t['minutes']:.1f} min")
            + " |"
        )
    fused = [t for t in summaries if t.get("fused")]
    if fused:
        lines.append("")
        lines += [
            f"Fused for onnxruntime ({t['task']}): {t['fused'][0]} of {t['fused'][1]} model "
            "types fuse and stay correct."
            for t in fused
        ]
    return "\n".join(lines)


def write_status(status_dir: str) -> list[str]:
    """Render every ``<task>/results.jsonl`` under ``status_dir`` as its task's page,
    and ``status_dir/index.rst``: the tasks side by side, with a plot.

    :return: the paths written
    """
    folders = _task_folders(status_dir)
    if not folders:
        raise ValueError(
            f"write_status: {status_dir} has no <task>/results.jsonl; run "
            f"'exportcheck sweep --task all --out {status_dir}' first."
        )
    written = []
    for _name, path in folders:
        written += write_report(path, os.path.dirname(path))
    summaries = task_summaries(status_dir)
    written.append(_tasks_plot(summaries, status_dir))
    rows = [
        [
            f":doc:`{t['task']} <{t['task']}/index>`",
            f"``{t['mapping']}``",
            str(t["swept"]),
            f"{t['green']} ({100 * t['green'] / t['swept']:.1f} %)",
            f"{t['everywhere']} ({100 * t['everywhere'] / t['swept']:.1f} %)",
            ", ".join(_DEPTH_SHORT[c] for c in t["columns"]),
            "" if t["minutes"] is None else f"{t['minutes']:.1f}",
        ]
        for t in summaries
    ]
    lines = [
        "Exporter status",
        "===============",
        "",
        "Every model type of the installed transformers, for each task exportcheck "
        "supports: built untrained from a tiny config, exported with ``torch.export``, "
        "converted to ONNX and checked in both runtimes against eager PyTorch on input "
        "sets the export did not see. *Green everywhere* adds every column that applies "
        "to the task (a decode step with the model's state, distinct shapes, padded "
        "batches, eager consistent, greedy generation equal to ``generate``). Each task "
        "has a page with every model type, its first error and its notes.",
        "",
        _rst_table(
            [
                "task",
                "transformers mapping",
                "model types",
                "green on every runtime",
                "green everywhere",
                "columns checked",
                "sweep minutes",
            ],
            rows,
        ),
        "",
        ".. image:: tasks.png",
        "",
        *(
            f"* Fused for onnxruntime, {t['task']}: **{t['fused'][0]} of {t['fused'][1]}** "
            f"model types fuse and stay correct (:doc:`details <{t['task']}/index>`)."
            for t in summaries
            if t.get("fused")
        ),
        "",
        ".. toctree::",
        "   :maxdepth: 1",
        "",
        *(f"   {t['task']}/index" for t in summaries),
        "",
    ]
    index = os.path.join(status_dir, "index.rst")
    with open(index, "w", encoding="utf-8") as f:
        f.write("\n".join(lines))
    written.append(index)
    return written


def _tasks_plot(summaries: list[dict[str, Any]], out_dir: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 0.5 * len(summaries) + 1.6))
    ys = list(range(len(summaries)))[::-1]
    share = [lambda t, k=k: 100 * t[k] / t["swept"] for k in ("everywhere", "green")]
    everywhere = [share[0](t) for t in summaries]
    runtimes_only = [share[1](t) - share[0](t) for t in summaries]
    red = [100 - share[1](t) for t in summaries]
    ax.barh(ys, everywhere, color="#55a868", label="green everywhere")
    ax.barh(
        ys,
        runtimes_only,
        left=everywhere,
        color="#a1d99b",
        label="green on both runtimes, a column missing",
    )
    left = [a + b for a, b in zip(everywhere, runtimes_only, strict=True)]
    ax.barh(ys, red, left=left, color="#c44e52", label="red")
    ax.set_yticks(ys, [f"{t['task']} ({t['swept']})" for t in summaries], fontsize=9)
    ax.set_xlim(0, 100)
    ax.set_xlabel("% of the task's model types")
    ax.set_title("Model types green per task")
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.3), ncol=3, frameon=False)
    fig.tight_layout()
    path = os.path.join(out_dir, "tasks.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
