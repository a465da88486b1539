"""The committed sweeps and the ledger agree: every model type a sweep does not pass has a
ledger entry (its family file's ``known_failures``, or ``task_known_failures`` for that
task) quoting its error, and every row that passes but misses a column says why in its
notes. tests/test_encoder_families.py and tests/test_untrained.py check that each entry
still fails with the error it quotes."""

import json
from pathlib import Path

import pytest

from exportcheck import depth, green_everywhere
from exportcheck.families import KNOWN_FAILURES, TASK_KNOWN_FAILURES

STATUS = Path(__file__).resolve().parents[1] / "docs" / "status"
SWEEPS = sorted(STATUS.glob("*/results.jsonl"))


def _rows(path):
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_every_task_has_a_committed_sweep():
    assert len(SWEEPS) >= 7, SWEEPS


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.parent.name)
def test_every_failing_row_is_on_the_ledger(path):
    task = path.parent.name
    missing = [
        row["source"]
        for row in _rows(path)
        if not row["ok"]
        and row["source"] not in KNOWN_FAILURES
        and row["source"] not in TASK_KNOWN_FAILURES.get(task, {})
    ]
    assert not missing, f"{task}: not green and not on the ledger: {missing}"


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.parent.name)
def test_every_ledger_entry_of_the_task_is_a_failing_row(path):
    task = path.parent.name
    failing = {row["source"] for row in _rows(path) if not row["ok"]}
    stale = sorted(set(TASK_KNOWN_FAILURES.get(task, {})) - failing)
    assert not stale, f"{task}: on the ledger but green in the sweep (resweep): {stale}"


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.parent.name)
def test_a_missing_column_is_explained_in_the_row(path):
    words = {
        "state": "no cache",
        "padded": "padded batch not checked",
        "eager_consistent": "eager consistency not checked",
        "generation": "generation not checked",
    }
    unexplained = []
    for row in _rows(path):
        if not row["ok"] or green_everywhere(row):
            continue
        notes = " ".join(row["notes"] + row["model"].get("notes", []))
        for column, present in depth(row).items():
            if not present and column in words and words[column] not in notes:
                unexplained.append((row["source"], column))
    assert not unexplained, unexplained
