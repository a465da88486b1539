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


def _interleaved_report(fused: list[float], **more) -> dict:
    """A synthetic interleaved run: one shape, four rounds, the builder at 2 s a call."""
    return {
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
        "rounds": {"decode b1 L128": {"fused": fused, "builder": [2.0] * 4}},
        "runs": [
            {"way": w, "repeat": 0, "times": {"decode b1 L128": 2.0}, "peak_kb": 1}
            for w in ("fused", "builder")
        ],
        **more,
    }


def test_an_interleaved_table_gives_the_quartiles_of_each_rounds_ratio():
    report = _interleaved_report([1.0, 2.0, 3.0, 4.0])
    table = _benchmark().render(report)
    assert "interleaved: every way loaded at once, single calls alternating, 4 rounds" in table
    # ratios 0.5, 1, 1.5, 2: quartiles as statistics.quantiles computes them
    assert "in each round (lower quartile, median, upper quartile): decode b1 L128 " in table
    assert "decode b1 L128 0.625, 1.250, 1.875" in table
    assert "within each of" not in table  # no repeats to compare


def test_the_loading_order_alternates_so_no_way_is_always_loaded_first():
    benchmark = _benchmark()
    ways = ["eager", "plain", "fused", "hf", "builder"]
    assert benchmark.load_orders(ways, 1) == [ways]
    orders = benchmark.load_orders(ways, 4)
    assert orders[1] == orders[3] == ways[::-1] and orders[2] == ways
    for blocks in (2, 4):  # an even number of loads: every way's mean place is the same
        places = {w: sum(o.index(w) for o in benchmark.load_orders(ways, blocks)) for w in ways}
        assert len(set(places.values())) == 1, places
    assert benchmark.block_rounds(20, 2) == [10, 10]
    assert benchmark.block_rounds(5, 2) == [3, 2]
    assert sum(benchmark.block_rounds(7, 3)) == 7


@pytest.mark.parametrize("path", INTERLEAVED, ids=lambda p: p.stem)
def test_a_published_interleaved_run_loaded_its_ways_in_both_orders(path):
    report = json.loads(path.read_text())
    orders = report["load_orders"]
    assert len(orders) % 2 == 0 and len(orders) == report["blocks"]
    assert sum(report["block_rounds"]) == report["interleaved_rounds"]
    ways = orders[0]
    places = {w: sum(o.index(w) for o in orders) for w in ways}
    assert len(set(places.values())) == 1, places


def test_an_interleaved_table_gives_each_loads_median_ratio():
    report = _interleaved_report(
        [3.0, 3.0, 1.0, 1.0],
        blocks=2,
        load_orders=[["fused", "builder"], ["builder", "fused"]],
        block_rounds=[2, 2],
    )
    table = _benchmark().render(report)
    assert "loaded (fused, builder) then (builder, fused)" in table
    # the first load's rounds are 3 / 2, the second's 1 / 2
    assert "median round of each load: decode b1 L128 1.500, 0.500" in table


def test_more_loads_than_rounds_is_refused():
    import subprocess
    import sys

    script = ROOT / "benchmarks" / "decode_latency.py"
    cmd = [sys.executable, str(script), "m", "--interleave", "--runs", "2", "--blocks", "3"]
    done = subprocess.run(cmd, capture_output=True, text=True)
    assert done.returncode == 2
    assert "--blocks 3 with --runs 2" in done.stderr and "between 1 and --runs" in done.stderr


def _summary():
    return load_script(ROOT / "benchmarks" / "interleaved_summary.py")


def test_a_summary_of_runs_gives_each_runs_median_and_every_round_pooled():
    runs = [
        _interleaved_report([2.0, 2.0, 2.0, 4.0], load_orders=[["fused", "builder"]] * 2),
        _interleaved_report([1.0, 1.0, 3.0, 3.0], load_orders=[["fused", "builder"]] * 2),
    ]
    table = _summary().render(runs, ["a", "b"])
    # ratios 1, 1, 1, 2 then 0.5, 0.5, 1.5, 1.5: medians 1 and 1
    assert "| a | 4 | 2 | 10.0 | 1.000 |" in table
    assert "| b | 4 | 2 | 10.0 | 1.000 |" in table
    assert "| lowest to highest run | | | | 1.000 to 1.000 |" in table
    # the eight rounds pooled: 0.5, 0.5, 1, 1, 1, 1.5, 1.5, 2
    assert "| every round pooled: quartiles | | | | 0.625, 1.000, 1.500 |" in table


def test_a_summary_refuses_runs_it_cannot_compare():
    summary = _summary()
    plain = {k: v for k, v in _interleaved_report([2.0] * 4).items() if k != "rounds"}
    with pytest.raises(ValueError, match="no rounds: give runs that"):
        summary.render([plain], ["a"])
    other = _interleaved_report([2.0] * 4)
    other["rounds"] = {"decode b1 L512": other["rounds"]["decode b1 L128"]}
    with pytest.raises(ValueError, match="different shapes"):
        summary.render([_interleaved_report([2.0] * 4), other], ["a", "b"])
    with pytest.raises(ValueError, match="different models"):
        summary.render([_interleaved_report([2.0] * 4), {**other, "source": "n"}], ["a", "b"])


RUNS = sorted((ROOT / "docs" / "benchmarks").glob("decode_interleaved_*_runs"))


@pytest.mark.parametrize("folder", RUNS, ids=lambda p: p.name)
def test_a_published_summary_is_rendered_from_its_runs(folder):
    paths = sorted(folder.glob("*.json"))
    assert len(paths) >= 2
    reports = [json.loads(p.read_text()) for p in paths]
    table = _summary().render(reports, [p.stem for p in paths])
    assert table + "\n" == (folder.parent / f"{folder.name}.md").read_text()
    for report in reports:  # each run loaded its ways in both orders
        assert len(report["load_orders"]) % 2 == 0


def test_the_summary_of_runs_is_published():
    assert "decode_interleaved_SmolLM2-135M_runs" in {p.name for p in RUNS}
