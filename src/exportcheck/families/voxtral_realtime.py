"""Voxtral Realtime: no audio placeholder token; the audio is added to every position.

``VoxtralRealtimeModel.forward`` (transformers/models/voxtral_realtime/
modeling_voxtral_realtime.py) combines audio and text frame by frame: the causal
convolutions (stride 2) and the causal, sliding-window Whisper-style encoder turn the
log-mel frames into states, ``get_audio_features`` concatenates them four by four
(``downsample_factor``) and projects them, so that every ``audio_length_per_tok`` (8)
mel frames give one embedding, and that embedding is *added* to the text embedding of
the position of the same index (``inputs_embeds += audio_embeds``). The text stream
runs alongside the audio: ``generate`` feeds, at each step, the four encoder frames of
the new position (``prepare_inputs_for_generation`` slices ``encoder_inputs_embeds``)
through the encoder with its own cache, and stops when the audio runs out
(``max_length`` at most ``ceil(frames / 8)``). Every decoder layer also reads a time
condition, the sinusoidal embedding of the processor's ``num_delay_tokens``, in an
adaptive norm (``t_cond``).

Exported as the audio LMs of :mod:`exportcheck.tasks._audio_lm` are, with the
``added_audio`` merge: the audio encoder graph encodes the whole clip at once (its
convolutions and attention are causal, so frame ``i`` is what the streaming encoder gives
at step ``i``: eager ``generate``, which streams, is the reference), the driver adds its
frame ``i`` to the token embedding of position ``i``, and the decoder step is the text
model on input embeddings with ``t_cond`` of the default delay, then the LM head.
"""

from __future__ import annotations

import functools
from typing import Any

from . import Family, register


@functools.cache
def _text_lm_class() -> type:
    import types

    import torch

    class VoxtralRealtimeTextLM(torch.nn.Module):
        """The text model on input embeddings (audio already added), with the time
        condition of ``config.default_num_delay_tokens``, then the LM head: what
        ``VoxtralRealtimeForConditionalGeneration.forward`` runs after the audio merge."""

        def __init__(self, model: Any) -> None:
            super().__init__()
            self.language_model = model.model.language_model
            self.time_embedding = model.model.time_embedding
            self.lm_head = model.lm_head
            self.delay = float(model.config.default_num_delay_tokens)

        def forward(
            self,
            inputs_embeds: Any,
            attention_mask: Any = None,
            cache: Any = None,
            use_cache: bool = True,
            **kwargs: Any,
        ) -> Any:
            time = torch.full((1,), self.delay, dtype=inputs_embeds.dtype)
            t_cond = self.time_embedding(time)[None]
            out = self.language_model(
                inputs_embeds=inputs_embeds,
                attention_mask=attention_mask,
                cache=cache,
                use_cache=use_cache,
                t_cond=t_cond,
                **kwargs,
            )
            return types.SimpleNamespace(
                logits=self.lm_head(out.last_hidden_state), cache=out.cache
            )

    return VoxtralRealtimeTextLM


def text_lm(model: Any) -> Any:
    """The decoder LM of a Voxtral Realtime model (see :func:`_text_lm_class`)."""
    return _text_lm_class()(model)


register(
    Family(
        name="voxtral_realtime",
        model_types=("voxtral_realtime",),
        input_layouts={
            "voxtral_realtime": (
                {
                    "added_audio": True,
                    "text_lm": text_lm,
                    "samples_multiple_of": 1280,
                    "audio_settings": {"use_cache": False},
                },
                "no placeholder token: the projected audio embedding i is added to the text "
                "embedding of position i (VoxtralRealtimeModel.forward, inputs_embeds += "
                "audio_embeds), one per audio_length_per_tok = 8 mel frames of 160 samples, "
                "so the waveform is padded to whole tokens of 1280 samples as its processor "
                "(mistral_common's audio encoder) pads it; the audio encoder runs without its "
                "streaming cache (use_cache=False: causal, so the whole clip at once gives "
                "the same frames); the decoder step is the text model with the time "
                "condition of the default delay (t_cond) and the LM head, since the "
                "model's forward requires audio on every call. Not covered: another delay "
                "than the config's default needs another export, and a live stream would "
                "need the encoder's streaming step with its cache, which is not exported",
            ),
        },
    )
)
