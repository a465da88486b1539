"""Text tasks beyond text-generation: fill-mask and feature-extraction, one graph each."""

import pytest
import torch

from exportcheck import depth, untrained_model, validate
from exportcheck.tasks import get_task, tasks_of

pytestmark = pytest.mark.models


@pytest.mark.parametrize(
    ("model_type", "task", "output"),
    [("bert", "fill-mask", "logits"), ("t5", "feature-extraction", "last_hidden_state")],
)
def test_an_encoder_validates_on_both_runtimes_with_padded_batches(model_type, task, output):
    m = untrained_model(model_type, task=task)
    assert m.task == task and m.cache_argument is None
    assert set(m.inputs) == {"input_ids", "attention_mask"}
    assert m.dynamic_shapes["input_ids"][1].__name__ == "seq_length"
    # right-padded as a tokenizer pads: zeros at the end of the mask, pad ids there
    padded = m.input_sets[4]
    assert padded["attention_mask"][0, -1] == 0 and padded["attention_mask"][0, 0] == 1
    assert padded["input_ids"][0, -1] == m.config.pad_token_id
    report = validate(m, exporter="onnx")
    assert report.ok, report.table()
    row = report.to_dict()
    assert depth(row) == {"distinct_shapes": True, "padded": True}
    assert row["model"]["distinct_shapes"] == 7
    assert [s["stage"] for s in row["stages"]][-1] == "ort_run"
    assert not any("eager consistency" in n for n in row["notes"])
    with torch.no_grad():
        assert hasattr(m.model(**m.inputs), output)


def test_a_model_type_gets_its_default_task_and_can_ask_for_another():
    assert tasks_of("roberta")[0] == "text-generation"  # a causal LM first
    assert set(tasks_of("roberta")) >= {"fill-mask", "feature-extraction"}
    assert untrained_model("distilbert").task == "fill-mask"  # no causal LM
    assert untrained_model("roberta", task="feature-extraction").model.__class__.__name__ == (
        "RobertaModel"
    )


def test_a_model_type_without_the_task_says_which_tasks_it_has():
    with pytest.raises(
        ValueError, match=r"'llama' has no fill-mask model .* it has: text-generation"
    ):
        untrained_model("llama", task="fill-mask")


def test_an_export_that_ignores_the_mask_is_caught_on_a_padded_set(monkeypatch):
    """A graph that loses the mask while being exported (eager keeps it) equals eager on
    the unpadded sets only: the padded ones fail."""
    m = untrained_model("bert", task="fill-mask")
    unmasked = get_task("fill-mask")
    original = type(unmasked).components

    def components(self, m):
        (c,) = original(self, m)

        class IgnoresMask(torch.nn.Module):
            def __init__(self, inner):
                super().__init__()
                self.inner = inner

            def forward(self, input_ids, attention_mask):
                if torch.compiler.is_exporting():
                    attention_mask = torch.ones_like(attention_mask)
                return self.inner(input_ids=input_ids, attention_mask=attention_mask)

        c.module = IgnoresMask(m.model)
        return [c]

    monkeypatch.setattr(type(unmasked), "components", components)
    report = validate(m, exporter="export")
    failed = next(s for s in report.stages if not s["ok"])
    assert failed["stage"] == "exported_run"
    assert "padded" in failed["error"] and "batch=2 seq=8:" not in failed["error"]
