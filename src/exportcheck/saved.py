"""What ``validate(..., save_dir=DIR)`` keeps, and how ``recheck(DIR)`` checks it again.

A saved validation is a folder:

* ``<component>.pt2``: each exported program (``torch.export.save``);
* ``<component>.onnx``: each ONNX model, when the validation converted one;
* ``inputs.pt``: for each component its input sets, their labels and eager's outputs on
  them (``torch.save``; caches are pickled objects, so load only folders you trust);
* ``report.json``: the validation report;
* ``README.md``: how to load and run them.

:func:`recheck` loads the programs and ONNX models again, runs them on the saved input
sets and compares them with the saved eager outputs, without the model, its config or
an export: the check of an artifact shipped elsewhere, or of the same files under
another onnxruntime.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
import time
from collections.abc import Iterator
from typing import Any

__all__ = ["INPUTS", "recheck", "save_programs", "write_report"]

#: the file holding the input sets and eager's outputs
INPUTS = "inputs.pt"

_README = """# {source} ({task}), exported and checked by exportcheck

Files: {files}.

`inputs.pt` holds, per component, the input sets (the first is the one exported), their
labels and eager PyTorch's outputs on them. Caches are pickled objects: load the file only
if you trust where it comes from, and with the cache pytrees registered:

```python
import torch
from exportcheck import cache_pytrees

with cache_pytrees():
    saved = torch.load("inputs.pt", weights_only=False)
    component = saved["components"][0]  # {{"name", "labels", "input_sets", "expected"}}
    program = torch.export.load(component["name"] + ".pt2")
    outputs = program.module()(**component["input_sets"][1])
```

The ONNX models take the flattened inputs (`exportcheck.ort_feeds(session, feeds)` builds
them from one input set). To run every saved file again on every input set and compare
with eager's saved outputs: `exportcheck validate --from {folder}`.
"""


def save_programs(
    folder: str,
    report: Any,
    components: list[Any],
    expected: dict[str, list[Any]],
    programs: dict[str, Any],
) -> list[str]:
    """Write each component's exported program, the input sets with eager's outputs and a
    README into ``folder``; return the names of the files written."""
    import torch

    from .caches.pytrees import cache_pytrees

    os.makedirs(folder, exist_ok=True)
    written = []
    with cache_pytrees():
        for c in components:
            if c.name in programs:
                torch.export.save(programs[c.name], os.path.join(folder, f"{c.name}.pt2"))
                written.append(f"{c.name}.pt2")
        torch.save(
            {
                "source": report.source,
                "task": report.task,
                "atol": report.atol,
                "components": [
                    {
                        "name": c.name,
                        "labels": list(c.labels),
                        "input_sets": c.input_sets,
                        "expected": expected[c.name],
                    }
                    for c in components
                ],
            },
            os.path.join(folder, INPUTS),
        )
    written.append(INPUTS)
    onnx_files = sorted(f for f in os.listdir(folder) if f.endswith((".onnx", ".onnx.data")))
    files = [*written, *onnx_files, "report.json"]
    with open(os.path.join(folder, "README.md"), "w", encoding="utf-8") as f:
        f.write(
            _README.format(
                source=report.source,
                task=report.task,
                files=", ".join(f"`{name}`" for name in files),
                folder=folder,
            )
        )
    return files


def write_report(folder: str, report: Any) -> None:
    """``report.json``: the report of the validation whose artifacts ``folder`` holds."""
    with open(os.path.join(folder, "report.json"), "w", encoding="utf-8") as f:
        json.dump(report.to_dict(), f, indent=1, default=str)


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
    from .compare import max_diff
    from .runtimes import RUNTIMES
    from .validation import ValidationReport

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
