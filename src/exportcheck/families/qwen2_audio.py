"""Qwen2-Audio: audio merged by a legacy expansion, not through get_audio_features."""

from __future__ import annotations

from . import Family, register

register(
    Family(
        name="qwen2_audio",
        model_types=("qwen2_audio",),
        known_failures={
            "qwen2_audio": (
                r"Qwen2AudioConfig is not an encoder-decoder \(is_encoder_decoder is not set\)",
                "Qwen2AudioForConditionalGeneration has no get_audio_features: its forward "
                "(transformers/models/qwen2_audio/modeling_qwen2_audio.py:644) runs the "
                "audio tower itself and, for prompts with one audio token per clip, expands "
                "the ids in _merge_input_ids_with_audio_features (line 444); exportcheck "
                "recognises an audio LM by get_audio_features and does not take the merge "
                "apart",
            ),
        },
    )
)
