"""The sweep's progress: a rich bar on a terminal, plain lines in a log."""

import io

from exportcheck.sweep import sweep


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def _run(tmp_path, stream):
    return sweep(
        ["one", "two"],
        str(tmp_path / "results.jsonl"),
        exporter="export",
        workers=1,
        timeout=60,
        stream=stream,
        target="sweep_targets:behave",
    )


def test_a_log_gets_one_plain_line_per_model(tmp_path):
    log = io.StringIO()
    rows = _run(tmp_path, log)
    lines = log.getvalue().splitlines()
    assert len(rows) == 2 and len(lines) == 2, lines
    assert lines[0].startswith("[1/2] ok 1 failed 0") and lines[0].endswith("| one: ok")
    assert lines[1].startswith("[2/2] ok 2 failed 0") and lines[1].endswith("| two: ok")
    assert "\x1b[" not in log.getvalue()  # no terminal control codes in a log


def test_a_terminal_gets_a_live_bar(tmp_path):
    term = _Terminal()
    _run(tmp_path, term)
    text = term.getvalue()
    assert "sweep" in text and "━" in text and "2/2" in text  # rich's bar, complete
    assert "two: ok" in text
