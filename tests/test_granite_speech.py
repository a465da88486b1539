"""Granite Speech: the torch port of its torchaudio feature extractor, the mask of the
projector's outputs, and the conformer attention patch."""

import numpy as np
import pytest
import torch

from exportcheck import untrained_model
from exportcheck.families.granite_speech import (
    _extractor_class,
    conformer_attention_forward,
    granite_speech_extractor,
)


def test_the_port_computes_the_power_mel_spectrogram_of_transformers_numpy_reference():
    # transformers' own numpy spectrogram, configured as torchaudio's MelSpectrogram
    # defaults (periodic Hann window of win_length centred in n_fft, reflect padding,
    # power 2, HTK mel bank without norm): an independent implementation
    from transformers.audio_utils import mel_filter_bank, spectrogram, window_function

    extractor = _extractor_class()()
    wave = np.random.default_rng(0).standard_normal(16000 + 123).astype("float32") * 0.1
    bank = mel_filter_bank(
        num_frequency_bins=257,
        num_mel_filters=80,
        min_frequency=0.0,
        max_frequency=8000,
        sampling_rate=16000,
        norm=None,
        mel_scale="htk",
    )
    expected = spectrogram(
        wave,
        window_function(400, "hann", frame_length=512),
        frame_length=512,
        hop_length=160,
        power=2.0,
        mel_filters=bank,
        center=True,
        pad_mode="reflect",
    )
    got = extractor.power_mel(torch.from_numpy(wave)[None])[0].numpy()
    assert got.shape == expected.shape == (80, (16000 + 123) // 160 + 1)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-6)


def test_features_stack_frame_pairs_and_the_mask_counts_the_projectors_outputs():
    m = untrained_model("granite_speech", task="automatic-speech-recognition")
    extractor = granite_speech_extractor(m.config)
    rng = np.random.default_rng(1)
    lengths = (16000, 9000)
    out = extractor([rng.standard_normal(n).astype("float32") for n in lengths])
    features, mask = out["input_features"], out["input_features_mask"]
    # 101 mel frames of the longest clip, the odd last one dropped, pairs stacked
    assert features.shape == (2, 50, 160) and features.is_contiguous()
    assert out["audio_embed_sizes"] == extractor._get_num_audio_features(list(lengths))
    with torch.no_grad():
        projected = m.model.model.get_audio_features(features).pooler_output
    # the projector's outputs of the longest clip are all audio, the shorter one's fewer
    assert mask.shape == projected.shape[:2]
    assert mask.sum(-1).tolist() == out["audio_embed_sizes"] and out["audio_embed_sizes"][1] < 12


def test_a_sampling_rate_the_extractor_does_not_read_is_refused():
    with pytest.raises(ValueError, match="resample it first"):
        _extractor_class()()([np.zeros(8000, dtype="float32")], sampling_rate=8000)


@pytest.mark.parametrize("model_type", ["granite_speech", "granite_speech_plus"])
@pytest.mark.parametrize("frames", [13, 16, 24, 31])
def test_the_patched_attention_gives_the_models_numbers(model_type, frames):
    m = untrained_model(model_type, task="automatic-speech-recognition")
    attention = m.model.model.encoder.layers[0].attn
    dists = m.model.model.encoder.attention_dists
    states = torch.randn((3, frames, attention.pre_norm.normalized_shape[0]))
    with torch.no_grad():
        expected = attention(states, attention_dists=dists)
        got = conformer_attention_forward(attention, states, dists)
    assert attention.context_size == 8
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
