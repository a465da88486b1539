"""Granite Speech: a feature extractor that needs torchaudio."""

from __future__ import annotations

from . import Family, register

_TORCHAUDIO = (
    "GraniteSpeechFeatureExtractor (the feature extractor transformers maps to the model "
    "type, whose log-mel features the audio encoder reads) computes them with torchaudio, "
    "and no torchaudio wheel installs beside torch 2.13.0 here (PyPI's torchaudio pins "
    "another torch): the features cannot be built, so neither can the input sets"
)

register(
    Family(
        name="granite_speech",
        model_types=("granite_speech", "granite_speech_plus"),
        known_failures={
            "granite_speech": (
                r"GraniteSpeechFeatureExtractor requires the torchaudio library but it was "
                r"not found in your environment",
                _TORCHAUDIO,
            ),
            "granite_speech_plus": (
                r"GraniteSpeechFeatureExtractor requires the torchaudio library but it was "
                r"not found in your environment",
                _TORCHAUDIO.replace("model type", "model type (granite_speech_plus reuses it)"),
            ),
        },
    )
)
