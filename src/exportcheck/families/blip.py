"""BLIP: an image captioner, a ViT whose states a BERT-like text decoder cross-attends to.

``BlipForConditionalGeneration`` names no image placeholder token and sets no
``is_encoder_decoder``, but it is an image encoder-decoder: ``vision_model`` encodes the
image, and ``text_decoder`` (a causal LM with cross-attention layers, whose cache is an
``EncoderDecoderCache``) reads its last hidden states. Its ``generate`` runs the vision
model once, then the text decoder's ``generate`` from the beginning-of-sequence token
(the processor's ``[DEC]``) with those states. :func:`as_encoder_decoder` gives the
image encoder-decoder route (:mod:`exportcheck.tasks._image_seq2seq`) that view of the
model: ``get_encoder()`` is the vision model, ``forward`` a text decoder call on the
encoder's states, ``generate`` the model's own.
"""

from __future__ import annotations

import functools
from typing import Any

from . import Family, register
from ._views import view_base


@functools.cache
def _captioner() -> type:
    """The view's class (built on first use: torch is imported lazily)."""

    class BlipCaptioner(view_base()):  # type: ignore[misc]
        """``BlipForConditionalGeneration`` seen as an encoder-decoder: the vision model
        is its encoder, the text decoder its decoder, called as the model's ``forward``
        calls them (the image's last hidden states cross-attended without a mask)."""

        def __init__(self, model: Any) -> None:
            # the decoder's first token: generate writes bos_token_id over the prompt's
            # first id, and starts from it alone when given no prompt (the processor
            # given only images returns only pixel_values)
            super().__init__(model, model.vision_model, model.config.text_config.bos_token_id)

        @property
        def language_model(self) -> Any:
            """The text decoder, whose ``generate`` the model's ``generate`` calls."""
            return self.model.text_decoder

        def forward(
            self,
            encoder_outputs: Any,
            decoder_input_ids: Any,
            decoder_attention_mask: Any = None,
            cache: Any = None,
            use_cache: bool = True,
        ) -> Any:
            return self.model.text_decoder(
                input_ids=decoder_input_ids,
                attention_mask=decoder_attention_mask,
                encoder_hidden_states=encoder_outputs.last_hidden_state,
                cache=cache,
                use_cache=use_cache,
            )

        def generate(self, **kwargs: Any) -> Any:
            return self.model.generate(**kwargs)

    return BlipCaptioner


def as_encoder_decoder(model: Any) -> Any:
    """``model`` (a ``BlipForConditionalGeneration``) viewed as an image
    encoder-decoder: its vision model the encoder, its text decoder the decoder."""
    return _captioner()(model)


register(
    Family(
        name="blip",
        model_types=("blip",),
        input_layouts={
            "blip": (
                {"as_encoder_decoder": as_encoder_decoder},
                "an image captioner without is_encoder_decoder or an image placeholder "
                "token: its text decoder cross-attends to the vision model's last hidden "
                "states with an EncoderDecoderCache, so it is exported as an image "
                "encoder-decoder (vision model, first decoder step, decoder step), the "
                "decoder starting from bos_token_id as its generate does",
            )
        },
    )
)
