"""The published benchmark tables are what their committed measurements render to."""

import json
from pathlib import Path

import pytest
from support import load_script

ROOT = Path(__file__).resolve().parents[1]
PUBLISHED = sorted((ROOT / "docs" / "benchmarks").glob("decode_latency_*.json"))


def _benchmark():
    return load_script(ROOT / "benchmarks" / "decode_latency.py")


@pytest.mark.parametrize("path", PUBLISHED, ids=lambda p: p.stem)
def test_a_published_table_is_rendered_from_its_measurements(path):
    report = json.loads(path.read_text())
    table = path.with_suffix(".md").read_text()
    assert _benchmark().render(report) + "\n" == table
    # every way was checked against eager before it was timed
    ways = {r["way"] for r in report["runs"]}
    assert {"eager", "fused", "builder"} <= ways, ways
    assert path.with_suffix(".png").exists()


def test_the_decode_benchmark_is_published():
    names = {p.stem for p in PUBLISHED}
    assert "decode_latency_SmolLM2-135M" in names, names
