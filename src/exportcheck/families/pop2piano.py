"""Pop2Piano: piano MIDI tokens from a spectrogram conditioned on a composer."""

from __future__ import annotations

from . import Family, register

register(
    Family(
        name="pop2piano",
        model_types=("pop2piano",),
        task_known_failures={
            "automatic-speech-recognition": {
                "pop2piano": (
                    r"Pop2PianoStack\.forward takes neither input_features nor input_values",
                    "its encoder (a T5 stack) takes embeddings: "
                    "Pop2PianoForConditionalGeneration.forward "
                    "(transformers/models/pop2piano/modeling_pop2piano.py:896-897) feeds "
                    "input_features, already d_model wide, to it as inputs_embeds, and "
                    "generate first prepends a composer embedding chosen by name "
                    "(get_mel_conditioner_outputs, :806-852) from "
                    "generation_config.composer_to_feature_token, which only a hub "
                    "checkpoint's generation config holds; the task's audio encoder graph "
                    "takes log-mel features or a waveform",
                ),
            },
        },
    )
)
