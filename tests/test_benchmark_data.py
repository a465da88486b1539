"""The published benchmark tables are what their committed measurements render to."""

import json
from pathlib import Path

import pytest
from support import load_script

ROOT = Path(__file__).resolve().parents[1]
PUBLISHED = sorted((ROOT / "docs" / "benchmarks").glob("decode_latency_*.json"))
CHECKS = sorted((ROOT / "docs" / "benchmarks").glob("decode_checks_*.json"))


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


@pytest.mark.parametrize("path", CHECKS, ids=lambda p: p.stem)
def test_a_published_check_table_is_rendered_from_its_measurements(path):
    report = json.loads(path.read_text())
    assert _benchmark().render(report) + "\n" == path.with_suffix(".md").read_text()
    checks = report["checks"]
    assert {"plain", "fused", "builder"} <= set(checks), checks
    # exportcheck's graphs take the cache as transformers lays out a left-padded row
    for way in ("plain", "fused"):
        assert checks[way]["unpadded"] < 1e-4 and checks[way]["padded_cache_positions"] < 1e-4
    # the model builder's takes each row's cached tokens first: it matches only so
    assert checks["builder"]["moved_mask_positions"] < 1e-4
    assert checks["builder"]["padded_mask_positions"] > 1e-2


def test_the_padded_check_is_published():
    assert "decode_checks_SmolLM2-135M" in {p.stem for p in CHECKS}
