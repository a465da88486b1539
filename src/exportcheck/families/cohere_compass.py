"""Cohere Compass: rope parameters per layer type."""

from __future__ import annotations

from . import Family, register

register(
    Family(
        name="cohere_compass",
        model_types=("cohere_compass_text", "cohere_compass"),
        config_fixes={
            "cohere_compass_text": (
                {
                    "rope_parameters": {
                        "full_attention": {"rope_type": "default", "rope_theta": 10000.0}
                    }
                },
                "rope_parameters per layer type default to {}: no entry for "
                "full_attention (KeyError)",
            ),
            "cohere_compass": (
                {
                    "text_config.rope_parameters": {
                        "full_attention": {"rope_type": "default", "rope_theta": 10000.0}
                    }
                },
                "the vision-language model's text config, as the text model's: rope "
                "parameters per layer type default to {}: no entry for full_attention "
                "(KeyError)",
            ),
        },
    )
)
