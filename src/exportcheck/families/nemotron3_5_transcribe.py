"""Nemotron 3.5 Transcribe (nemo_speechlm): a diarization head whose input width must
match its audio encoder's."""

from __future__ import annotations

from . import Family, register

register(
    Family(
        name="nemotron3_5_transcribe",
        model_types=("nemo_speechlm",),
        config_fixes={
            "nemo_speechlm": (
                {
                    "audio_config.diarization_config.head_config.audio_hidden_size": 64,
                    "word_timestamp_config.blank_token_id": 1023,
                },
                "Nemotron3DiarizationConfig validates head_config.audio_hidden_size == "
                "audio_config.hidden_size; the generic rules shrink the diarization "
                "encoder to 64 wide but leave the head's audio_hidden_size (not a name "
                "they shrink) at 512: 'head_config.audio_hidden_size (512) must match "
                "audio_config.hidden_size (64)'",
            ),
        },
    )
)
