"""Mllama (Llama 3.2 Vision): a tiled vision model whose states cross-attention layers of
the language model read.

``MllamaForConditionalGeneration`` scatters no image features into the prompt: its vision
model encodes each image's tiles (``pixel_values`` ``(batch, images, tiles, channels,
side, side)`` with ``aspect_ratio_ids`` and ``aspect_ratio_mask``, as
``MllamaImageProcessor`` gives them), its projector turns them into
``cross_attention_states``, and the language model's cross-attention layers read them
through ``cross_attention_mask`` (which image tiles each token attends to). Its cache is
one ``DynamicCache`` whose cross-attention layers hold the projected vision keys and
values after the first step, so later steps (``generate`` too) pass no vision states.

:func:`as_encoder_decoder` gives the image encoder-decoder route
(:mod:`exportcheck.tasks._image_seq2seq`) that view of the model: ``get_encoder()`` is
the vision model with the projector, ``forward`` a language-model call on its states,
``generate`` the model's own from the image token. The view's cache is an
``EncoderDecoderCache`` of the same layers: the self-attention layers' part, and the
cross-attention layers' part (the vision length, static).

Every image fills the whole grid of tiles (an aspect ratio of ``max_num_tiles`` tiles),
and every prompt starts with the image token, as the model's documented prompts do
(``<|image|><|begin_of_text|>...``): the processor's ``cross_attention_mask`` is then
ones for every token over every tile, which is the one the view gives the model.
"""

from __future__ import annotations

import functools
from typing import Any

from . import Family, register
from ._views import view_base

#: the tiny config's vision tower: 28x28 tiles of 14x14 patches (4 patches and the class
#: token per tile), at most 2 tiles per image
SIDE, PATCH, TILES = 28, 14, 2


def full_grid_ids(vision: Any) -> list[int]:
    """The aspect-ratio ids (1-based, as the processor numbers them: 0 pads) of the
    aspect ratios whose grid has ``max_num_tiles`` tiles: an image of one of them fills
    every tile, so its ``aspect_ratio_mask`` is all ones."""
    return [
        i + 1
        for i, (w, h) in enumerate(vision.supported_aspect_ratios)
        if w * h == vision.max_num_tiles
    ]


def tile_inputs(config: Any, batch: int, generator: Any) -> dict[str, Any]:
    """``batch`` prompts' images as ``MllamaImageProcessor`` gives them: one image each,
    cut into ``max_num_tiles`` tiles of ``image_size`` (an aspect ratio that fills the
    grid, drawn among those of the config), with its aspect-ratio id and mask."""
    import torch

    vision = config.vision_config
    ids = torch.tensor(full_grid_ids(vision))
    if ids.numel() == 0:
        raise ValueError(
            f"no aspect ratio of {vision.supported_aspect_ratios} has max_num_tiles="
            f"{vision.max_num_tiles} tiles: exportcheck builds images that fill the grid"
        )
    tiles, side = vision.max_num_tiles, vision.image_size
    pick = torch.randint(0, ids.numel(), (batch, 1), generator=generator)
    return {
        "pixel_values": torch.randn(
            (batch, 1, tiles, vision.num_channels, side, side), generator=generator
        ),
        "aspect_ratio_ids": ids[pick],
        "aspect_ratio_mask": torch.ones((batch, 1, tiles), dtype=torch.int64),
    }


@functools.cache
def _tile_encoder(base: type, check_rank: Any) -> type:
    """The encoder graph's module class on the task's encoder wrapper ``base`` (given by
    the image encoder-decoder route, with its rank check)."""

    class TileEncoder(base):  # type: ignore[misc, valid-type]
        """The encoder graph: an image's tiles, aspect-ratio id and mask -> the
        cross-attention states."""

        def forward(  # type: ignore[override]
            self, pixel_values: Any, aspect_ratio_ids: Any, aspect_ratio_mask: Any
        ) -> Any:
            check_rank("pixel_values", pixel_values, 6, "images, tiles, channels, height, width")
            return self.encode(
                pixel_values=pixel_values,
                aspect_ratio_ids=aspect_ratio_ids,
                aspect_ratio_mask=aspect_ratio_mask,
            )

    return TileEncoder


