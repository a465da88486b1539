"""Voxtral: the audio token set by the processor, not the config; and a realtime variant
that adds audio to every position instead."""

from __future__ import annotations

from . import Family, register

register(
    Family(
        name="voxtral",
        model_types=("voxtral", "voxtral_realtime"),
        config_fixes={
            "voxtral": (
                {"audio_token_id": 24},
                "VoxtralConfig's audio_token_id defaults to None; VoxtralProcessor sets the "
                "placeholder to id 24 (processing_voxtral.py:86, self.audio_token_id = 24), "
                "inside the tiny vocabulary",
            ),
        },
        known_failures={
            "voxtral_realtime": (
                r"VoxtralRealtimeConfig names no audio placeholder token",
                "not a placeholder merge: VoxtralRealtimeModel.forward "
                "(transformers/models/voxtral_realtime/modeling_voxtral_realtime.py:948) "
                "encodes the audio as a stream (a convolution padding cache and an encoder "
                "cache in get_audio_features) and adds one audio frame's embedding to each "
                "text position's, so there is no audio token to scatter frames over; "
                "exportcheck's audio-LM graphs replace placeholder embeddings",
            ),
        },
    )
)
