"""text2text-generation: encoder, first decoder step and decoder step with an
EncoderDecoderCache, checked apart and through a greedy generation loop."""

import copy

import pytest
import torch

from exportcheck import cache_pytrees, depth, max_diff, untrained_model, validate
from exportcheck.tasks import tasks_of

pytestmark = pytest.mark.models


@pytest.fixture(scope="module")
def t5():
    return untrained_model("t5")


def test_an_encoder_decoder_is_three_graphs_with_distinct_padded_input_sets(t5):
    assert tasks_of("t5")[0] == "text2text-generation" and t5.task == "text2text-generation"
    names = [c.name for c in t5.components]
    assert names == ["encoder", "decoder_init", "decoder"]
    step = t5.components[2]
    cache = step.input_sets[0]["cache"]
    assert type(cache).__name__ == "EncoderDecoderCache"
    # the cross-attention part has the encoder's length, the self-attention part its own
    assert cache.cross_attention_cache.get_seq_length() == 12
    assert cache.self_attention_cache.get_seq_length() == 5
    shapes = step.dynamic_shapes["cache"]
    assert shapes[1][0][0][2].__name__ == "encoder_length"
    assert shapes[0][0][0][2].__name__ == "cache_length"
    assert sum("padded" in label for c in t5.components for label in c.labels) == 6


def test_t5_validates_and_generates_through_both_runtimes(t5):
    report = validate(t5, exporter="onnx")
    assert report.ok, report.table()
    row = report.to_dict()
    assert depth(row) == {
        "state": True,
        "distinct_shapes": True,
        "padded": True,
        "eager_consistent": True,
        "generation": True,
    }
    gen = report.generation
    for runner in ("eager", "exported", "ort"):
        assert gen[runner]["ok"] and gen[runner]["tokens_equal"], gen[runner]
    # the encoder once, the first step, then 7 decoder steps
    assert gen["ort"]["calls"] == 1 + 8 and gen["ort"]["tokens_equal_generate"]
    stages = [s["stage"] for s in row["stages"]]
    assert {"encoder.ort_run", "decoder_init.ort_run", "decoder.ort_run"} <= set(stages)


def test_the_decoder_step_feeds_its_cache_back_on_another_length(t5):
    """Exported on (2 sequences, 3 new tokens, 5 cached), the step runs on another batch
    and encoder length, and its returned EncoderDecoderCache goes back in for a step of
    another number of tokens: equal to eager doing the same."""
    step = t5.components[2]
    with cache_pytrees():
        program = torch.export.export(
            step.module,
            (),
            kwargs=copy.deepcopy(step.input_sets[0]),
            dynamic_shapes=step.dynamic_shapes,
        )
    feeds = step.input_sets[3]  # batch 4, encoder 10, 4 new tokens, 3 cached
    more = torch.randint(0, 100, (4, 2))
    then = {**feeds, "decoder_input_ids": more}
    with cache_pytrees(), torch.no_grad():
        first_eager = step.module(**copy.deepcopy(feeds))
        first = program.module()(**copy.deepcopy(feeds))
        assert first["cache"].self_attention_cache.get_seq_length() == 3 + 4
        second_eager = step.module(**{**then, "cache": first_eager["cache"]})
        second = program.module()(**{**then, "cache": first["cache"]})
    diff = max_diff(second_eager["logits"], second["logits"])
    assert diff["abs"] <= 1e-5, diff
    assert second["cache"].cross_attention_cache.get_seq_length() == 10


def test_a_model_type_without_an_encoder_decoder_says_which_tasks_it_has():
    with pytest.raises(
        ValueError, match=r"'llama' has no text2text-generation model .* it has: text-generation"
    ):
        untrained_model("llama", task="text2text-generation")
