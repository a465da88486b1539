"""FunASR nano: an adaptor whose width is tied to the text model's, and a feature
extractor that needs torchaudio."""

from __future__ import annotations

from . import Family, register

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
        known_failures={
            "fun_asr_nano": (
                r"FunAsrNanoFeatureExtractor requires the torchaudio library but it was not "
                r"found in your environment",
                "FunAsrNanoFeatureExtractor (the feature extractor transformers maps to "
                "the model type) computes its filter banks with torchaudio, and no "
                "torchaudio wheel installs beside torch 2.13.0 here (PyPI's torchaudio pins "
                "another torch): the features cannot be built, so neither can the input sets",
            ),
        },
    )
)