@functools.cache
def _classes() -> dict[str, type]:
    """The view's classes (built on first use: torch is imported lazily)."""
    import torch
    from transformers.cache_utils import DynamicCache, EncoderDecoderCache
    from transformers.modeling_outputs import BaseModelOutput

    class TileVision(torch.nn.Module):
        """The vision model and the projector, as ``MllamaModel.forward`` calls them:
        tiles -> ``cross_attention_states`` ``(batch, images * tiles * patches,
        hidden)``."""

        def __init__(self, model: Any) -> None:
            super().__init__()
            self.vision_model = model.model.vision_model
            self.projector = model.model.multi_modal_projector
            self.hidden_size = model.model.hidden_size

        def forward(self, pixel_values: Any, aspect_ratio_ids: Any, aspect_ratio_mask: Any) -> Any:
            states = self.vision_model(
                pixel_values=pixel_values,
                aspect_ratio_ids=aspect_ratio_ids,
                aspect_ratio_mask=aspect_ratio_mask,
            ).last_hidden_state
            states = self.projector(states).reshape(-1, states.shape[-2], self.hidden_size)
            batch = pixel_values.shape[0]
            return BaseModelOutput(last_hidden_state=states.reshape(batch, -1, self.hidden_size))

    def _dynamic(layers: list[Any]) -> Any:
        cache = DynamicCache()
        cache.layers = list(layers)
        return cache

    class MllamaCrossAttender(view_base()):  # type: ignore[misc]
        """``MllamaForConditionalGeneration`` seen as an encoder-decoder (see the
        module)."""

        def __init__(self, model: Any) -> None:
            # the decoder's first token: the prompt starts with the image token
            super().__init__(model, TileVision(model), model.config.image_token_index)
            text = model.config.get_text_config(decoder=True)
            self.cross_layers = sorted(set(text.cross_attention_layers))
            self.n_layers = text.num_hidden_layers

        # -- the encoder's inputs, for the image encoder-decoder route

        def encoder_inputs(self, config: Any, batch: int, generator: Any) -> dict[str, Any]:
            return tile_inputs(config, batch, generator)

        def encoder_side(
            self, config: Any, shapes: list[tuple[Any, ...]], generator: Any, batch: Any
        ) -> Any:
            vision = config.vision_config
            sets = [tile_inputs(config, b, generator) for b, *_ in shapes]
            side, tiles = vision.image_size, vision.max_num_tiles
            labels = [f"batch={b} 1x{tiles}x{side}x{side}" for b, *_ in shapes]
            labels[-1] += " at bounds"
            notes = [
                f"pixel_values (batch, 1 image, {tiles} tiles, channels, {side}, {side}) "
                "with aspect_ratio_ids and aspect_ratio_mask, as MllamaImageProcessor gives "
                "them for one image per prompt that fills the grid of tiles; the images, "
                "tiles and resolution are static, so are the cross-attention states' length "
                "and the cross-attention part of the cache; every prompt starts with the "
                "image token, so the processor's cross_attention_mask is ones for every "
                "token over every tile"
            ]
            dims = {0: batch}
            return {
                "sets": sets,
                "dynamic_shapes": {
                    "pixel_values": dims,
                    "aspect_ratio_ids": dims,
                    "aspect_ratio_mask": dims,
                },
                "labels": labels,
                "notes": notes,
            }

        def encoder_class(self, base: type, check_rank: Any) -> type:
            """The encoder graph's module, on the task's encoder wrapper ``base``."""
            return _tile_encoder(base, check_rank)

        # -- the cache: the model's DynamicCache <-> an EncoderDecoderCache

        def to_model_cache(self, cache: Any) -> Any:
            """The model's ``DynamicCache`` of the view's cache's layers, in layer order."""
            own = iter(cache.self_attention_cache.layers)
            cross = iter(cache.cross_attention_cache.layers)
            return _dynamic(
                [next(cross) if i in self.cross_layers else next(own) for i in range(self.n_layers)]
            )

        def to_view_cache(self, cache: Any) -> Any:
            """The model's cache as an ``EncoderDecoderCache``: its self-attention layers,
            and its cross-attention layers (the projected vision keys and values)."""
            layers = list(cache.layers)
            own = [layer for i, layer in enumerate(layers) if i not in self.cross_layers]
            cross = [layer for i, layer in enumerate(layers) if i in self.cross_layers]
            return EncoderDecoderCache(_dynamic(own), _dynamic(cross))

        def forward(
            self,
            encoder_outputs: Any,
            decoder_input_ids: Any,
            decoder_attention_mask: Any = None,
            cache: Any = None,
            use_cache: bool = True,
        ) -> Any:
            # the processor's mask for tokens after an image that fills every tile, as
            # floats: the model computes ``1.0 - mask``, which on the processor's int64
            # mask the ONNX exporter fails to decompose ("aten::sub() Expected a value of
            # type 'Tensor' for argument 'self' but instead found type 'float'", as
            # families/prophetnet.py's masks); on ones both give the same numbers
            tiles = self.config.vision_config.max_num_tiles
            batch, length = decoder_input_ids.shape
            cross_mask = torch.ones(
                (batch, length, 1, tiles), dtype=self.model.dtype, device=decoder_input_ids.device
            )
            # a cached step reads the vision keys and values from the cache, as generate
            # does (given the states again, the layers would append them to the cache)
            states = encoder_outputs.last_hidden_state if cache is None else None
            model_cache = None if cache is None else self.to_model_cache(cache)
            out = self.model(
                input_ids=decoder_input_ids,
                attention_mask=decoder_attention_mask,
                cross_attention_states=states,
                cross_attention_mask=cross_mask,
                cache=model_cache,
                use_cache=use_cache,
            )
            out.cache = self.to_view_cache(out.cache)
            return out

        def generate(self, **kwargs: Any) -> Any:
            """The model's ``generate`` on the image's tiles from the prompt of the image
            token alone (its cross-attention mask ones over every tile)."""
            start = self.generation_config.decoder_start_token_id
            pixels = kwargs["pixel_values"]
            batch = pixels.shape[0]
            ids = torch.full((batch, 1), start, dtype=torch.int64)
            mask = torch.ones((batch, 1, pixels.shape[1], pixels.shape[2]), dtype=torch.int64)
            return self.model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                cross_attention_mask=mask,
                **kwargs,
            )

    return {"vision": TileVision, "view": MllamaCrossAttender}


