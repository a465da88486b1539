"""validate, sweep and report: the checker at scale, on a few real architectures."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import torch

from exportcheck import untrained_model, validate
from exportcheck.report import categorize, summarize_results, write_report
from exportcheck.sweep import read_results, sweep


def test_validate_tiny_llm_with_torch_export():
    report = validate("arnir0/Tiny-LLM", exporter="export")
    assert report.ok, report.table()
    assert [s["stage"] for s in report.stages] == [
        "build",
        "eager",
        "eager_consistent",
        "export",
        "exported_run",
        "eager_generate",
        "exported_generate",
    ]
    assert report.verdicts == {"exported_program": True}
    assert len(report.runs) == 7 and all(r["runner"] == "exported" for r in report.runs)
    assert report.worst("exported") <= 1e-5
    data = json.loads(json.dumps(report.to_dict()))
    assert data["ok"] and data["failed_stage"] is None
    assert data["versions"]["torch"].startswith("2.")


class _Broken(torch.nn.Module):
    def forward(self, input_ids, attention_mask, cache):
        raise RuntimeError("this model cannot run")


def test_a_failing_model_is_a_result_not_an_exception():
    m = untrained_model("arnir0/Tiny-LLM")
    m.model = _Broken()
    report = validate(m, exporter="onnx")
    assert not report.ok
    assert report.failed_stage == "eager"
    failed = report.stages[-1]
    assert failed["error_type"] == "RuntimeError" and failed["error"] == "this model cannot run"
    assert "eager" in report.table() and "FAILED" in report.table()


def test_differences_beyond_the_tolerance_fail_the_run():
    # onnxruntime reorders float sums: its outputs differ from eager by ~1e-7, which a
    # tolerance of 1e-9 must report as a failure of the ort_run stage.
    report = validate("arnir0/Tiny-LLM", exporter="onnx", atol=1e-9)
    assert not report.ok
    assert report.failed_stage == "ort_run"
    failed = next(s for s in report.stages if s["stage"] == "ort_run")
    assert failed["error_type"] == "AssertionError"
    assert "ort differs from eager beyond 1e-09" in failed["error"]
    ort_runs = [r for r in report.runs if r["runner"] == "ort"]
    assert len(ort_runs) == 7 and any(not r["ok"] and r["abs"] > 1e-9 for r in ort_runs)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"exporter": "tflite"}, "exporter must be one of"),
        ({"atol": -1}, "atol must be a positive number"),
        ({"atol": True}, "atol must be a positive number"),
    ],
)
def test_validate_misuse_raises(kwargs, message):
    with pytest.raises(ValueError, match=message):
        validate("llama", **kwargs)


def test_sweep_writes_rows_resumes_and_times_out(tmp_path):
    out = str(tmp_path / "results.jsonl")
    rows = sweep(["llama"], out, exporter="export", timeout=300)
    assert [r["source"] for r in rows] == ["llama"] and rows[0]["ok"], rows
    assert sweep(["llama"], out, exporter="export") == []  # resumed: nothing to do
    slow = sweep(["gpt2"], out, exporter="export", timeout=0.5)
    assert slow[0]["failed_stage"] == "process"
    assert slow[0]["stages"][0]["error_type"] == "Timeout"
    assert [r["source"] for r in read_results(out)] == ["llama", "gpt2"]
    assert os.path.exists(str(tmp_path / "results.log"))


_SIX = ["llama", "gpt2", "qwen2", "qwen3", "mistral", "phi3"]


def test_sweep_survives_ctrl_c_and_continues(tmp_path):
    out = tmp_path / "results.jsonl"
    cmd = [
        sys.executable,
        "-m",
        "exportcheck",
        "sweep",
        "--out",
        str(out),
        "--exporter",
        "export",
        # one worker and six models: work remains when the first row lands
        "--workers",
        "1",
        "--only",
        *_SIX,
    ]
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    proc = subprocess.Popen(
        cmd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # A shell without job control starts background commands with SIGINT ignored,
        # and Python then installs no KeyboardInterrupt handler: the sweep must see
        # Ctrl-C as a terminal delivers it.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.time() + 240
    while time.time() < deadline and len(read_results(str(out))) < 1:
        time.sleep(0.2)
    rows_at_signal = len(read_results(str(out)))
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode != 0, (rows_at_signal, err[-3000:])
    assert "interrupted" in err and "rerun to continue" in err
    first = read_results(str(out))
    assert 1 <= len(first) < len(_SIX)
    with open(out, encoding="utf-8") as f:  # every line is complete JSON
        assert all(json.loads(line) for line in f if line.strip())
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert sorted(r["source"] for r in read_results(str(out))) == sorted(_SIX)


def test_three_architectures_through_sweep_and_report(tmp_path):
    out = tmp_path / "results.jsonl"
    cmd = [
        sys.executable,
        "-m",
        "exportcheck",
        "sweep",
        "--out",
        str(out),
        "--only",
        "llama",
        "gemma3_text",
        "mamba",
        "--workers",
        "2",
    ]
    done = subprocess.run(
        cmd, capture_output=True, text=True, timeout=900, env=dict(os.environ, HF_HUB_OFFLINE="1")
    )
    assert done.returncode == 0, done.stderr
    rows = {r["source"]: r for r in read_results(str(out))}
    assert set(rows) == {"llama", "gemma3_text", "mamba"}
    assert rows["llama"]["ok"], rows["llama"]["stages"]
    assert rows["llama"]["worst_ort_abs"] <= 1e-4
    page_dir = tmp_path / "status"
    report = subprocess.run(
        [sys.executable, "-m", "exportcheck", "report", str(out), "--out", str(page_dir)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert report.returncode == 0, report.stderr
    page = (page_dir / "index.rst").read_text()
    assert "llama" in page and "gemma3_text" in page and "mamba" in page
    green = sum(1 for r in rows.values() if r["ok"])
    assert f"**{green} of 3**" in page
    # mamba is checked one token at a time: the page says so
    notes = page.split("\nNotes\n-----\n", 1)[1]
    assert "mamba" in notes and "one new token: with a cache" in notes
    assert "llama" not in notes
    assert (page_dir / "stages.png").stat().st_size > 1000
    assert (page_dir / "conversion_time.png").stat().st_size > 1000


_PLAIN = ("build", "eager", "export", "exported_run", "onnx", "ort_session", "ort_run")


def _row(source, failed=None, error="", exporter="onnx", names=_PLAIN):
    stages = [{"stage": s, "ok": True, "seconds": 1.0} for s in names]
    if failed:
        i = [s["stage"] for s in stages].index(failed)
        stages = stages[: i + 1]
        stages[i].update(ok=False, error_type="UserError", error=error)
    return {
        "source": source,
        "exporter": exporter,
        "ok": failed is None,
        "stages": stages,
        "runs": [],
        "failed_stage": failed,
        "started_at": 100.0,
        "finished_at": 160.0,
    }


def test_summary_counts_and_categories(tmp_path):
    rows = [
        _row("a"),
        _row("b", "export", "Constraints violated (seq_length)!"),
        _row("c", "onnx", "DispatchError: No ONNX function found for aten.foo"),
    ]
    summary = summarize_results(rows)
    assert summary["total"] == 3 and summary["all_green"] == 1
    assert summary["green"] == {"exported_program": 2, "onnx": 1}
    assert summary["per_stage"]["export"] == 2 and summary["per_stage"]["onnx"] == 1
    assert categorize(rows[2]) == "no ONNX translation for an operator"
    assert summary["elapsed"] == 60.0
    path = tmp_path / "r.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + '\n{"truncated')
    written = write_report(str(path), str(tmp_path / "page"))
    page = (tmp_path / "page" / "index.rst").read_text()
    assert "**1 of 3**" in page and "took 1.0 minutes" in page
    assert "\nNotes\n" not in page  # no row has notes
    assert len(written) == 3 and (tmp_path / "page" / "r.jsonl").exists()
    assert "What the checks can see" not in page  # no audit next to the results


def test_a_sensitivity_audit_next_to_the_results_is_summarized_on_the_page(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text(json.dumps(_row("a")) + "\n")
    moved = {"component": "model", "input": "input_ids", "output": "logits", "cached": False}
    (tmp_path / "sensitivity.jsonl").write_text(
        json.dumps(
            {
                "source": "a",
                "task": "t",
                "moved": [{**moved, "moved": 0.0, "scale": 2.0}],
                "ignored": ["model:input_ids"],
            }
        )
        + "\n"
    )
    write_report(str(path), str(tmp_path / "page"))
    page = (tmp_path / "page" / "index.rst").read_text()
    assert (
        "t: 1 type audited; 1 with an input whose change moves the output by no more than "
        "the checks' tolerance (0.0001): a (model:input_ids)" in page
    )
    assert (tmp_path / "page" / "sensitivity.jsonl").exists()  # the page links its copy


def test_report_of_nothing_says_so(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(ValueError, match="holds no result rows"):
        write_report(str(empty), str(tmp_path / "page"))


def test_cli_validate_prints_a_table_and_progress():
    cmd = [
        sys.executable,
        "-m",
        "exportcheck",
        "validate",
        "arnir0/Tiny-LLM",
        "--exporter",
        "export",
    ]
    out = subprocess.run(
        cmd, capture_output=True, text=True, timeout=600, env=dict(os.environ, HF_HUB_OFFLINE="1")
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("arnir0/Tiny-LLM (text-generation; exported_program ok): OK")
    assert re.search(r"exported_run +ok", out.stdout) and "batch=3 seq=4 cache=17" in out.stdout
    assert re.search(r"exported_generate +ok", out.stdout)
    assert "export ..." in out.stderr  # the progress lines
    as_json = subprocess.run(
        [*cmd, "--json"],
        capture_output=True,
        text=True,
        timeout=600,
        env=dict(os.environ, HF_HUB_OFFLINE="1"),
    )
    assert json.loads(as_json.stdout)["ok"] is True


def test_cli_sweep_rejects_unknown_types(tmp_path):
    cmd = [
        sys.executable,
        "-m",
        "exportcheck",
        "sweep",
        "--out",
        str(tmp_path / "r.jsonl"),
        "--only",
        "llama",
        "lama",
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert out.returncode == 2, out.stderr
    assert "not model types of the text-generation mapping" in out.stderr and "lama" in out.stderr
    assert not (tmp_path / "r.jsonl").exists()


@pytest.mark.models
def test_a_row_lists_exactly_the_patches_that_changed_it_per_runtime():
    # mixtral: the ONNX conversion needs batched_mm experts, torch.export does not, so
    # the ExportedProgram is checked without that patch and ONNX gets its own export.
    report = validate("mixtral", exporter="onnx")
    assert report.ok, report.table()
    assert report.patches_applied == {
        "exported_program": ["cache_pytrees"],
        "onnx": ["cache_pytrees", "moe_batched_mm"],
    }
    llama = validate("llama", exporter="export")
    assert llama.patches_applied == {"exported_program": ["cache_pytrees"]}
    assert json.loads(json.dumps(report.to_dict()))["patches_applied"] == report.patches_applied


def test_diff_lists_verdict_changes_and_reads_rows_of_earlier_versions(tmp_path):
    # rows as exportcheck 0.1 wrote them (no plan): upgraded on read
    old, new = tmp_path / "old.jsonl", tmp_path / "new.jsonl"
    old.write_text("\n".join(json.dumps(r) for r in [_row("a"), _row("b"), _row("c")]))
    new.write_text(
        "\n".join(json.dumps(r) for r in [_row("a"), _row("b", "onnx", "DispatchError: x")])
    )
    cmd = [sys.executable, "-m", "exportcheck", "diff", str(old), str(new)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert out.returncode == 1, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith(
        "b (text-generation): exported_program ok, onnx ok -> exported_program ok, onnx red"
    )
    assert lines[1].startswith("c (text-generation): exported_program ok, onnx ok -> absent")
    assert lines[-1].startswith("2 verdicts changed")
    same = subprocess.run([*cmd[:-1], str(old)], capture_output=True, text=True, timeout=300)
    assert same.returncode == 0 and same.stdout.startswith("0 verdicts changed")


def test_a_sweep_resumed_later_counts_each_run_not_the_time_between():
    from exportcheck.report import sweep_runs

    first = [_row("a"), _row("b")]  # 100 -> 160
    later = _row("c")
    later["started_at"], later["finished_at"] = 5000.0, 5030.0
    assert sweep_runs([*first, later]) == [60.0, 30.0]
    summary = summarize_results([*first, later])
    assert summary["elapsed"] == 90.0 and summary["runs"] == [60.0, 30.0]


def test_the_page_says_a_sweep_ran_in_several_runs(tmp_path):
    later = _row("c")
    later["started_at"], later["finished_at"] = 5000.0, 5030.0
    path = tmp_path / "r.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in [_row("a"), later]) + "\n")
    write_report(str(path), str(tmp_path / "page"))
    page = (tmp_path / "page" / "index.rst").read_text()
    assert "took 1.5 minutes with 1 worker(s) in 2 runs (1.0 + 0.5 minutes" in page


def test_a_status_folder_gets_one_page_per_task_and_an_overview(tmp_path):
    from exportcheck.report import summaries_markdown, task_summaries, write_status

    for task, rows in [
        ("text-generation", [_row("a"), _row("b", "export", "Constraints violated")]),
        ("fill-mask", [_row("c")]),
    ]:
        for row in rows:
            row["task"] = task
        (tmp_path / task).mkdir()
        (tmp_path / task / "results.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    written = write_status(str(tmp_path))
    assert str(tmp_path / "fill-mask" / "index.rst") in written
    overview = (tmp_path / "index.rst").read_text()
    # the default task first, each linked, with its own counts
    assert overview.index("text-generation/index") < overview.index("fill-mask/index")
    assert "   text-generation/index\n   fill-mask/index" in overview
    assert (tmp_path / "tasks.png").exists()
    page = (tmp_path / "fill-mask" / "index.rst").read_text()
    assert (
        page.startswith("Status: fill-mask\n") and "``MODEL_FOR_MASKED_LM_MAPPING_NAMES``" in page
    )
    table = summaries_markdown(task_summaries(str(tmp_path)))
    assert (
        "| text-generation | 2 | 1 (50.0 %) |" in table
        and "| fill-mask | 1 | 1 (100.0 %) |" in table
    )


def test_report_of_an_empty_folder_says_to_sweep_first(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "exportcheck", "report", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2
    assert (
        f"{tmp_path} has no <task>/results.jsonl; run 'exportcheck sweep --task all" in out.stderr
    )


def test_sweep_of_every_task_wants_a_folder(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "exportcheck", "sweep", "--task", "all", "--out", "r.jsonl"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert out.returncode == 2 and "--task all writes one results file per task" in out.stderr


def test_an_error_cut_after_an_underscore_is_not_a_rest_reference():
    from docutils.core import publish_parts

    from exportcheck.report import _rst_table

    rst = _rst_table(["first error"], [["build: it is in MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_"]])
    html = publish_parts(
        rst, writer="html5", settings_overrides={"report_level": 2, "halt_level": 2}
    )
    assert "MAPPING_" in html["body"]


def _fused_row(source, fusions, failed=None, error=""):
    fused = ("build", "eager", "export", "exported_run", "fuse", "fused_session", "fused_run")
    row = _row(source, failed, error, exporter="fused", names=fused)
    row.update(task="text-generation", artifacts={"model/onnx_ort": {"fusions": fusions}})
    return row


def test_the_fused_sweep_is_counted_on_its_task_page_and_in_the_overview(tmp_path):
    from exportcheck.report import fused_summary, summaries_markdown, task_summaries, write_status

    folder = tmp_path / "text-generation"
    folder.mkdir()
    rows = [_row("a"), _row("b"), _row("c")]
    for row in rows:
        row["task"] = "text-generation"
    (folder / "results.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    fused = [
        _fused_row("a", {"sdpa": 2, "skip_rms_normalization": 4}),
        _fused_row("b", {}),
        _fused_row(
            "c", {"sdpa": 2}, "fused_session", "Node (Gemm) Input 0 expected to have rank 2"
        ),
    ]
    (folder / "fused.jsonl").write_text("\n".join(json.dumps(r) for r in fused))
    summary = fused_summary(fused)
    # a fusion that breaks the graph is not counted; a correct graph with no fusion apart
    assert (summary["fuse_and_correct"], summary["unfused_correct"], summary["failed"]) == (1, 1, 1)
    assert summary["kinds"] == {"sdpa": 1, "skip_rms_normalization": 1}
    write_status(str(tmp_path))
    page = (folder / "index.rst").read_text()
    assert "\nFused for onnxruntime\n" in page and "**1 of 3** model types fuse" in page
    assert "stays correct with no fusion applied: b." in page
    assert "1 of them is green as a plain ONNX graph, so the fusions broke it: c." in page
    assert "Input 0 expected to have rank 2" in page
    overview = (tmp_path / "index.rst").read_text()
    assert "Fused for onnxruntime, text-generation: **1 of 3** model types" in overview
    table = summaries_markdown(task_summaries(str(tmp_path)))
    assert table.endswith(
        "Fused for onnxruntime (text-generation): 1 of 3 model types fuse and stay correct."
    )
