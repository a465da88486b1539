"""
Where the exporters stand: every architecture of transformers, swept
====================================================================

``exportcheck sweep`` builds every causal-LM architecture of the installed
transformers from a tiny config, exports it with ``torch.export``, converts it to
ONNX and compares both with eager PyTorch on six input sets. This recipe reads the
results committed with the documentation, plots the pass rate of each stage and the
conversion times, and checks that the file is consistent with its own verdicts.
"""

# %%
# The results file
# ----------------
#
# One JSON row per model type, written by the sweep as each model finished. The rerun
# command is ``exportcheck sweep --out docs/status/results.jsonl``.

from pathlib import Path

from exportcheck import read_results

try:
    here = Path(__file__).resolve().parent
except NameError:  # a notebook has no __file__: run it from the onnx_recipes folder
    here = Path.cwd()
results = here.parent / "docs" / "status" / "results.jsonl"
if not results.exists():
    raise FileNotFoundError(
        f"{results} is missing: this recipe reads the sweep results committed in the "
        "exportcheck repository; run it from a clone, or create the file with "
        "'exportcheck sweep --out docs/status/results.jsonl'."
    )
rows = read_results(str(results))
versions = rows[0]["versions"]
print(f"{len(rows)} model types, swept with " + ", ".join(f"{k} {v}" for k, v in versions.items()))

# %%
# Pass rate per stage
# -------------------
#
# A stage runs only if the ones before it passed; the eager consistency check is
# planned only for models whose input sets carry a cache (a decode step to compare with
# a full forward). The ONNX conversion starts from an ExportedProgram.

from exportcheck import summarize_results

summary = summarize_results(rows)
total = summary["total"]
for stage, passed in summary["per_stage"].items():
    print(f"{stage:13} {passed:4} / {total}  {100 * passed / total:5.1f} %")
for runtime, n in summary["green"].items():
    print(f"green on {runtime}: {n} ({100 * n / total:.1f} %)")
print(
    f"green on every runtime: {summary['all_green']} ({100 * summary['all_green'] / total:.1f} %)"
)

# %%
# A plot of the same counts, and of the time each model spent in ``torch.export`` and
# in the ONNX conversion (tiny models, one thread each).

import matplotlib.pyplot as plt

seconds = {
    r["source"]: {s["stage"]: s["seconds"] for s in r["stages"]}
    for r in rows
    if any(s["stage"] == "onnx" for s in r["stages"])
}
fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
stages = list(summary["per_stage"])
ax1.barh(stages[::-1], [summary["per_stage"][s] for s in stages[::-1]], color="#4c72b0")
ax1.set_xlabel(f"model types that passed (of {total})")
ax1.set_title("Pass count per stage")
export_s = sorted(v["export"] for v in seconds.values())
onnx_s = sorted(v["onnx"] for v in seconds.values())
ax2.plot(export_s, label="torch.export")
ax2.plot(onnx_s, label="ONNX conversion")
ax2.set_xlabel("model types, sorted")
ax2.set_ylabel("seconds")
ax2.set_title("Time per model type")
ax2.legend()
fig.tight_layout()
# sphinx_gallery_thumbnail_number = 1
print(
    f"median seconds: torch.export {export_s[len(export_s) // 2]:.1f}, "
    f"ONNX conversion {onnx_s[len(onnx_s) // 2]:.1f}"
)

# %%
# Why the others fail
# -------------------
#
# Each failure falls in a category derived from its first error; the table lists them
# with the model types.

from collections import defaultdict

from exportcheck import categorize

by_category = defaultdict(list)
for r in rows:
    category = categorize(r)
    if category is not None:
        by_category[category].append(r["source"])
for category, sources in sorted(by_category.items(), key=lambda kv: -len(kv[1])):
    print(f"{len(sources):3}  {category}: {', '.join(sorted(sources))}")

# %%
# The check
# ---------
#
# :func:`exportcheck.verdict` is the one definition of green, per runtime: every stage
# the row planned for that runtime ran and passed. The check recomputes it from the
# recorded differences: a runtime green on a row must have compared every input set
# within the tolerance, and a red row must say where it failed.

from exportcheck import verdict

inconsistent = []
for r in rows:
    for runtime, is_green in verdict(r).items():
        if not is_green:
            continue
        diffs = [run["abs"] for run in r["runs"] if run["runtime"] == runtime]
        if not (len(diffs) == len(r["model"]["input_sets"]) and max(diffs) <= r["atol"]):
            inconsistent.append((r["source"], runtime))
    if not r["ok"] and r.get("failed_stage") is None:
        inconsistent.append((r["source"], "no failed stage"))
assert not inconsistent, inconsistent
worst = max(max(run["abs"] for run in r["runs"]) for r in rows if r["ok"])
print(
    f"check passed: {summary['all_green']} rows green on every runtime, each compared on "
    f"every input set within 1e-4 (worst {worst:.2e}), every red row names its failing stage"
)

# %%
# The status page of the documentation renders the same file as a table, one row per
# model type, with the first error of every failure.
