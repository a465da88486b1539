"""Pop2Piano: the port of its feature extractor's log-mel segments, the encoder graph
conditioned on a composer per row as generate conditions it, and the decoder steps
reading the conditioned mask."""

import copy
import importlib.util
import os

import numpy as np
import pytest
import torch

from exportcheck import depth, untrained_model, validate
from exportcheck.families.pop2piano import (
    GENERATION_COMPOSER,
    _extractor_class,
    pop2piano_extractor,
)
from exportcheck.tasks import get_task
from exportcheck.tasks._seq2seq import decoder_start

TASK = "automatic-speech-recognition"


def _transformers_extractor(**kwargs):
    """transformers' Pop2PianoFeatureExtractor, its module loaded from its file: the lazy
    module refuses it without essentia and librosa, which only its beat tracking and
    resampling use; its spectrogram and padding methods need neither."""
    import transformers.models.pop2piano as package

    path = os.path.join(package.__path__[0], "feature_extraction_pop2piano.py")
    spec = importlib.util.spec_from_file_location(f"{package.__name__}._direct_extractor", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.Pop2PianoFeatureExtractor(**kwargs)


def test_the_port_computes_the_extractors_log_mel_segments_and_pads_them_as_it_does():
    reference = _transformers_extractor(feature_size=64)
    port = _extractor_class()(feature_size=64)
    rng = np.random.default_rng(0)
    clips = [0.1 * rng.standard_normal(n).astype("float32") for n in (11000, 7300)]
    # what its __call__ computes for each segment: the log of the floored mel power,
    # frames first (feature_extraction_pop2piano.py:420-428)
    segments = [
        np.transpose(np.log(np.clip(reference.mel_spectrogram(c[None]), 1e-6, None)), (0, 2, 1))
        for c in clips
    ]
    features, mask = reference._pad(segments, add_zero_line=False)
    out = port(clips, sampling_rate=22050, return_tensors="np")
    assert out["input_features"].shape == features.shape == (2, 11000 // 1024 + 1, 64)
    np.testing.assert_allclose(out["input_features"], features, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(out["attention_mask"], mask)
    assert mask[1].sum() == 7300 // 1024 + 1 and not mask[1, -1]


def test_a_sampling_rate_the_extractor_does_not_read_is_refused():
    with pytest.raises(ValueError, match="resample it first"):
        _extractor_class()(feature_size=8)([np.zeros(8000, dtype="float32")], sampling_rate=16000)


@pytest.fixture(scope="module")
def pop2piano():
    return untrained_model("pop2piano", task=TASK)


def _generate_route(model, features, mask, composer):
    """The encoder states and mask as generate computes them for one composer."""
    conditioned, conditioned_mask = model.get_mel_conditioner_outputs(
        input_features=features.clone(),
        composer=composer,
        generation_config=model.generation_config,
        attention_mask=mask,
    )
    states = model.get_encoder()(inputs_embeds=conditioned, attention_mask=conditioned_mask)
    return states.last_hidden_state, conditioned_mask


@pytest.mark.models
def test_the_features_are_d_model_wide_frames_with_their_mask(pop2piano):
    encoder = pop2piano.components[0]
    assert pop2piano_extractor(pop2piano.config).feature_size == pop2piano.config.d_model
    for feeds in encoder.input_sets:
        features, mask = feeds["input_features"], feeds["attention_mask"]
        assert features.shape[2] == pop2piano.config.d_model
        assert mask.shape == features.shape[:2]
        assert feeds["composer_ids"].shape == features.shape[:1]
        # padded frames hold the extractor's padding value
        assert (features[mask == 0] == 0).all()
    padded = [
        f for f, label in zip(encoder.input_sets, encoder.labels, strict=True) if "padded" in label
    ]
    assert padded and all((f["attention_mask"] == 0).any() for f in padded)


@pytest.mark.models
def test_the_encoder_graph_depends_on_the_composer_as_generate_does(pop2piano):
    model = pop2piano.model
    encoder = pop2piano.components[0]
    tokens = model.generation_config.composer_to_feature_token
    feeds = copy.deepcopy(encoder.input_sets[4])  # a padded set
    batch = feeds["input_features"].shape[0]
    program = torch.export.export(
        encoder.module, (), kwargs=copy.deepcopy(feeds), dynamic_shapes=encoder.dynamic_shapes
    )
    outputs = {}
    for name in ("composer1", "composer3"):
        ids = torch.full((batch,), tokens[name])
        with torch.no_grad():
            got = program.module()(**{**feeds, "composer_ids": ids})
            states, mask = _generate_route(
                model, feeds["input_features"], feeds["attention_mask"], name
            )
        torch.testing.assert_close(got["last_hidden_state"], states, rtol=1e-5, atol=1e-5)
        assert torch.equal(got["attention_mask"], mask)
        assert states.shape[1] == feeds["input_features"].shape[1] + 1
        outputs[name] = got["last_hidden_state"]
    assert (outputs["composer1"] - outputs["composer3"]).abs().max() > 1e-3
    # a composer per row: each row is what that row's composer alone gives
    ids = torch.tensor([tokens["composer1"], tokens["composer3"]] * batch)[:batch]
    with torch.no_grad():
        mixed = program.module()(**{**feeds, "composer_ids": ids})["last_hidden_state"]
    for row in range(batch):
        name = "composer1" if row % 2 == 0 else "composer3"
        torch.testing.assert_close(mixed[row], outputs[name][row], rtol=1e-5, atol=1e-5)


@pytest.mark.models
def test_a_row_masked_from_its_first_frame_is_zeroed_as_generate_zeroes_it(pop2piano):
    # the zero line the extractor puts after each song of a batch
    model = pop2piano.model
    encoder = pop2piano.components[0]
    feeds = copy.deepcopy(encoder.input_sets[0])
    feeds["input_features"][1] = 0.0
    feeds["attention_mask"][1] = 0
    feeds["composer_ids"][:] = model.generation_config.composer_to_feature_token["composer2"]
    with torch.no_grad():
        got = encoder.module(**copy.deepcopy(feeds))
        states, mask = _generate_route(
            model, feeds["input_features"], feeds["attention_mask"], "composer2"
        )
    torch.testing.assert_close(got["last_hidden_state"], states, rtol=1e-5, atol=1e-5)
    assert torch.equal(got["attention_mask"], mask) and not mask[1].any()


@pytest.mark.models
def test_the_decoder_steps_take_the_conditioned_mask_as_the_models_attention_mask(pop2piano):
    model = pop2piano.model
    init = pop2piano.components[1]
    feeds = next(
        f for f, label in zip(init.input_sets, init.labels, strict=True) if "padded" in label
    )
    mask = feeds["encoder_attention_mask"]
    assert (mask == 0).any()
    with torch.no_grad():
        got = init.module(**copy.deepcopy(feeds))["logits"]
        expected = model(
            encoder_outputs=(feeds["encoder_hidden_states"],),
            attention_mask=mask,
            decoder_input_ids=feeds["decoder_input_ids"],
        ).logits
        unmasked = model(
            encoder_outputs=(feeds["encoder_hidden_states"],),
            decoder_input_ids=feeds["decoder_input_ids"],
        ).logits
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert (got - unmasked).abs().max() > 1e-4  # the padding is masked


@pytest.mark.models
def test_pop2piano_validates_and_generates_as_generate_with_its_composer(pop2piano):
    report = validate(pop2piano, exporter="onnx")
    assert report.ok, report.table()
    assert all(depth(report.to_dict()).values()), depth(report.to_dict())
    gen = report.generation
    for runner in ("eager", "exported", "ort"):
        assert gen[runner]["ok"] and gen[runner]["tokens_equal"], gen[runner]
    assert gen["ort"]["tokens_equal_generate"] and gen["exported"]["tokens_equal_generate"]
    # the reference is generate(composer=GENERATION_COMPOSER); another composer gives
    # other logits, so the composer the graphs are fed is the one that matters
    feeds = get_task(TASK).generation_inputs(pop2piano)
    start = decoder_start(pop2piano.model, pop2piano.config)  # the untrained one has none
    with torch.no_grad():
        first = {
            name: pop2piano.model.generate(
                input_features=feeds["input_features"],
                attention_mask=feeds["attention_mask"],
                composer=name,
                decoder_start_token_id=start,
                max_new_tokens=1,
                do_sample=False,
                output_logits=True,
                return_dict_in_generate=True,
            ).logits[0]
            for name in (GENERATION_COMPOSER, "composer4")
        }
    assert (first[GENERATION_COMPOSER] - first["composer4"]).abs().max() > 1e-4
