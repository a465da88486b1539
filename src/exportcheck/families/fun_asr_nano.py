"""FunASR nano: an adaptor whose width is tied to the text model's, and a feature
extractor that needs torchaudio."""

from __future__ import annotations

from typing import Any

from . import Family, register

#: the extractor's module: transformers exports a placeholder without torchaudio
MODULE = "transformers.models.fun_asr_nano.feature_extraction_fun_asr_nano"


def kaldi_fbank(waveform: Any, bins: int, rate: int, length_ms: int, shift_ms: int) -> Any:
    """Log mel filter banks ``(frames, bins)`` of a 1-D waveform as
    ``torchaudio.compliance.kaldi.fbank`` computes them with its defaults and a Hamming
    window: frames of ``length_ms`` every ``shift_ms`` that fit in the waveform (no
    centring), no dither, each frame's mean removed, pre-emphasis 0.97, a symmetric
    Hamming window, the power spectrum of the next power of two, a triangular Kaldi mel
    bank from 20 Hz to half the rate, the natural log floored at float32's epsilon.
    Computed with transformers' numpy ``spectrogram``, the Kaldi replica its
    SeamlessM4T extractor uses."""
    import numpy as np
    import torch
    from transformers.audio_utils import mel_filter_bank, spectrogram, window_function

    frame = rate * length_ms // 1000
    fft = 1 << (frame - 1).bit_length()
    bank = mel_filter_bank(
        num_frequency_bins=fft // 2 + 1,
        num_mel_filters=bins,
        min_frequency=20,
        max_frequency=rate // 2,
        sampling_rate=rate,
        norm=None,
        mel_scale="kaldi",
        triangularize_in_mel_space=True,
    )
    features = spectrogram(
        np.asarray(waveform, dtype=np.float32),
        window_function(frame, "hamming", periodic=False),
        frame_length=frame,
        hop_length=rate * shift_ms // 1000,
        fft_length=fft,
        power=2.0,
        center=False,
        preemphasis=0.97,
        mel_filters=bank,
        log_mel="log",
        mel_floor=float(np.finfo(np.float32).eps),
        remove_dc_offset=True,
    )
    return torch.from_numpy(np.ascontiguousarray(features.T)).float()


def fun_asr_nano_extractor(config: Any) -> Any:
    """FunAsrNanoFeatureExtractor with its filter banks from :func:`kaldi_fbank`."""
    import importlib

    base = importlib.import_module(MODULE).FunAsrNanoFeatureExtractor

    class NumpyFbankFunAsrNanoFeatureExtractor(base):  # type: ignore[misc, valid-type]
        def _extract_fbank_features(self, waveform: Any) -> Any:
            if self.window != "hamming":
                raise ValueError(
                    f"the filter banks are computed with a Hamming window; this extractor "
                    f"asks for {self.window!r}"
                )
            return kaldi_fbank(
                waveform, self.feature_size, self.sampling_rate, self.frame_length, self.frame_shift
            )

    return NumpyFbankFunAsrNanoFeatureExtractor()


register(
    Family(
        name="fun_asr_nano",
        model_types=("fun_asr_nano",),
        config_fixes={
            "fun_asr_nano": (
                {"adaptor_config.intermediate_size": 16},
                "FunAsrNanoConfig validates adaptor_config.intermediate_size == "
                "text_config.hidden_size // 4; the shrunk text model is 64 wide, and the "
                "generic rules shrink the adaptor's width to 128 on their own",
            ),
        },
        input_layouts={
            "fun_asr_nano": (
                {"feature_extractor": fun_asr_nano_extractor},
                "FunAsrNanoFeatureExtractor computes Kaldi filter banks with torchaudio, "
                "which does not install beside torch 2.13.0: exportcheck computes the same "
                "filter banks with transformers' numpy spectrogram under Kaldi's settings "
                "(families/fun_asr_nano.py); the low-frame-rate stacking and the padding "
                "are the extractor's own",
            ),
        },
    )
)
