"""IDEFICS (v1): a language model whose gated cross-attention layers read the image.

``IdeficsForVisionText2Text`` scatters no image features into the prompt: its vision
model encodes each image (``pixel_values`` ``(batch, images, channels, side, side)``, as
``IdeficsProcessor`` gives them), the perceiver resampler (``use_resampler``) turns the
vision states into a fixed number of latents, and a gated cross-attention layer before
every ``cross_layer_interval``-th decoder layer reads them through
``image_attention_mask`` (``(batch, tokens, images)``: which image each token sees; the
processor sets a token's row from the last ``<image>`` token before it, the image token
included). A token that sees no image gets no cross-attention output
(``cross_attention_gate``).

The cross-attention layers keep nothing in the cache: ``generate`` keeps the vision
model's states (``image_hidden_states``) after the first step and hands them back to every
step as ``image_encoder_embeddings``, so each step runs the resampler and the
cross-attention keys and values again; the cache holds the self-attention layers only.
:func:`as_encoder_decoder` gives the image encoder-decoder route
(:mod:`exportcheck.tasks._image_seq2seq`) that view of the model: ``get_encoder()`` is
the vision model, ``forward`` a model call on its states (as ``image_encoder_embeddings``),
``generate`` the model's own from the image token. The decoder steps take the vision
states as their encoder states at every step, as ``generate`` does; the view's cache is
an ``EncoderDecoderCache`` of the model's self-attention layers and an empty
cross-attention part.

Every prompt holds one image and starts with its ``<image>`` token, so the processor's
``image_attention_mask`` is ones for every token: the one the view gives the model, and
the one ``generate`` extends over the new tokens (it repeats the mask's last row). A
prompt with an end-of-sequence token before its end, after which the processor lets no
token see the image, is not what the graphs take.
"""

from __future__ import annotations

import functools
from typing import Any

from . import Family, register
from ._views import view_base

#: the tiny config's vision tower: 28x28 images in 14x14 patches (4 patches and the
#: class token per image)
SIDE, PATCH = 28, 14


def image_token(config: Any) -> int:
    """The ``<image>`` token's id: the tokenizer adds ``<fake_token_around_image>`` and
    ``<image>`` after the base vocabulary (``vocab_size``), and the model embeds them
    with its ``additional_vocab_size`` extra rows."""
    if config.additional_vocab_size < 2:
        raise ValueError(
            f"IdeficsConfig has additional_vocab_size={config.additional_vocab_size}: the "
            "processor's <fake_token_around_image> and <image> tokens need 2 rows past the "
            "base vocabulary"
        )
    return int(config.vocab_size) + 1


def image_inputs(config: Any, batch: int, generator: Any) -> dict[str, Any]:
    """``batch`` prompts' images as ``IdeficsProcessor`` gives them: one image each, at
    the vision config's ``image_size``."""
    import torch

    vision = config.vision_config
    side = vision.image_size
    return {
        "pixel_values": torch.randn(
            (batch, 1, vision.num_channels, side, side), generator=generator
        )
    }


@functools.cache
def _image_encoder(base: type, check_rank: Any) -> type:
    """The encoder graph's module class on the task's encoder wrapper ``base`` (given by
    the image encoder-decoder route, with its rank check)."""

    class ImageEncoder(base):  # type: ignore[misc, valid-type]
        """The encoder graph: the prompts' images -> the vision model's states."""

        def forward(self, pixel_values: Any) -> Any:  # type: ignore[override]
            check_rank("pixel_values", pixel_values, 5, "images, channels, height, width")
            return self.encode(pixel_values=pixel_values)

    return ImageEncoder


