"""T5Gemma: an encoder-decoder whose encoder-only model needs an encoder-only config."""

from __future__ import annotations

from . import Family, register

register(
    Family(
        name="t5gemma",
        model_types=("t5gemma",),
        task_config_fixes={
            "feature-extraction": {
                "t5gemma": (
                    {"is_encoder_decoder": False},
                    "T5GemmaEncoderModel (AutoModelForTextEncoding) refuses an "
                    "encoder-decoder config ('T5GemmaEncoderModel only supports "
                    "encoder-only model. Use `T5GemmaModel` instead.'); the config's "
                    "encoder part is what it builds, and "
                    "T5GemmaForConditionalGeneration sets the flag back itself",
                )
            }
        },
    )
)
