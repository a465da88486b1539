"""validate(save_dir=...) keeps what it checked; recheck runs it again without the model."""

import json

import pytest
import torch

from exportcheck import cache_pytrees, validate
from exportcheck.cli import main
from exportcheck.saved import INPUTS
from exportcheck.validation import recheck

pytestmark = pytest.mark.models


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    folder = tmp_path_factory.mktemp("saved")
    report = validate("llama", exporter="onnx", save_dir=folder)
    return folder, report


def test_a_saved_validation_holds_programs_models_inputs_report_and_readme(saved):
    folder, report = saved
    assert report.ok, report.table()
    assert next(s for s in report.stages if s["stage"] == "save")["ok"]
    for name in ("model.pt2", "model.onnx", INPUTS, "report.json", "README.md"):
        assert (folder / name).is_file(), name
    written = json.loads((folder / "report.json").read_text())
    assert written["ok"] is True and written["source"] == "llama"
    assert "validate --from" in (folder / "README.md").read_text()


def test_recheck_runs_the_saved_files_on_the_saved_sets_without_the_model(saved):
    folder, report = saved
    again = recheck(folder)
    assert again.ok, again.table()
    assert again.runtimes == ["exported_program", "onnx"]
    labels = report.model["input_sets"]
    assert [r["input_set"] for r in again.runs if r["runtime"] == "onnx"] == labels


def test_recheck_fails_when_an_output_no_longer_matches(saved, tmp_path):
    folder, _ = saved
    for path in folder.iterdir():
        (tmp_path / path.name).write_bytes(path.read_bytes())
    with cache_pytrees():
        data = torch.load(tmp_path / INPUTS, weights_only=False)
        data["components"][0]["expected"][2].logits.add_(1.0)
        torch.save(data, tmp_path / INPUTS)
    again = recheck(tmp_path)
    assert not again.ok
    failed = [s for s in again.stages if not s["ok"]]
    assert {s["stage"] for s in failed} == {"exported_run", "ort_run"}
    assert "differs from the saved eager outputs" in failed[0]["error"]
    assert [r["ok"] for r in again.runs].count(False) == 2  # set 2, in each runtime


def test_a_folder_that_is_not_a_saved_validation_says_what_to_pass(tmp_path, capsys):
    with pytest.raises(ValueError, match=r"holds no inputs\.pt.*--save DIR"):
        recheck(tmp_path)
    with pytest.raises(SystemExit) as exit_:
        main(["validate", "llama", "--from", str(tmp_path)])
    assert exit_.value.code == 2
    assert "--from DIR checks the files saved in DIR again" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        main(["validate"])
    assert exit_.value.code == 2
