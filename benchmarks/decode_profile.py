"""Where one decode step spends its time, operator type by operator type, in each ONNX
graph that ``decode_latency.py`` converted.

Runs on a folder ``decode_latency.py --folder F`` filled (``--convert-only`` is enough):
each way's graph is loaded with onnxruntime's profiler on, called ``--warmup`` times, then
``--runs`` times on one decode step (batch 1, ``--cache`` cached tokens, the same random
inputs for every way); the table gives, per operator type, the kernel time per step (the
median over the profiled steps), the number of nodes run per step, and the step's whole
time as the profiler saw it. Every way runs in this one process, one after the other,
with the same thread count.

    python benchmarks/decode_latency.py HuggingFaceTB/SmolLM2-135M --folder /tmp/smol \\
        --ways plain fused builder --convert-only
    python benchmarks/decode_profile.py /tmp/smol --cache 2048
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import decode_latency  # the folder's inputs and ways, shared


def profile(way: str, folder: str, cache: int, threads: int, warmup: int, runs: int) -> dict:
    """Per operator type: the kernel microseconds and the node count of one step."""
    import onnxruntime

    runner = decode_latency._Runner(way, folder, threads)
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    options.enable_profiling = True
    options.profile_file_prefix = os.path.join(folder, f"profile_{way}")
    runner.session = onnxruntime.InferenceSession(
        runner.session._model_path, options, providers=["CPUExecutionProvider"]
    )
    case = decode_latency._case(decode_latency._config(folder), 1, cache, 1, seed=2)
    feeds = runner.prepared(case)
    for _ in range(warmup + runs):
        runner.call(feeds)
    path = runner.session.end_profiling()
    with open(path) as f:
        events = json.load(f)
    os.remove(path)
    steps = [e for e in events if e.get("name") == "model_run"][warmup:]
    per_step: list[collections.Counter] = []
    counts: collections.Counter = collections.Counter()
    for step in steps:
        begin, end = step["ts"], step["ts"] + step["dur"]
        kernels = collections.Counter()
        for e in events:
            kernel = e.get("cat") == "Node" and e["name"].endswith("_kernel_time")
            if kernel and begin <= e["ts"] <= end:
                kernels[e["args"]["op_name"]] += e["dur"]
                if step is steps[0]:
                    counts[e["args"]["op_name"]] += 1
        per_step.append(kernels)
    ops = {op for kernels in per_step for op in kernels}
    return {
        "step_us": statistics.median(s["dur"] for s in steps),
        "ops": {
            op: {"us": statistics.median(k.get(op, 0) for k in per_step), "nodes": counts[op]}
            for op in ops
        },
    }


def render(results: dict, top: int) -> str:
    ways = list(results)
    totals = collections.Counter()
    for r in results.values():
        for op, v in r["ops"].items():
            totals[op] += v["us"]
    head = ["operator"] + [f"{decode_latency.TITLES[w]} us (nodes)" for w in ways]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    shown = [op for op, _ in totals.most_common(top)]
    for op in shown:
        cells = []
        for w in ways:
            v = results[w]["ops"].get(op)
            cells.append(f"{v['us']:.0f} ({v['nodes']})" if v else "")
        lines.append(f"| {op} | " + " | ".join(cells) + " |")
    others = []
    for w in ways:
        rest = [v for op, v in results[w]["ops"].items() if op not in shown]
        others.append(f"{sum(v['us'] for v in rest):.0f} ({sum(v['nodes'] for v in rest)})")
    lines.append("| other operators | " + " | ".join(others) + " |")
    kernels = [sum(v["us"] for v in results[w]["ops"].values()) for w in ways]
    lines.append("| all kernels | " + " | ".join(f"{k:.0f}" for k in kernels) + " |")
    lines.append(
        "| whole step | " + " | ".join(f"{results[w]['step_us']:.0f}" for w in ways) + " |"
    )
    return "\n".join(lines)


def plot(results: dict, top: int, title: str, path: str) -> None:
    """One horizontal bar per way, split by operator type (the ``top`` largest, then the
    rest), in ms per step; the step's whole time as a black tick."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    totals: collections.Counter = collections.Counter()
    for r in results.values():
        for op, v in r["ops"].items():
            totals[op] += v["us"]
    shown = [op for op, _ in totals.most_common(top)]
    ways = list(results)
    fig, ax = plt.subplots(figsize=(9, 1.2 + 0.7 * len(ways)))
    left = [0.0] * len(ways)
    for op in [*shown, "other operators"]:
        widths = []
        for w in ways:
            ops = results[w]["ops"]
            if op in shown:
                widths.append(ops.get(op, {"us": 0})["us"] / 1e3)
            else:
                widths.append(sum(v["us"] for o, v in ops.items() if o not in shown) / 1e3)
        ax.barh(range(len(ways)), widths, left=left, label=op)
        left = [a + b for a, b in zip(left, widths, strict=True)]
    for i, w in enumerate(ways):
        ax.vlines(results[w]["step_us"] / 1e3, i - 0.4, i + 0.4, colors="black", linewidth=2)
    ax.set_yticks(range(len(ways)), [decode_latency.TITLES[w] for w in ways])
    ax.invert_yaxis()
    ax.set_xlabel("ms per decode step (black: the whole step)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, ncol=3, loc="upper center", bbox_to_anchor=(0.5, -0.35))
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", help="a folder decode_latency.py converted (--folder)")
    parser.add_argument("--ways", nargs="+", default=["plain", "fused", "builder"])
    parser.add_argument("--cache", type=int, default=2048, help="cached tokens")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--top", type=int, default=8, help="operator types shown")
    parser.add_argument("--plot", help="also draw the table as stacked bars (PNG) here")
    parser.add_argument("--name", help="the model's name in the title (the folder's)")
    args = parser.parse_args()
    for way in args.ways:
        if way not in ("plain", "fused", "builder", "hf"):
            parser.error(f"{way!r} is not an ONNX way of decode_latency.py")
        if not os.path.isdir(os.path.join(args.folder, way)):
            parser.error(
                f"{args.folder} has no {way}/ conversion: run decode_latency.py with "
                f"--folder {args.folder} --ways {' '.join(args.ways)} --convert-only first"
            )
    results = {
        w: profile(w, args.folder, args.cache, args.threads, args.warmup, args.runs)
        for w in args.ways
    }
    import datetime
    import platform

    name = args.name or os.path.basename(os.path.abspath(args.folder))
    title = (
        f"{name}: one decode step, batch 1, {args.cache} cached tokens, float32\n"
        f"{args.threads} threads, median of {args.runs} profiled steps; "
        f"{platform.machine()}, {os.cpu_count()} cores, {datetime.date.today()}"
    )
    print(title + "\n")
    print(render(results, args.top))
    if args.plot:
        plot(results, args.top, title, args.plot)


if __name__ == "__main__":
    main()
