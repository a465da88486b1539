"""untrained_model: every causal-LM type builds and runs eager on every input set."""

import copy
import subprocess
import sys

import pytest
import torch

from exportcheck import untrained_model
from exportcheck.dims import BATCH_MAX, CACHE_MAX, length_bounds
from exportcheck.families import CONFIG_FIXES, KNOWN_FAILURES
from exportcheck.patches import eager_fixes
from exportcheck.tasks import TASKS, get_task

TYPES = get_task("text-generation").model_types()


def _run_all(m):
    # eager_fixes: the patches that correct eager transformers itself (rwkv)
    with torch.no_grad(), eager_fixes(m.model):
        for feeds in [m.inputs, *m.other_inputs]:
            out = m.model(**copy.deepcopy(feeds))
            # a drafter takes the main model's embeddings instead of token ids
            batch, seq = feeds.get("input_ids", feeds.get("inputs_embeds")).shape[:2]
            assert out.logits.shape[:2] == (batch, seq)
            assert torch.isfinite(out.logits).all()


@pytest.mark.parametrize("model_type", TYPES)
def test_every_causal_lm_type(model_type):
    if model_type in KNOWN_FAILURES:
        # Listed as failing: it must still fail with the listed error, or the table is stale.
        expected_error, _ = KNOWN_FAILURES[model_type]
        with pytest.raises(Exception, match=expected_error):
            _run_all(untrained_model(model_type))
        return
    _run_all(untrained_model(model_type))


def test_known_failures_are_few_and_explained():
    # model types of other tasks that cannot be built are tested where their task is
    # (tests/test_audio_lm.py for the audio LMs)
    every = {t for task in TASKS for t in get_task(task).model_types()}
    causal = [t for t in KNOWN_FAILURES if t in TYPES]
    assert len(causal) <= 0.05 * len(TYPES), sorted(causal)
    for model_type, (expected_error, reason) in KNOWN_FAILURES.items():
        assert model_type in every, f"{model_type} is in no task's mapping"
        assert expected_error and len(reason) > 20, f"{model_type}: say how and why it fails"
    for model_type, (overrides, reason) in CONFIG_FIXES.items():
        assert overrides and len(reason) > 20, model_type


def test_inputs_follow_the_seed_shapes():
    m = untrained_model("arnir0/Tiny-LLM")
    assert m.cache_argument == "cache"
    seq_max, cache_max = length_bounds(m.config)
    assert m.shapes == [
        (2, 3, 30),
        (1, 3, 30),
        (2, 1, 30),
        (2, 5, 60),
        (3, 4, 17),
        (2, 2, 24),
        (BATCH_MAX, seq_max, cache_max),
    ]
    for feeds, (batch, seq, cache) in zip([m.inputs, *m.other_inputs], m.shapes, strict=True):
        assert tuple(feeds["input_ids"].shape) == (batch, seq)
        assert tuple(feeds["attention_mask"].shape) == (batch, seq + cache)
        assert feeds["cache"].get_seq_length() == cache
    names = {d.__name__ for spec in m.dynamic_shapes["input_ids"].values() for d in [spec]}
    assert names == {"batch", "seq_length"}
    assert m.dynamic_shapes["cache"][0][0][2].__name__ == "cache_length"
    assert not m.model.training


def test_the_last_set_is_at_the_declared_upper_bounds():
    m = untrained_model("arnir0/Tiny-LLM")
    batch, seq = m.dynamic_shapes["input_ids"][0], m.dynamic_shapes["input_ids"][1]
    cache = m.dynamic_shapes["cache"][0][0][2]
    last = m.input_sets[-1]
    assert tuple(last["input_ids"].shape) == (batch.max, seq.max)
    assert last["cache"].get_seq_length() == cache.max
    assert (batch.max, cache.max) == (BATCH_MAX, CACHE_MAX)


def test_same_seed_same_model_and_inputs():
    a, b = untrained_model("llama"), untrained_model("llama")
    torch.testing.assert_close(a.inputs["input_ids"], b.inputs["input_ids"])
    for pa, pb in zip(a.model.parameters(), b.model.parameters(), strict=True):
        torch.testing.assert_close(pa, pb)