@functools.cache
def _classes() -> dict[str, type]:
    """The view's classes (built on first use: torch is imported lazily)."""
    import torch
    from transformers.cache_utils import DynamicCache, EncoderDecoderCache
    from transformers.modeling_outputs import BaseModelOutput

    class ImageTower(torch.nn.Module):
        """The vision model as ``IdeficsModel.forward`` calls it: images ``(batch,
        images, channels, side, side)`` -> states ``(batch, images * patches, hidden)``,
        the ``image_hidden_states`` that ``generate`` keeps after the first step."""

        def __init__(self, model: Any) -> None:
            super().__init__()
            self.vision_model = model.model.vision_model

        def forward(self, pixel_values: Any) -> Any:
            batch = pixel_values.shape[0]
            states = self.vision_model(pixel_values=pixel_values.flatten(0, 1)).last_hidden_state
            return BaseModelOutput(last_hidden_state=states.reshape(batch, -1, states.shape[-1]))

    class IdeficsCrossAttender(view_base()):  # type: ignore[misc]
        """``IdeficsForVisionText2Text`` seen as an encoder-decoder (see the module)."""

        def __init__(self, model: Any) -> None:
            # the decoder's first token: the prompt starts with the image token
            super().__init__(model, ImageTower(model), image_token(model.config))

        # -- the encoder's inputs, for the image encoder-decoder route

        def encoder_inputs(self, config: Any, batch: int, generator: Any) -> dict[str, Any]:
            return image_inputs(config, batch, generator)

        def encoder_side(
            self, config: Any, shapes: list[tuple[Any, ...]], generator: Any, batch: Any
        ) -> Any:
            side = config.vision_config.image_size
            sets = [image_inputs(config, b, generator) for b, *_ in shapes]
            labels = [f"batch={b} 1x{side}x{side}" for b, *_ in shapes]
            labels[-1] += " at bounds"
            notes = [
                f"pixel_values (batch, 1 image, channels, {side}, {side}), as IdeficsProcessor "
                "gives them for one image per prompt; the resolution is static, so is the "
                "vision states' length; every prompt starts with the image token, so the "
                "processor's image_attention_mask is ones for every token; the decoder steps "
                "take the vision states at every step (the model caches no cross-attention "
                "keys and values: generate hands the states back as image_encoder_embeddings "
                "and the resampler and cross-attention run again), so the view's "
                "cross-attention cache is empty"
            ]
            return {
                "sets": sets,
                "dynamic_shapes": {"pixel_values": {0: batch}},
                "labels": labels,
                "notes": notes,
            }

        def encoder_class(self, base: type, check_rank: Any) -> type:
            """The encoder graph's module, on the task's encoder wrapper ``base``."""
            return _image_encoder(base, check_rank)

        # -- the cache: the model's DynamicCache <-> an EncoderDecoderCache

        def to_model_cache(self, cache: Any) -> Any:
            """The model's ``DynamicCache``: the view's self-attention part."""
            return cache.self_attention_cache

        def to_view_cache(self, cache: Any) -> Any:
            """The model's cache as an ``EncoderDecoderCache``: its layers, and an empty
            cross-attention part (the model recomputes the image's keys and values)."""
            return EncoderDecoderCache(cache, DynamicCache())

        def forward(
            self,
            encoder_outputs: Any,
            decoder_input_ids: Any,
            decoder_attention_mask: Any = None,
            cache: Any = None,
            use_cache: bool = True,
        ) -> Any:
            # the processor's mask for tokens after the prompt's one image token
            batch, length = decoder_input_ids.shape
            image_mask = torch.ones(
                (batch, length, 1), dtype=torch.int64, device=decoder_input_ids.device
            )
            out = self.model(
                input_ids=decoder_input_ids,
                attention_mask=decoder_attention_mask,
                image_encoder_embeddings=encoder_outputs.last_hidden_state,
                image_attention_mask=image_mask,
                cache=None if cache is None else self.to_model_cache(cache),
                use_cache=use_cache,
            )
            out.cache = self.to_view_cache(out.cache)
            return out

        def generate(self, **kwargs: Any) -> Any:
            """The model's ``generate`` on the images from the prompt of the image token
            alone (its image attention mask ones)."""
            start = self.generation_config.decoder_start_token_id
            batch = kwargs["pixel_values"].shape[0]
            ids = torch.full((batch, 1), start, dtype=torch.int64)
            return self.model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                image_attention_mask=torch.ones((batch, 1, 1), dtype=torch.int64),
                **kwargs,
            )

    return {"vision": ImageTower, "view": IdeficsCrossAttender}


def _randomize_gates(model: Any) -> None:
    """Random values for the tanh gates of the gated cross-attention layers
    (``alpha_cross_attn``, ``alpha_dense``), which ``alpha_initializer="zeros"`` (the
    config's default and the released checkpoints') leaves at zero: at zero the layers add
    nothing and the language model would not read the image. Trained gates are not zero,
    so a model with any nonzero gate keeps its own."""
    import torch

    gates = [
        p
        for name, p in model.named_parameters()
        if name.rsplit(".", 1)[-1] in ("alpha_cross_attn", "alpha_dense")
    ]
    if any(bool(p.any()) for p in gates):
        return
    with torch.no_grad():
        for p in gates:
            p.uniform_(0.5, 1.0)


def as_encoder_decoder(model: Any) -> Any:
    """``model`` (an ``IdeficsForVisionText2Text``) viewed as an image encoder-decoder:
    its vision model the encoder, its language model with the gated cross-attention
    layers (and the resampler) the decoder."""
    _randomize_gates(model)
    return _classes()["view"](model)


register(
    Family(
        name="idefics",
        model_types=("idefics",),
        config_fixes={
            "idefics": (
                {
                    "vision_config.image_size": SIDE,
                    "vision_config.patch_size": PATCH,
                    # the processor's <fake_token_around_image> and <image>
                    "additional_vocab_size": 2,
                },
                "images of 28x28 in 14x14 patches keep the vision length small; the default "
                "config embeds no token past the base vocabulary (additional_vocab_size 0), "
                "where the processor's <fake_token_around_image> and <image> are; the "
                "config's default use_resampler=False is kept: untrained, the perceiver "
                "resampler's latents (drawn from N(0, 1)) swamp what it reads from the image "
                "(projections of std 0.02), so the text would barely read the image (logits "
                "3e-3 apart for two images, against 0.25 without it)",
            )
        },
        input_layouts={
            "idefics": (
                {"as_encoder_decoder": as_encoder_decoder},
                "gated cross-attention layers of the language model read the vision states "
                "(no features scattered into the prompt) and cache nothing: exported as an "
                "image encoder-decoder (vision model, first decoder step, decoder step taking "
                "the vision states at every step as generate does, with the self-attention "
                "cache), the decoder starting from the image token",
            )
        },
    )
)
