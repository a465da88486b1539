"""Voxtral: the audio token set by the processor, not the config (the realtime variant,
which adds audio to every position instead, is in :mod:`.voxtral_realtime`)."""

from __future__ import annotations

from . import Family, register

register(
    Family(
        name="voxtral",
        model_types=("voxtral",),
        config_fixes={
            "voxtral": (
                {"audio_token_id": 24},
                "VoxtralConfig's audio_token_id defaults to None; VoxtralProcessor sets the "
                "placeholder to id 24 (processing_voxtral.py:86, self.audio_token_id = 24), "
                "inside the tiny vocabulary",
            ),
        },
    )
)
