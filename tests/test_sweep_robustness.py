"""A sweep survives children that are killed, hang or exceed their memory cap, and reruns them."""

import pytest

from exportcheck.sweep import read_results, sweep

SOURCES = ["killed", "hangs", "eats-memory", "fine"]


@pytest.fixture
def swept(tmp_path):
    out = str(tmp_path / "results.jsonl")
    rows = sweep(
        SOURCES,
        out,
        exporter="export",
        workers=2,
        timeout=8,
        memory_gib=6,
        target="sweep_targets:misbehave",
    )
    return out, {r["source"]: r for r in rows}


def test_each_failure_leaves_a_row_with_its_cause_and_the_sweep_goes_on(swept):
    out, rows = swept
    assert set(rows) == set(SOURCES)
    assert rows["fine"]["ok"] and rows["fine"]["checked_by"] == "misbehave"
    causes = {}
    for source in ("killed", "hangs", "eats-memory"):
        row = rows[source]
        assert not row["ok"] and row["failed_stage"] == "process", row
        stage = row["stages"][0]
        causes[source] = (stage["error_type"], stage["error"])
    assert causes["killed"] == ("Killed", "killed by SIGKILL before it reported")
    assert causes["hangs"] == ("Timeout", "over 8 s")
    assert causes["eats-memory"] == ("MemoryError", "over the 6 GiB cap")
    assert len(read_results(out)) == 4  # every row was written to the file


def test_retry_failed_reruns_only_the_crashed_and_timed_out_rows(swept):
    out, _ = swept
    assert sweep(SOURCES, out, exporter="export", target="sweep_targets:behave") == []
    again = sweep(SOURCES, out, exporter="export", retry_failed=True, target="sweep_targets:behave")
    assert sorted(r["source"] for r in again) == ["eats-memory", "hangs", "killed"]
    assert all(r["ok"] and r["checked_by"] == "behave" for r in again)
    latest = {r["source"]: r for r in read_results(out)}
    assert all(r["ok"] for r in latest.values())
    assert latest["fine"]["checked_by"] == "misbehave"  # green rows are not rerun
