"""Qwen3-ASR: an audio LM whose audio encoder attends within windows it lists from the
frame mask; the task's audio encoder graph takes those bounds as an input
(:func:`exportcheck.tasks._audio_lm.audio_windows`) and the attention runs over them
under one block-diagonal mask (patch ``vision_segment_attention``, shared with the
variable-resolution vision towers)."""

from __future__ import annotations

from . import Family, register

register(
    Family(
        name="qwen3_asr",
        model_types=("qwen3_asr",),
        config_fixes={
            "qwen3_asr": (
                {"audio_config.output_dim": 64},
                "Qwen3ASRMultiModalProjector ends in audio_config.output_dim (3584, the "
                "full text model's width), which the generic rules do not tie to the text "
                "model: the shrunk text model is 64 wide, and with 3584 the model's own "
                "forward fails 'Audio features and audio tokens do not match, tokens: 16, "
                "features: 16' (the placeholders' embeddings and the frames differ in width)",
            ),
        },
    )
)
