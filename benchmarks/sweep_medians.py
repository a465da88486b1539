"""Per-model medians of a committed sweep: wall time and the time of each stage.

    python benchmarks/sweep_medians.py docs/status/text-generation/results.jsonl

Reads the rows a sweep wrote (each row records its wall time and every stage's
seconds); a stage of a multi-graph task (``decoder.export``) counts under its own name.
The medians are over the rows that ran the stage. Times come from sweeps that may have
shared the machine with other jobs: compare them with medians of the same file only.
"""

from __future__ import annotations

import collections
import json
import statistics
import sys


def medians(path: str) -> tuple[int, float, dict[str, float]]:
    with open(path, encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    per_stage: dict[str, list[float]] = collections.defaultdict(list)
    for row in rows:
        for stage in row["stages"]:
            if stage.get("seconds") is not None:
                per_stage[stage["stage"]].append(stage["seconds"])
    wall = statistics.median(row["wall_seconds"] for row in rows)
    return len(rows), wall, {k: statistics.median(v) for k, v in per_stage.items()}


def main(paths: list[str]) -> None:
    for path in paths:
        count, wall, stages = medians(path)
        print(f"{path}: {count} rows, median wall time per model {wall:.1f} s")
        for name, value in stages.items():
            print(f"  {name:28} median {value:6.2f} s")


if __name__ == "__main__":
    main(sys.argv[1:] or ["docs/status/text-generation/results.jsonl"])
