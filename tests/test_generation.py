"""The generation stage: greedy tokens through each runtime, the state fed back, equal to
eager ``generate(do_sample=False)``."""

import types

import pytest
import torch

from exportcheck import compare_generation, depth, untrained_model, validate, verdict
from exportcheck.families import NO_GENERATION
from exportcheck.runtimes.onnx import OnnxRuntime
from exportcheck.tasks import get_task

pytestmark = pytest.mark.models


@pytest.fixture(scope="module")
def llama_report():
    return validate("llama", exporter="onnx")


def test_generation_through_both_runtimes_equals_generate(llama_report):
    report = llama_report
    assert report.ok, report.table()
    stages = [s["stage"] for s in report.stages]
    assert stages[-3:] == ["eager_generate", "exported_generate", "ort_generate"]
    gen = report.generation
    assert gen["new_tokens"] == 8 and len(gen["tokens"][0]) == 8
    for runner in ("eager", "exported", "ort"):
        assert gen[runner]["ok"] and gen[runner]["tokens_equal"], gen[runner]
        assert gen[runner]["steps"] == 8 and gen[runner]["abs"] <= 1e-4
    # one call for the rest of the prompt, then one per new token after the first
    assert gen["ort"]["calls"] == 1 + 7
    assert gen["ort"]["tokens_equal_generate"]
    assert depth(report.to_dict())["generation"]


def test_the_generated_tokens_are_generate_s():
    m = untrained_model("llama")
    task = get_task(m.task)
    reference = task.generate_eager(m)
    from transformers import GenerationConfig

    from exportcheck.tasks.text_generation import generation_prompt

    ids, mask = generation_prompt(m)
    m.model.generation_config = GenerationConfig(pad_token_id=0)
    with torch.no_grad():
        direct = m.model.generate(
            input_ids=ids, attention_mask=mask, max_new_tokens=8, do_sample=False
        )
    assert torch.equal(reference.tokens, direct[:, ids.shape[1] :])


def _swapped_keys_and_values(original):
    """A runtime that wires the cache back wrongly: keys where values go."""

    def step(self, loaded, feeds, program):
        out = original(self, loaded, feeds, program)
        for layer in out.cache.layers:
            layer.keys, layer.values = layer.values, layer.keys
        return out

    return step


def test_a_generation_that_diverges_fails(monkeypatch):
    monkeypatch.setattr(OnnxRuntime, "step", _swapped_keys_and_values(OnnxRuntime.step))
    report = validate("llama", exporter="onnx")
    by_name = {s["stage"]: s for s in report.stages}
    # every single step is right: only feeding the state back shows the fault
    assert by_name["ort_run"]["ok"] and by_name["exported_generate"]["ok"]
    failed = by_name["ort_generate"]
    assert not failed["ok"]
    assert failed["error"].startswith("ort generation differs from eager")
    assert verdict(report.to_dict()) == {"exported_program": True, "onnx": False}
    assert not depth(report.to_dict())["generation"]


def test_a_tie_of_two_logits_may_pick_either_token():
    ref = types.SimpleNamespace(
        tokens=torch.tensor([[0, 1]]),
        logits=[torch.tensor([[1.0, 1.0 - 1e-6]]), torch.tensor([[0.0, 3.0]])],
    )
    run = types.SimpleNamespace(
        tokens=torch.tensor([[1, 1]]),
        logits=[torch.tensor([[1.0 - 2e-6, 1.0]]), torch.tensor([[0.0, 3.0]])],
    )
    result = compare_generation(ref, run, 1e-4)
    assert result["ok"] and not result["tokens_equal"]
    assert result["ties"] == [
        {"step": 0, "row": 0, "expected": 0, "got": 1, "gap": pytest.approx(1e-6, rel=0.05)}
    ]
    assert compare_generation(ref, run, 1e-7)["mismatches"]


def test_a_different_number_of_steps_fails():
    ref = types.SimpleNamespace(
        tokens=torch.zeros(1, 2, dtype=torch.int64), logits=[torch.zeros(1, 3)] * 2
    )
    run = types.SimpleNamespace(
        tokens=torch.zeros(1, 1, dtype=torch.int64), logits=[torch.zeros(1, 3)]
    )
    result = compare_generation(ref, run, 1e-4)
    assert not result["ok"] and "expected 2 steps" in result["mismatches"][0]["error"]


