"""VibeVoice: speech synthesis with a diffusion head."""

from __future__ import annotations

from . import Family, register

register(
    Family(
        name="vibevoice",
        model_types=("vibevoice",),
        known_failures={
            "vibevoice": (
                r"VibeVoiceConfig is not an encoder-decoder",
                "text to speech, not speech recognition: VibeVoiceForConditionalGeneration "
                "(transformers/models/vibevoice/modeling_vibevoice.py:368) generates "
                "acoustic latents with a diffusion head (generation_vibevoice.py), and the "
                "class has no get_audio_features; neither the encoder-decoder graphs nor "
                "the audio-LM graphs of exportcheck describe it",
            ),
        },
    )
)
