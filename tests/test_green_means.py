"""What green means: eager checked against itself, every input set a distinct shape, a
left-padded batch among them."""

import copy

import pytest
import torch

from exportcheck import depth, untrained_model, validate, verdict
from exportcheck.tasks import get_task

pytestmark = pytest.mark.models


@pytest.mark.parametrize("model_type", ["llama", "mamba", "cpmant", "gemma4_assistant"])
def test_every_input_set_has_a_distinct_shape(model_type):
    m = untrained_model(model_type)
    assert len(m.input_sets) == len(m.shapes) >= 5
    assert len(set(m.shapes)) == len(m.shapes), m.shapes


def test_one_set_is_left_padded_as_generate_pads_a_batch():
    m = untrained_model("llama")
    labels = get_task(m.task).components(m)[0].labels
    which = [i for i, label in enumerate(labels) if "left-padded" in label]
    assert which == [5], labels
    padded = m.input_sets[5]["attention_mask"]
    assert padded[0, :5].eq(0).all() and padded[0, 5:].eq(1).all() and padded[1:].eq(1).all()
    others = [f for i, f in enumerate(m.input_sets) if i != 5]
    assert all(bool(f["attention_mask"].eq(1).all()) for f in others)
    assert m.prompt_masks[5][0, :5].eq(0).all()


def test_a_model_whose_eager_is_inconsistent_is_flagged():
    m = untrained_model("llama")
    # The cache no longer holds what its prompt computes: a decode step from it cannot
    # equal a full forward over prompt + new tokens.
    for feeds in m.input_sets:
        layer = feeds["cache"].layers[0]
        layer.keys = layer.keys * 3.0
    report = validate(m, exporter="onnx")
    assert report.failed_stage == "eager_consistent"
    failed = next(s for s in report.stages if s["stage"] == "eager_consistent")
    assert failed["error"].startswith("eager is inconsistent: the decode step differs")
    assert verdict(report.to_dict()) == {"exported_program": False, "onnx": False}
    assert all(not c["ok"] for c in report.model["eager_consistency"])


class _IgnoresItsMaskWhenExported(torch.nn.Module):
    """Eager honours the mask; the exported graph drops it, as a broken export would."""

    def __init__(self, model):
        super().__init__()
        self.inner = model
        self.config = model.config

    def forward(self, input_ids, attention_mask, cache=None):
        if torch.compiler.is_exporting():
            attention_mask = torch.ones_like(attention_mask)
        return self.inner(input_ids=input_ids, attention_mask=attention_mask, cache=cache)


def test_a_padded_set_that_the_export_gets_wrong_is_caught():
    m = untrained_model("llama")
    m.model = _IgnoresItsMaskWhenExported(m.model)
    report = validate(m, exporter="export")
    assert not report.ok and report.failed_stage == "exported_run"
    wrong = [r["input_set"] for r in report.runs if not r["ok"]]
    assert wrong == ["batch=2 seq=2 cache=24 left-padded"], report.table()
    with torch.no_grad():  # every set without padding agrees: only padding shows it
        assert m.model(**copy.deepcopy(m.inputs)).logits.shape[0] == 2


@pytest.mark.models
def test_a_row_without_a_padded_set_says_why():
    # FNet mixes tokens by Fourier transform and takes no attention mask
    report = validate("fnet", task="fill-mask", exporter="onnx")
    assert report.ok, report.table()
    assert (
        "padded batch not checked: FNetForMaskedLM.forward takes no attention mask, so no "
        "input set can be padded"
    ) in report.notes, report.notes
    assert not depth(report.to_dict())["padded"]
