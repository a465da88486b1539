"""Moonshine streaming: a config without the key-value head count its decoder reads, and
a decoder that adds position embeddings to the encoder's states in place."""

from __future__ import annotations

from . import Family, register

register(
    Family(
        name="moonshine_streaming",
        model_types=("moonshine_streaming",),
        config_fixes={
            "moonshine_streaming": (
                {"num_key_value_heads": 4},
                "MoonshineStreamingConfig (transformers 5.24) defines no num_key_value_heads "
                "while MoonshineStreamingDecoderLayer reads it: even the default config "
                "fails to build (AttributeError); one key-value head per attention head, "
                "as the shrunk config has 4",
            ),
        },
        task_known_failures={
            "automatic-speech-recognition": {
                "moonshine_streaming": (
                    r"eager is inconsistent: the decode step differs from a full forward",
                    "MoonshineStreamingDecoder.forward "
                    "(transformers/models/moonshine_streaming/modeling_moonshine_streaming.py"
                    ":820) adds its position embeddings to encoder_hidden_states in place "
                    "(encoder_hidden_states += ...): every decoder call shifts the encoder's "
                    "states once more, so a prefill and a decode step see different states, "
                    "and generate, which reuses one encoder output for every step, drifts; "
                    "the exported graphs copy the input and do not, so eager, the reference, "
                    "is the one that is wrong",
                ),
            },
        },
    )
)
