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


INTERLEAVED = sorted((ROOT / "docs" / "benchmarks").glob("decode_interleaved_*.json"))


@pytest.mark.parametrize("path", INTERLEAVED, ids=lambda p: p.stem)
def test_a_published_interleaved_table_is_rendered_from_its_rounds(path):
    report = json.loads(path.read_text())
    assert _benchmark().render(report) + "\n" == path.with_suffix(".md").read_text()
    rounds = report["rounds"]
    assert rounds and all({"fused", "builder"} <= set(t) for t in rounds.values())
    # every way was called once per round, and the table's times are their medians
    for key, times in rounds.items():
        assert {len(t) for t in times.values()} == {report["interleaved_rounds"]}, key
        for run in report["runs"]:
            ordered = sorted(times[run["way"]])
            assert ordered[0] <= run["times"][key] <= ordered[-1]


def test_the_interleaved_benchmark_is_published():
    assert "decode_interleaved_SmolLM2-135M" in {p.stem for p in INTERLEAVED}


def test_an_interleaved_table_gives_the_quartiles_of_each_rounds_ratio():
    report = {
        "source": "m",
        "threads": 2,
        "machine": "x",
        "date": "d",
        "bandwidth": 1e10,
        "weight_bytes": 10**8,
        "kv_bytes_per_token": 1000,
        "shapes": [["decode", 1, 128]],
        "convert": {},
        "interleaved_rounds": 4,
        "rounds": {"decode b1 L128": {"fused": [1.0, 2.0, 3.0, 4.0], "builder": [2.0] * 4}},
        "runs": [
            {"way": "fused", "repeat": 0, "times": {"decode b1 L128": 2.5}, "peak_kb": 1},
            {"way": "builder", "repeat": 0, "times": {"decode b1 L128": 2.0}, "peak_kb": 1},
        ],
    }
    table = _benchmark().render(report)
    assert "interleaved: every way loaded at once, single calls alternating, 4 rounds" in table
    # ratios 0.5, 1, 1.5, 2: quartiles as statistics.quantiles computes them
    assert "in each round (lower quartile, median, upper quartile): decode b1 L128 " in table
    assert "decode b1 L128 0.625, 1.250, 1.875" in table
    assert "within each of" not in table  # no repeats to compare