def test_sliding_and_linear_layers_are_real():
    gemma = untrained_model("gemma3_text")
    kinds = {type(layer).__name__ for layer in gemma.inputs["cache"].layers}
    assert kinds == {"DynamicLayer", "DynamicSlidingWindowLayer"}
    qwen = untrained_model("qwen3_next")
    kinds = {type(layer).__name__ for layer in qwen.inputs["cache"].layers}
    assert "LinearAttentionLayer" in kinds


def test_config_overrides_and_config_objects():
    from transformers import LlamaConfig

    assert untrained_model("llama", num_hidden_layers=1).config.num_hidden_layers == 1
    config = LlamaConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        vocab_size=100,
    )
    assert untrained_model(config).config.hidden_size == 32
    assert untrained_model(config.to_dict()).config.vocab_size == 100


@pytest.mark.parametrize(
    ("source", "kwargs", "error", "message"),
    [
        ("lama", {}, ValueError, "Did you mean llama"),
        (3, {}, TypeError, "source must be a hub id, a model_type"),
        ({"hidden_size": 3}, {}, ValueError, "needs a 'model_type' key"),
        ("llama", {"task": "fill-masks"}, ValueError, "task 'fill-masks' does not exist"),
    ],
)
def test_bad_sources(source, kwargs, error, message):
    with pytest.raises(error, match=message):
        untrained_model(source, **kwargs)


def _cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "exportcheck", *args], capture_output=True, text=True, timeout=300
    )


def test_cli_config_and_inputs():
    out = _cli("config", "arnir0/Tiny-LLM", "--layers", "2")
    assert out.returncode == 0, out.stderr
    assert '"num_hidden_layers": 2' in out.stdout and '"hidden_size": 192' in out.stdout
    out = _cli("inputs", "llama")
    assert out.returncode == 0, out.stderr
    assert "inputs: dict(input_ids:T7s2x3,attention_mask:T7s2x33,cache:DynamicCache(" in out.stdout
    assert "cache_length" in out.stdout


def test_cli_bad_input_is_one_line():
    out = _cli("inputs", "lama")
    assert out.returncode == 2
    assert out.stderr.strip().startswith("exportcheck inputs: untrained_model: 'lama'")
    assert "Traceback" not in out.stderr
    out = _cli("config", "llama", "--set", "novalue")
    assert out.returncode == 2 and "--set expects key=value" in out.stderr


@pytest.mark.parametrize("model_type", ["gemma4_assistant", "gemma4_unified_assistant"])
def test_drafters_take_the_main_model_states_and_export(model_type):
    from exportcheck import validate

    m = untrained_model(model_type)
    assert m.cache_argument == "shared_kv_states"
    assert any(note.startswith("draft step: a drafter") for note in m.notes)
    text = m.config.get_text_config()
    for (batch, new, cached), feeds in zip(m.shapes, [m.inputs, *m.other_inputs], strict=True):
        assert feeds["inputs_embeds"].shape == (batch, new, 2 * m.config.backbone_hidden_size)
        assert feeds["attention_mask"].shape == (batch, cached)
        assert set(feeds["shared_kv_states"]) == set(text.layer_types)
        for keys, values in feeds["shared_kv_states"].values():
            assert keys.shape[0] == values.shape[0] == batch
            assert keys.shape[2] == values.shape[2] == cached
    report = validate(m, exporter="onnx")
    assert report.ok, report.table()
    assert report.worst("exported") <= 1e-4 and report.worst("ort") <= 1e-4


def test_zero_projection_matrices_held_as_bare_parameters_are_randomized():
    from exportcheck.models.untrained import randomize_zero_weights

    class Projector(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.mm_input_projection_weight = torch.nn.Parameter(torch.zeros(4, 8))
            self.position_table = torch.nn.Parameter(torch.zeros(4, 8))  # not a projection
            self.query_tokens = torch.nn.Parameter(torch.zeros(1, 3, 8))  # a Q-Former's
            self.linear = torch.nn.Linear(8, 8)

    model = Projector()
    changed = randomize_zero_weights(model, 0.02)
    assert changed == ["mm_input_projection_weight", "query_tokens"]
    assert model.query_tokens.any()
    assert model.mm_input_projection_weight.any()
    assert not model.position_table.any()
