"""What ``validate(..., save_dir=DIR)`` keeps, and how ``recheck(DIR)`` checks it again.

A saved validation is a folder:

* ``<component>.pt2``: each exported program (``torch.export.save``);
* ``<component>.onnx``: each ONNX model, when the validation converted one;
* ``inputs.pt``: for each component its input sets, their labels and eager's outputs on
  them (``torch.save``; caches are pickled objects, so load only folders you trust);
* ``report.json``: the validation report;
* ``README.md``: how to load and run them.

:func:`exportcheck.validation.recheck` loads the programs and ONNX models again, runs them on the saved input
sets and compares them with the saved eager outputs, without the model, its config or
an export: the check of an artifact shipped elsewhere, or of the same files under
another onnxruntime.
"""

from __future__ import annotations

import json
import os
from typing import Any

__all__ = ["INPUTS", "save_programs", "write_report"]

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
