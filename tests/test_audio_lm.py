"""Audio LMs: an audio encoder whose frames replace the audio tokens of a causal LM's
input embeddings, exported as audio encoder, token embedding and decoder step."""

import pytest
import torch

from exportcheck import untrained_model, validate
from exportcheck.models.sources import resolve_config
from exportcheck.tasks import _audio_lm


@pytest.fixture(scope="module")
def glmasr():
    return untrained_model("glmasr", task="text2text-generation")


def test_an_audio_lm_is_built_as_three_graphs_with_the_decoder_on_embeddings(glmasr):
    assert [c.name for c in glmasr.components] == ["audio_encoder", "embed_tokens", "decoder"]
    step = glmasr.components[2]
    assert set(step.input_sets[0]) == {"inputs_embeds", "attention_mask", "cache"}
    assert any(s["attention_mask"][0, 0] == 0 for s in step.input_sets)  # a left-padded set
    encoder = glmasr.components[0]
    masks = [s["input_features_mask"] for s in encoder.input_sets]
    assert all(bool((m == 0).any()) for m in masks[:-1])  # clips of different lengths
    assert len({tuple(s["input_features"].shape) for s in encoder.input_sets}) == 7


def test_the_encoder_leaves_out_the_padded_frames(glmasr):
    encoder = glmasr.components[0]
    feeds = encoder.input_sets[0]
    with torch.no_grad():
        both = encoder.module(**feeds)
        alone = [encoder.module(**{k: v[i : i + 1] for k, v in feeds.items()}) for i in range(2)]
    # the rows' frames, each as long as its clip: the short clip gives fewer
    assert both.shape[0] == sum(a.shape[0] for a in alone)
    assert alone[0].shape[0] > alone[1].shape[0]
    assert torch.allclose(both, torch.cat(alone), atol=1e-5)


def test_features_of_the_wrong_rank_say_what_is_expected(glmasr):
    encoder = glmasr.components[0]
    features = encoder.input_sets[0]["input_features"]
    mask = encoder.input_sets[0]["input_features_mask"]
    with pytest.raises(ValueError, match=r"input_features must have rank 3"):
        encoder.module(input_features=features[0], input_features_mask=mask[0])


@pytest.mark.models
@pytest.mark.parametrize(
    ("model_type", "task"),
    [("glmasr", "text2text-generation"), ("omniasr", "automatic-speech-recognition")],
)
def test_an_audio_lm_validates_and_generates_through_both_runtimes(model_type, task):
    report = validate(model_type, task=task, exporter="onnx")
    assert report.ok, report.table()
    assert report.verdicts == {"exported_program": True, "onnx": True}
    for runtime in ("exported", "ort"):
        assert report.generation[runtime]["tokens_equal_generate"], report.generation
    consistent = next(s for s in report.stages if s["stage"] == "eager_consistent")
    assert consistent["ok"]


def test_a_config_without_an_audio_token_says_so():
    config = resolve_config("voxtral")
    with pytest.raises(ValueError, match=r"VoxtralConfig names no audio placeholder token"):
        _audio_lm.audio_token(config)


def test_tiny_configs_move_placeholder_tokens_inside_the_text_vocabulary():
    glm = resolve_config("glmasr")
    assert glm.audio_token_id < glm.text_config.vocab_size
    granite = resolve_config("granite_speech")
    # two names of one token keep one id
    assert granite.audio_token_id == granite.audio_token_index < granite.text_config.vocab_size
    special = {
        getattr(granite.text_config, n, None)
        for n in ("pad_token_id", "bos_token_id", "eos_token_id")
    }
    assert granite.audio_token_id not in special
