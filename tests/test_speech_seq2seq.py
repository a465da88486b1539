"""automatic-speech-recognition: speech encoder-decoders fed what their feature
extractor returns, exported as encoder, first decoder step and decoder step."""

import pytest
import torch

from exportcheck import depth, untrained_model, validate
from exportcheck.dims import refine_dynamic_shapes
from exportcheck.tasks import tasks_of

pytestmark = pytest.mark.models

TASK = "automatic-speech-recognition"


@pytest.fixture(scope="module")
def whisper():
    return untrained_model("whisper", task=TASK)


def test_whisper_keeps_its_one_frame_count_static_and_says_why(whisper):
    encoder = whisper.components[0]
    # (batch, mel bins, frames) as WhisperFeatureExtractor returns them, 30 s of frames
    assert {tuple(f["input_features"].shape[1:]) for f in encoder.input_sets} == {(80, 3000)}
    assert list(encoder.dynamic_shapes["input_features"]) == [0]  # the batch only
    assert any("input length static" in note for note in whisper.notes), whisper.notes
    batches = [f["input_features"].shape[0] for f in encoder.input_sets]
    assert len(set(batches)) == len(batches), "each set must have a shape of its own"
    step = whisper.components[2]
    assert "attention_mask" not in step.input_sets[0]  # the extractor returns none


def test_whisper_validates_and_transcribes_through_both_runtimes(whisper):
    report = validate(whisper, exporter="onnx")
    assert report.ok, report.table()
    assert all(depth(report.to_dict()).values()), depth(report.to_dict())
    gen = report.generation
    for runner in ("eager", "exported", "ort"):
        assert gen[runner]["ok"] and gen[runner]["tokens_equal"], gen[runner]
    assert gen["ort"]["calls"] == 1 + 8 and gen["ort"]["tokens_equal_generate"]


def test_features_of_a_dynamic_length_come_with_their_mask_and_distinct_shapes():
    m = untrained_model("speech_to_text", task=TASK)
    encoder, _, step = m.components
    dims = encoder.dynamic_shapes
    assert dims["input_features"][1].__name__ == "frames"
    assert dims["attention_mask"][1].__name__ == "frames"
    # the decoder takes the frames' mask; the states have the encoder's own length
    assert step.dynamic_shapes["encoder_hidden_states"][1].__name__ == "encoder_length"
    assert step.dynamic_shapes["attention_mask"][1].__name__ == "frames"
    frames = [f["input_features"].shape[1] for f in encoder.input_sets]
    assert len(set(frames)) == len(frames)
    padded = [
        f for f, label in zip(encoder.input_sets, encoder.labels, strict=True) if "padded" in label
    ]
    assert padded and all((f["attention_mask"] == 0).any() for f in padded)
    states = step.input_sets[0]["encoder_hidden_states"]
    assert states.shape[1] < encoder.input_sets[0]["input_features"].shape[1]  # subsampled


def test_an_encoder_that_returns_the_mask_of_its_states_hands_it_to_the_decoder():
    m = untrained_model("canary", task=TASK)
    encoder, _, step = m.components
    assert "attention_mask" in encoder.input_sets[0]  # the frames' mask goes in
    feeds = step.input_sets[0]
    assert "encoder_attention_mask" in feeds and "attention_mask" not in feeds
    assert feeds["encoder_attention_mask"].shape == feeds["encoder_hidden_states"].shape[:2]


def test_features_of_the_wrong_rank_say_what_is_expected(whisper):
    encoder = whisper.components[0].module
    features = whisper.components[0].input_sets[0]["input_features"]
    with pytest.raises(ValueError, match=r"input_features must have rank 3.*got rank 2.*\[None\]"):
        encoder(input_features=features[0])


def test_a_type_without_a_speech_model_says_so():
    assert TASK in tasks_of("whisper")
    with pytest.raises(ValueError, match=f"no {TASK} model in transformers"):
        untrained_model("llama", task=TASK)


def test_a_lattice_suggested_for_an_unprovable_guard_relaxes_the_dimension():
    length = torch.export.Dim("audio_length", min=2000, max=32000)
    error = RuntimeError(
        "Constraints violated (audio_length)!\n"
        "  - Not all values of audio_length = L['x'].size()[1] in the specified range "
        "satisfy the generated guard (1 % ((-1) + ((L['x'].size()[1] - 127) // 384))) != 0.\n"
        "Suggested fixes:\n"
        "  _audio_length = Dim('_audio_length', min=6, max=84)\n"
        "  audio_length = 384*_audio_length - 288\n"
    )
    relaxed, note = refine_dynamic_shapes({"x": {1: length}}, error)
    assert "relaxed to Dim.AUTO" in note
    assert relaxed["x"][1] is not length
    # a relation between two inputs is still a failure
    other = RuntimeError("Constraints violated (a)!\nSuggested fixes:\n  a = 2*b\n")
    assert refine_dynamic_shapes({"x": {1: length}}, other) is None