def test_a_model_without_cache_generates_with_full_forwards():
    report = validate("openai-gpt", exporter="export")
    assert report.ok, report.table()
    assert report.generation["prefill"].startswith("every step a full forward")
    assert report.generation["exported"]["calls"] == 8


def test_a_drafter_is_not_generated_and_says_why():
    report = validate("gemma4_assistant", exporter="export")
    assert "eager_generate" not in [s["stage"] for s in report.stages]
    assert report.generation["not_checked"].startswith("its inputs are not token ids")
    assert any(n.startswith("generation not checked") for n in report.notes)
    assert not depth(report.to_dict())["generation"]


def test_an_export_that_rejects_a_one_token_cache_prefills_more_eagerly_and_says_so():
    class Guarded(torch.nn.Module):
        """Eager accepts any cache; the export asks for at least 3 cached tokens."""

        def __init__(self, model):
            super().__init__()
            self.inner = model
            self.config = model.config

        @property
        def generation_config(self):
            return self.inner.generation_config

        @generation_config.setter
        def generation_config(self, value):
            self.inner.generation_config = value

        def generate(self, **kwargs):
            return self.inner.generate(**kwargs)

        def forward(self, input_ids, attention_mask, cache=None, use_cache=None):
            if torch.compiler.is_exporting():
                torch._check(attention_mask.shape[1] - input_ids.shape[1] >= 3)
            return self.inner(input_ids=input_ids, attention_mask=attention_mask, cache=cache)

    m = untrained_model("llama")
    m.model = Guarded(m.model)
    report = validate(m, exporter="export")
    assert report.ok, report.table()
    prefill = report.generation["exported"]["prefill"]
    # as few eager as the guard allows: 3 cached tokens
    assert prefill.startswith("first 3 of 6 prompt tokens eager: the export rejects")
    assert any("ExportedProgram generation: first 3 of 6" in n for n in report.notes)


def test_a_one_token_prompt_runs_new_tokens_eagerly_until_the_export_accepts_the_cache():
    """MusicGen's generate feeds a prompt's last token only, so its generation starts
    from one token; its ExportedProgram asks for a mask of at least 4 (a cache of 3):
    the first new tokens come from eager, the row says how many, the later ones match
    generate through the export."""
    m = untrained_model("musicgen")
    report = validate(m, exporter="export")
    assert report.ok, report.table()
    prefill = report.generation["exported"]["prefill"]
    assert prefill.startswith("the 1-token prompt and the first 3 new token(s) eager"), prefill
    assert report.generation["exported"]["tokens_equal_generate"]
    assert report.generation["exported"]["calls"] == 5


def _eager_loop(m):
    task = get_task(m.task)
    reference = task.generate_eager(m)
    with torch.no_grad():
        loop = task.generate(m, lambda name, feeds: m.model(**feeds), reference.tokens)
    return compare_generation(reference, loop, 1e-4)


@pytest.mark.parametrize("model_type", ["xlm", "xlnet"])
def test_a_generate_that_predicts_a_placeholder_is_on_the_ledger_and_still_differs(model_type):
    m = untrained_model(model_type)
    assert get_task(m.task).cannot_generate(m) == NO_GENERATION[model_type]
    assert not _eager_loop(m)["ok"]  # remove the entry once this passes


@pytest.mark.parametrize("model_type", ["musicgen", "musicgen_melody"])
def test_a_generate_with_a_delay_pattern_still_needs_its_settings_and_one_token_prompt(
    model_type,
):
    """Why GENERATION_INPUTS has MusicGen: without the start token its generate fails,
    and given a longer prompt it feeds only the prompt's last token to the first step
    (its logits equal a forward over that token alone), so the check starts from one."""
    from exportcheck.families import GENERATION_INPUTS
    from exportcheck.tasks.text_generation import _greedy_config, generation_prompt

    m = untrained_model(model_type)
    assert get_task(m.task).cannot_generate(m) is None
    ids, mask = generation_prompt(m)
    model = m.model
    saved = model.generation_config
    model.generation_config = _greedy_config(saved)
    model.generation_config.num_return_sequences = 1
    with pytest.raises(TypeError, match="NoneType"), torch.no_grad():  # no start token
        model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=2)
    _, settings, _, _ = GENERATION_INPUTS[model_type]
    for key, value in settings(model).items():
        setattr(model.generation_config, key, value)
    with torch.no_grad():
        out = model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=1,
            output_logits=True,
            return_dict_in_generate=True,
        )
        last_only = model(input_ids=ids[:, -1:], use_cache=False).logits[:, -1]
    model.generation_config = saved
    drops_the_prompt = torch.allclose(out.logits[0], last_only, rtol=0, atol=1e-5)
    # MusicGen's drops it, MusicGen Melody's keeps it: only the first starts from one token
    assert drops_the_prompt == (model_type == "musicgen")
    assert (GENERATION_INPUTS[model_type][0] == 1) == drops_the_prompt


