"""Longformer and LED are exported for masks without global attention (0s and 1s, what a
tokenizer gives): they validate on both runtimes, and a mask holding a global token (a 2)
fails loudly: the ExportedProgram raises, the ONNX model (which has no assertions) returns
NaN for the rows holding one. Eager computes something else for those rows, so the
restriction matters."""

import copy

import numpy as np
import pytest
import torch

from exportcheck import ort_feeds, untrained_model, validate
from exportcheck.families.longformer import NO_GLOBAL_TOKEN

pytestmark = pytest.mark.models

PAIRS = [
    ("longformer", "fill-mask"),
    ("longformer", "feature-extraction"),
    ("led", "text2text-generation"),  # the encoder has global attention, the decoder not
]


@pytest.fixture(scope="module", params=PAIRS, ids=lambda p: f"{p[0]}-{p[1]}")
def validated(request, tmp_path_factory):
    """The validation of one pair, its artifacts kept, and the first graph it exported
    (the model, or the encoder) with its first input set."""
    model_type, task = request.param
    m = untrained_model(model_type, task=task)
    folder = tmp_path_factory.mktemp(f"{model_type}-{task}")
    report = validate(m, exporter="onnx", save_dir=folder)
    graph = m.components[0] if m.components else None
    name = graph.name if graph else "model"
    module = graph.module if graph else m.model
    feeds = (graph.input_sets if graph else m.input_sets)[0]
    return report, folder, name, module, feeds


def _first(output):
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, dict):
        return next(iter(output.values()))
    return output[0]


def _with_global_token(feeds):
    """``feeds`` with global attention on the first token of row 1 (what a classifier
    gives its ``<s>`` token); row 0 keeps its mask."""
    changed = copy.deepcopy(feeds)
    assert changed["attention_mask"].shape[0] >= 2
    changed["attention_mask"][1, 0] = 2
    return changed


def test_they_validate_on_both_runtimes(validated):
    report = validated[0]
    assert report.ok, report.table()
    row = report.to_dict()
    assert row["verdicts"] == {"exported_program": True, "onnx": True}
    assert report.runs and all(r["ok"] for r in report.runs), report.table()
    if report.task == "text2text-generation":
        generated = {s["stage"]: s["ok"] for s in report.stages if "generate" in s["stage"]}
        assert generated == {
            "eager_generate": True,
            "exported_generate": True,
            "ort_generate": True,
        }, report.table()


def test_a_global_token_changes_eager(validated):
    _, _, _, module, feeds = validated
    with torch.no_grad():
        local = _first(module(**copy.deepcopy(feeds)))
        glob = _first(module(**_with_global_token(feeds)))
    assert torch.equal(local[0], glob[0])
    assert float((local[1] - glob[1]).abs().max()) > 1e-3


def test_the_exported_program_refuses_a_global_token(validated):
    _, folder, name, _, feeds = validated
    program = torch.export.load(str(folder / f"{name}.pt2")).module()
    with torch.no_grad():
        program(**copy.deepcopy(feeds))  # a mask of 0s and 1s runs
        with pytest.raises(RuntimeError, match=NO_GLOBAL_TOKEN):
            program(**_with_global_token(feeds))


def test_the_onnx_model_returns_nan_for_rows_with_a_global_token(validated):
    # torch.onnx.export removes assertion nodes: the patch fills the rows it cannot
    # compute with NaN instead of computing their global tokens as padding
    import onnxruntime

    _, folder, name, module, feeds = validated
    session = onnxruntime.InferenceSession(
        str(folder / f"{name}.onnx"), providers=["CPUExecutionProvider"]
    )
    got = session.run(None, ort_feeds(session, _with_global_token(feeds)))[0]
    with torch.no_grad():
        local = _first(module(**copy.deepcopy(feeds))).numpy()
    assert np.isnan(got[1]).all()
    assert not np.isnan(got[0]).any() and np.abs(got[0] - local[0]).max() < 1e-4
