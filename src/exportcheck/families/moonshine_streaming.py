"""Moonshine streaming: a config without the key-value head count its decoder reads, and
a decoder that adds position embeddings to the encoder's states in place."""

from __future__ import annotations

from typing import Any

from ..patches import Patch
from . import Family, register

MODULE = "transformers.models.moonshine_streaming.modeling_moonshine_streaming"


def moonshine_decoder_forward(self, *args, encoder_hidden_states=None, **kwargs):
    """MoonshineStreamingDecoder.forward on a copy of the encoder's states."""
    if encoder_hidden_states is not None:
        encoder_hidden_states = encoder_hidden_states.clone()
    return moonshine_decoder_forward.original(
        self, *args, encoder_hidden_states=encoder_hidden_states, **kwargs
    )


def _install_moonshine_encoder_copy(patcher: Any, model: Any) -> None:
    """Give Moonshine streaming's decoder a copy of the encoder's states.

    Fixes: eager's decode step differs from a full forward over the same tokens:
    MoonshineStreamingDecoder.forward
    (transformers/models/moonshine_streaming/modeling_moonshine_streaming.py:820) adds
    its position embeddings to ``encoder_hidden_states`` in place, so every decoder call
    shifts the caller's encoder states once more; a prefill and the steps after it, and
    ``generate``, which reuses one encoder output for every step, see different states.
    The replacement passes a copy, so each call adds the embeddings once, as the exported
    graphs (which copy their inputs) do. The first call's numbers are unchanged.

    Since eager is wrong without it, :func:`exportcheck.validate` computes its eager
    reference with it (``corrects_eager``).

    Remove when: the decoder adds its position embeddings out of place.
    """
    patcher.replace_in(MODULE, "MoonshineStreamingDecoder", "forward", moonshine_decoder_forward)


MOONSHINE_ENCODER_COPY = Patch(
    name="moonshine_encoder_copy",
    fixes="eager is inconsistent: the decoder adds position embeddings to the encoder's "
    "states in place, so every call shifts them once more",
    remove_when="MoonshineStreamingDecoder adds its position embeddings out of place",
    install=_install_moonshine_encoder_copy,
    model_types=("moonshine_streaming",),
    corrects_eager=True,
)

register(
    Family(
        name="moonshine_streaming",
        model_types=("moonshine_streaming",),
        config_fixes={
            "moonshine_streaming": (
                {"num_key_value_heads": 4},
                "MoonshineStreamingConfig (transformers 5.24) defines no num_key_value_heads "
                "while MoonshineStreamingDecoderLayer reads it: even the default config "
                "fails to build (AttributeError); one key-value head per attention head, "
                "as the shrunk config has 4",
            ),
        },
        patches=(MOONSHINE_ENCODER_COPY,),
    )
)