def test_the_ledger_of_generation_is_explained():
    assert sorted(NO_GENERATION) == ["xlm", "xlnet"]
    assert all(len(reason) > 60 for reason in NO_GENERATION.values())


def test_input_caches_are_contiguous_as_a_runtime_returns_them():
    from exportcheck import make_dynamic_cache
    from exportcheck.tasks.text_generation import _contiguous

    longer = torch.randn(2, 1, 10, 4)
    view = longer[:, :, 2:7]  # a slice of a longer buffer, as some eager caches hold
    cache = make_dynamic_cache([(view, view * 2)])
    assert not cache.layers[0].keys.is_contiguous()
    out = _contiguous(cache)
    assert type(out) is type(cache) and out.layers[0].keys.is_contiguous()
    torch.testing.assert_close(out.layers[0].keys, view, rtol=0, atol=0)
    torch.testing.assert_close(out.layers[0].values, view * 2, rtol=0, atol=0)
    m = untrained_model("llama")
    assert all(t.is_contiguous() for t in (m.inputs["cache"].layers[0].keys,))


def test_a_row_says_when_a_token_differs_by_a_tie():
    from exportcheck.validation import ValidationReport, _note_ties

    report = ValidationReport(source="m", exporter="onnx", atol=1e-4)
    tie = {"step": 3, "row": 1, "expected": 5, "got": 7, "gap": 2e-5}
    _note_ties(report, "onnxruntime", {"ties": [tie]}, 1e-4)
    _note_ties(report, "eager", {"ties": []}, 1e-4)
    assert report.notes == [
        "onnxruntime generation: 1 token(s) differ where the reference's two best logits "
        "are within 0.0001 of each other (step 3 row 1): allowed"
    ]


def test_a_model_that_numbers_positions_unlike_generate_takes_them_as_input():
    """RoBERTa counts positions from its padding index when not given any, generate
    feeds cumsum(mask) - 1: the decode step takes position_ids, so the loop through the
    export equals generate, and its padded set still matches eager."""
    m = untrained_model("roberta")
    assert "position_ids" in m.inputs and m.dynamic_shapes["position_ids"][1] is not None
    assert any(note.startswith("position_ids as an input") for note in m.notes)
    # the left-padded set's positions skip the padding, as generate's do
    padded = m.input_sets[5]
    full_mask = padded["attention_mask"]
    assert full_mask[0, 0] == 0
    expected = (full_mask.cumsum(-1) - 1).clamp(min=0)[:, -padded["input_ids"].shape[1] :]
    assert torch.equal(padded["position_ids"], expected)
    report = validate(m, exporter="onnx")
    assert report.ok, report.table()
    assert report.generation["ort"]["tokens_equal_generate"]
    assert all(check["ok"] for check in report.model["eager_consistency"])
    # a model that numbers from 0 itself gets no extra input
    assert "position_ids" not in untrained_model("llama").inputs


def test_a_decoder_that_numbers_new_tokens_from_zero_takes_positions_as_input():
    """Bamba's forward, given no position_ids, numbers the new tokens of a decode step
    from 0 whatever its cache holds: without positions as an input, its decode step
    differs from a full forward over prompt + new tokens by about 3e-3. With them, as
    generate feeds them, eager is consistent."""
    from exportcheck.tasks import get_task

    m = untrained_model("bamba")
    assert "position_ids" in m.inputs
    assert any(note.startswith("position_ids as an input") for note in m.notes)
    cached = m.inputs[m.cache_argument].get_seq_length()
    assert m.inputs["position_ids"][-1, 0] == cached
    checks = get_task("text-generation").check_eager(m, 1e-4)
    assert checks and all(check["ok"] for check in checks), checks
