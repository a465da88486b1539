"""Kyutai speech-to-text: audio codec tokens summed into the text stream."""

from __future__ import annotations

from . import Family, register

register(
    Family(
        name="kyutai_speech_to_text",
        model_types=("kyutai_speech_to_text",),
        known_failures={
            "kyutai_speech_to_text": (
                r"KyutaiSpeechToTextConfig is not an encoder-decoder",
                "neither an encoder-decoder nor a placeholder merge: "
                "KyutaiSpeechToTextForConditionalGeneration encodes the audio with a Mimi "
                "codec into codebook tokens whose embeddings (offset per codebook, "
                "modeling_kyutai_speech_to_text.py:429) are summed with the text token's "
                "at every position of a stream, and has no get_audio_features; exportcheck "
                "exports neither form",
            ),
        },
    )
)
