"""Several interleaved runs of ``decode_latency.py`` side by side: how far the fused /
builder ratio moves from one run to the next on this machine.

Each run (``decode_latency.py --interleave --out RUN.json``) gives, per shape, the median
of each round's fused / builder ratio; the table lists them run by run, then the
quartiles of every round of every run pooled. One interleaved run cancels what moves
within it (calls alternate, loads alternate with ``--blocks``); what still moves from one
run to the next shows here.

    for i in 1 2 3 4 5 6; do
        python benchmarks/decode_latency.py HuggingFaceTB/SmolLM2-135M --folder /tmp/smol \\
            --ways fused builder --interleave --runs 24 --blocks 4 --batch 1 --prefill \\
            --out runs/run_$i.json
    done
    python benchmarks/interleaved_summary.py runs/run_*.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import decode_latency  # the ratio of each round, shared


def round_ratios(report: dict, way: str, base: str) -> dict[str, list[float]]:
    """{shape key: [``way``'s time / ``base``'s, one per round]} of one interleaved run."""
    rounds = report.get("rounds")
    if not rounds:
        raise ValueError(
            f"{report.get('source', 'a run')} has no rounds: give runs that "
            "decode_latency.py measured with --interleave."
        )
    missing = [k for k, t in rounds.items() if way not in t or base not in t]
    if missing:
        raise ValueError(f"no {way} or {base} rounds for {', '.join(missing)}: list both --ways.")
    return {
        key: [a / b for a, b in zip(times[way], times[base], strict=True)]
        for key, times in rounds.items()
    }


def render(reports: list[dict], names: list[str], way: str = "fused", base: str = "builder"):
    """The markdown table: one row per run, then every round pooled."""
    if len({r["source"] for r in reports}) > 1:
        raise ValueError("the runs measured different models: give runs of one model.")
    ratios = [round_ratios(r, way, base) for r in reports]
    keys = list(ratios[0])
    if any(list(r) != keys for r in ratios):
        raise ValueError("the runs measured different shapes: give runs of the same command.")
    first = reports[0]
    title = decode_latency.TITLES
    lines = [
        f"{first['source']}: {title[way]} / {title[base]} over {len(reports)} interleaved "
        f"runs, {first['threads']} threads, {first['machine']}, "
        + ", ".join(sorted({r["date"] for r in reports})),
        "",
        "median of each round's ratio, run by run (rounds, loads, best bandwidth probe):",
        "",
        "| run | rounds | loads | GB/s | " + " | ".join(keys) + " |",
        "|" + "---|" * (4 + len(keys)),
    ]
    for name, report, ratio in zip(names, reports, ratios, strict=True):
        cells = [
            name,
            str(report["interleaved_rounds"]),
            str(len(report.get("load_orders") or [None])),
            f"{report['bandwidth'] / 1e9:.1f}",
            *(f"{statistics.median(ratio[k]):.3f}" for k in keys),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    medians = {k: [statistics.median(r[k]) for r in ratios] for k in keys}
    lines.append(
        "| lowest to highest run | | | | "
        + " | ".join(f"{min(m):.3f} to {max(m):.3f}" for m in medians.values())
        + " |"
    )
    pooled = {k: [x for r in ratios for x in r[k]] for k in keys}
    quartiles = {k: statistics.quantiles(v, n=4) for k, v in pooled.items()}
    lines.append(
        "| every round pooled: quartiles | | | | "
        + " | ".join(", ".join(f"{q:.3f}" for q in quartiles[k]) for k in keys)
        + " |"
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", help="JSON files decode_latency.py --interleave wrote")
    parser.add_argument("--way", default="fused")
    parser.add_argument("--base", default="builder")
    args = parser.parse_args()
    reports = []
    for path in args.runs:
        with open(path) as f:
            reports.append(json.load(f))
    names = [os.path.splitext(os.path.basename(p))[0] for p in args.runs]
    try:
        print(render(reports, names, args.way, args.base))
    except ValueError as e:
        parser.error(str(e))


if __name__ == "__main__":
    main()