def _randomize_gates(model: Any) -> None:
    """Random values for the tanh gates initialisation leaves at zero (the vision
    embeddings' aspect-ratio and tile-position gates, the text cross-attention layers'
    attention and MLP gates): at zero the aspect ratio would not change the image's states
    and the language model would not read them at all. Trained gates are not zero, so a
    model with any nonzero gate keeps its own."""
    import torch

    # ``...embedding.gate``, ``cross_attn_attn_gate``, ``cross_attn_mlp_gate``
    gates = [p for name, p in model.named_parameters() if name.endswith("gate") and p.numel() == 1]
    if any(bool(p.any()) for p in gates):
        return
    with torch.no_grad():
        for p in gates:
            p.uniform_(0.5, 1.0)


def as_encoder_decoder(model: Any) -> Any:
    """``model`` (an ``MllamaForConditionalGeneration``) viewed as an image
    encoder-decoder: its vision model and projector the encoder, its language model with
    the cross-attention layers the decoder."""
    _randomize_gates(model)
    return _classes()["view"](model)


register(
    Family(
        name="mllama",
        model_types=("mllama",),
        config_fixes={
            "mllama": (
                {
                    # layer 0 self-attention (the cache's length), layer 1 cross-attention
                    "text_config.cross_attention_layers": [1],
                    "vision_config.image_size": SIDE,
                    "vision_config.patch_size": PATCH,
                    "vision_config.max_num_tiles": TILES,
                    # get_all_supported_aspect_ratios(2) of the image processor
                    "vision_config.supported_aspect_ratios": [[1, 1], [1, 2], [2, 1]],
                    "vision_config.num_hidden_layers": 2,
                    "vision_config.num_global_layers": 1,
                    "vision_config.intermediate_layers_indices": [0, 1],
                    # the vision model's output: its last states and the 2 intermediate
                    # ones, of the shrunk hidden size 64
                    "vision_config.vision_output_dim": 64 * 3,
                },
                "the shrunk config keeps the full model's cross_attention_layers (3, 8, ...: "
                "none of the 2 text layers, so nothing reads the image) and "
                "intermediate_layers_indices (3, 7, ...: past the 2 vision layers); tiles of "
                "28x28 in 14x14 patches, at most 2 tiles per image, keep the vision length "
                "small; vision_output_dim follows (hidden size x 3)",
            )
        },
        input_layouts={
            "mllama": (
                {"as_encoder_decoder": as_encoder_decoder},
                "cross-attention layers of the language model read the projected vision "
                "states (no features scattered into the prompt), its DynamicCache keeping "
                "their keys and values after the first step: exported as an image "
                "encoder-decoder (vision model and projector, first decoder step, decoder "
                "step with the cache split into self- and cross-attention parts), the "
                "decoder starting from the image token",
            )
        },
    )
)
