"""Image encoder-decoders of the image-text-to-text mapping: the image encoder, the first
decoder step and the decoder step, as :mod:`exportcheck.tasks._seq2seq` exports text
and speech encoder-decoders.

The encoder's inputs are built from the config as the model's processor gives them:

* ``pixel_values`` ``(batch, channels, side, side)`` at the encoder config's
  ``image_size`` (a vision encoder-decoder's ViT, PP-FormulaNet): the processors resize
  every image to it, so the resolution and the encoder states' length stay static and
  only the batch is dynamic;
* ``flattened_patches`` ``(batch, patches, 2 + channels * patch ** 2)`` with their
  ``attention_mask`` (Pix2Struct): each image cut into a grid of patches, each patch
  preceded by its 1-based row and column, padded with zero rows to the batch's longest
  (mask 0). The patch count is dynamic, and so is the encoder states' length;
* ``input_ids``, ``attention_mask`` and ``pixel_values`` (an encoder of text and image:
  T5Gemma 2, Florence-2): the prompt with one image's placeholder tokens (as many as
  the image's feature rows, between the begin- and end-of-image tokens its config
  names), text tokens after them, right-padded as a tokenizer pads a batch, and one
  image per prompt at the vision config's ``image_size``. The graph merges as the model
  does, with its own embedding, image features and encoder: the features written over
  the placeholder embeddings (``masked_scatter``), then the encoder over the whole
  sequence, so the prompt's length is dynamic and so is the encoder states'.

The encoder graph returns what the decoder cross-attends to: the last hidden states, or
the pooled output for a model whose forward hands that to its decoder (PP-FormulaNet's
projector output). A model whose encoder states do not change with the image, or whose
decoder's logits do not change with those states, is refused at build time: its graphs
would decode without the image. An encoder that reads token ids without a placeholder
token and ``get_image_features`` to merge by (UDOP: text, layout boxes and image
patches in one sequence) is refused too.

A model without ``is_encoder_decoder`` is built here when its family gives a view of it
as one (``as_encoder_decoder`` in the family's input layout): a captioner whose text
decoder cross-attends to the image encoder's states with an ``EncoderDecoderCache``
(BLIP, ``families/blip.py``); the view's ``get_encoder()``, ``forward`` and ``generate``
are the model's own parts. A view whose encoder takes other inputs than these builds them
itself (``encoder_side``: the sets, their dynamic shapes, labels and notes;
``encoder_inputs``; ``encoder_class(base, check_rank)``, its module on the task's encoder
wrapper: Mllama's tiles with their aspect ratios, ``families/mllama.py``).
"""

from __future__ import annotations

import functools
import inspect
import math
from typing import Any

from ..families import INPUT_LAYOUTS
from ._seq2seq import EncoderSide, Seq2Seq, _label, _parts, check_rank
from ._tokens import pad_token, random_ids

__all__ = ["ImageSeq2Seq", "is_encoder_decoder"]

#: the patch count of the last input set of flattened patches (at the declared bound)
PATCHES_MAX = 64


def _image_token(config: Any) -> int | None:
    for name in ("image_token_id", "image_token_index"):
        value = getattr(config, name, None)
        if isinstance(value, int):
            return value
    return None


def _merges(model: Any) -> bool:
    """True for a model that writes its image features over placeholder tokens of the
    encoder's prompt: it names the placeholder and computes the features itself."""
    return _image_token(model.config) is not None and hasattr(model, "get_image_features")


def text_image_outputs(model: Any, feeds: dict[str, Any]) -> Any:
    """The encoder's output for a prompt and its images, merged as the model merges them
    (T5Gemma 2 in its encoder's forward, Florence-2 in the model's, before its BART
    encoder): the token embeddings, each image's feature rows written in order over the
    image tokens of its prompt, then the encoder on those embeddings.

    The merge is done here with the model's own embedding, ``get_image_features`` and
    encoder, rather than by the forward that does it: the placeholder mask both models
    build checks the token count with ``torch_compilable_check`` on a tensor, which
    records ``aten._is_all_true``, and the ONNX exporter has no function for it. The same
    check is made here as a scalar assertion while exporting, and as a ValueError in
    eager."""
    import torch

    ids, pixels = feeds["input_ids"], feeds["pixel_values"]
    embeds = model.get_input_embeddings()(ids)
    features = model.get_image_features(pixels).pooler_output.to(embeds.dtype)
    placeholders = ids == _image_token(model.config)
    rows = features.shape[0] * features.shape[1]
    if torch.compiler.is_exporting():
        # a boolean, not the count: an unbacked count equal to rows * batch gets the
        # traced batch's bounds (batch >= 2), asserted on every run
        torch._check((placeholders.sum() == rows).item())
    elif int(placeholders.sum()) != rows:
        raise ValueError(
            f"the prompts hold {int(placeholders.sum())} image tokens for {rows} feature "
            f"rows ({features.shape[1]} per image): each prompt needs as many image "
            "tokens as its image's features have rows, as the model's processor writes"
        )
    embeds = embeds.masked_scatter(placeholders[..., None].expand_as(embeds), features)
    return model.get_encoder()(inputs_embeds=embeds, attention_mask=feeds["attention_mask"])


@functools.cache
def _text_image_encoder() -> type:
    """The encoder graph's wrapper for an encoder of text and image (built on first use:
    torch is imported lazily)."""

    class TextImageEncoder(_parts()["input_ids"]):  # type: ignore[misc, valid-type]
        """A prompt with image placeholder tokens, its mask and one image per prompt ->
        the encoder's last hidden states."""

        def encode(self, **feeds: Any) -> Any:
            return getattr(text_image_outputs(self.model, feeds), self.states)

        def forward(self, input_ids: Any, attention_mask: Any, pixel_values: Any) -> Any:  # type: ignore[override]
            check_rank("pixel_values", pixel_values, 4, "channels, height and width")
            if pixel_values.shape[0] != input_ids.shape[0]:
                raise ValueError(
                    f"pixel_values holds {pixel_values.shape[0]} images for "
                    f"{input_ids.shape[0]} prompts: the encoder graph takes one image per "
                    "prompt, its placeholder tokens in that prompt"
                )
            return self.encode(
                input_ids=input_ids, attention_mask=attention_mask, pixel_values=pixel_values
            )

    return TextImageEncoder


def _text_image_vision(config: Any) -> Any:
    """The vision config of an encoder of text and image: the model's ``vision_config``,
    or its encoder config's (T5Gemma 2)."""
    return getattr(config, "vision_config", None) or config.encoder.vision_config


def text_image_pixels(config: Any) -> tuple[int, int]:
    """(channels, side) of the images of an encoder of text and image."""
    vision = _text_image_vision(config)
    channels = getattr(vision, "num_channels", None) or getattr(vision, "in_channels", 3)
    size = getattr(vision, "image_size", None)
    if size is None:
        raise ValueError(
            f"{type(vision).__name__} sets no image_size: exportcheck builds pixel_values "
            "at the resolution the model's processor resizes images to"
        )
    return int(channels), int(size[0] if isinstance(size, (list, tuple)) else size)


def _special(config: Any, kind: str) -> int | None:
    """The begin- (``boi``) or end-of-image (``eoi``) token the processor writes around an
    image's placeholders, when the config (or its encoder's) names one."""
    for holder in (config, getattr(config, "encoder", None)):
        for name in (f"{kind}_token_id", f"{kind}_token_index"):
            value = getattr(holder, name, None)
            if isinstance(value, int):
                return value
    return None


def image_sequence(model: Any, config: Any) -> list[int]:
    """The token ids of one image in the prompt: a placeholder per row of the image's
    features (the model checks the count), between the begin- and end-of-image tokens
    the config names (Gemma 3's processor writes them; Florence-2's names none)."""
    import torch

    channels, side = text_image_pixels(config)
    with torch.no_grad():
        rows = model.get_image_features(torch.zeros((1, channels, side, side))).pooler_output
    begin, end = _special(config, "boi"), _special(config, "eoi")
    return [
        *([begin] if begin is not None else []),
        *[_image_token(config)] * rows.shape[1],
        *([end] if end is not None else []),
    ]


def text_image_inputs(
    model: Any,
    config: Any,
    batch: int,
    length: int,
    padding: tuple[int, ...],
    generator: Any,
    sequence: list[int] | None = None,
) -> dict[str, Any]:
    """``batch`` prompts, each one image's tokens (``sequence``, else
    :func:`image_sequence`) then ``length`` text tokens, row ``i`` right-padded over its
    last ``padding[i]`` (pad token, mask 0), and one random image per prompt."""
    import torch

    sequence = image_sequence(model, config) if sequence is None else sequence
    text = random_ids(config, (batch, length), generator, encoder=True)
    pad = pad_token(config, encoder=True)
    # a text token that is a placeholder would take an image row of its own
    reserved = sorted(set(sequence))
    filler = next(i for i in range(1, max(reserved) + 2) if i not in reserved and i != pad)
    text = text.masked_fill(torch.isin(text, torch.tensor(reserved)), filler)
    ids = torch.cat([torch.tensor(sequence).repeat(batch, 1), text], 1)
    mask = torch.ones_like(ids)
    for row, count in enumerate(padding[:batch]):
        if count:
            mask[row, -count:] = 0
            if pad is not None:
                ids[row, -count:] = pad
    channels, side = text_image_pixels(config)
    pixels = torch.randn((batch, channels, side, side), generator=generator)
    return {"input_ids": ids, "attention_mask": mask, "pixel_values": pixels}


def _as_encoder_decoder(config: Any) -> Any:
    """The family's view of its model as an encoder-decoder (``as_encoder_decoder`` in its
    input layout: a captioner whose text decoder cross-attends to the image encoder's
    states with a cache, without ``is_encoder_decoder``), None for other models."""
    layout = INPUT_LAYOUTS.get(getattr(config, "model_type", None), ({}, ""))[0]
    return layout.get("as_encoder_decoder")


def is_encoder_decoder(config: Any) -> bool:
    """True for a config whose model the image encoder-decoder route builds."""
    return bool(getattr(config, "is_encoder_decoder", False)) or (
        _as_encoder_decoder(config) is not None
    )


def _vision(config: Any) -> Any:
    """The image encoder's config: ``vision_config``, or a vision encoder-decoder's
    ``encoder``."""
    return getattr(config, "vision_config", None) or config.encoder


def _patch_width(config: Any) -> int:
    vision = _vision(config)
    width = getattr(vision, "patch_embed_hidden_size", None)
    if width is None:
        raise ValueError(
            f"{type(vision).__name__} sets no patch_embed_hidden_size: exportcheck builds "
            "flattened patches of that width"
        )
    return int(width)


def flattened_patches(config: Any, counts: list[int], generator: Any) -> dict[str, Any]:
    """Each image's patches as the processor flattens them: for ``counts[i]`` patches, a
    grid of rows x columns as near square as divides it, each patch its 1-based row and
    column then random pixels; padded with zero rows to the longest (mask 0)."""
    import torch

    width = _patch_width(config)
    length = max(counts)
    patches = torch.zeros((len(counts), length, 2 + width))
    mask = torch.zeros((len(counts), length), dtype=torch.int64)
    for i, n in enumerate(counts):
        rows = max(d for d in range(1, math.isqrt(n) + 1) if n % d == 0)
        index = torch.arange(n)
        patches[i, :n, 0] = (index // (n // rows) + 1).float()
        patches[i, :n, 1] = (index % (n // rows) + 1).float()
        patches[i, :n, 2:] = torch.randn((n, width), generator=generator)
        mask[i, :n] = 1
    return {"flattened_patches": patches, "attention_mask": mask}


class ImageSeq2Seq(Seq2Seq):
    """Image encoder-decoders built for the image-text-to-text task (see the module)."""

    name = "image-text-to-text"
    mapping = "MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES"
    auto_class = "AutoModelForImageTextToText"
    # images of one resolution take no mask: a batch's padding is its decoder prompts'
    pad_decoder_prompts = True

    def builds_as_encoder_decoder(self, config: Any) -> bool:
        """Encoder-decoders, and the models a family views as one."""
        return is_encoder_decoder(config)

    def new_model(self, config: Any) -> Any:
        """The auto class's model, or the family's view of it as an encoder-decoder."""
        model = super().new_model(config)
        view = _as_encoder_decoder(config)
        return model if view is None else view(model)

    def _kind(self, model: Any) -> str:
        if hasattr(model, "encoder_side"):  # a family's view that builds its own inputs
            return "view"
        params = inspect.signature(model.get_encoder().forward).parameters
        if "input_ids" in params and _merges(model):
            return "text_image"
        if "input_ids" in params:
            raise ValueError(
                f"{type(model.get_encoder()).__name__}.forward reads token ids with the "
                f"image (an encoder of text and image), and {type(model).__name__} names no "
                "image placeholder token or has no get_image_features: exportcheck's image "
                "encoder-decoders take the image alone, or write its features over the "
                "prompt's placeholder tokens"
            )
        for name in ("flattened_patches", "pixel_values"):
            if name in params:
                return name
        raise ValueError(
            f"{type(model.get_encoder()).__name__}.forward takes neither pixel_values nor "
            f"flattened_patches (it takes {', '.join(list(params)[:4])}): exportcheck "
            "builds those for an image encoder-decoder"
        )

    def encoder_inputs(
        self,
        model: Any,
        config: Any,
        batch: int,
        length: int,
        padding: tuple[int, ...],
        generator: Any,
    ) -> dict[str, Any]:
        """``batch`` images: pixels at the encoder's resolution, or ``length`` flattened
        patches with row ``i`` shorter by ``padding[i]``; for an encoder of text and
        image, ``batch`` prompts of one image's tokens and ``length`` text tokens, row
        ``i`` right-padded by ``padding[i]``, with their images."""
        import torch

        from .image_text_to_text import _pixel_sizes

        if self._kind(model) == "text_image":
            return text_image_inputs(model, config, batch, length, padding, generator)
        if self._kind(model) == "view":
            return model.encoder_inputs(config, batch, generator)
        if self._kind(model) == "flattened_patches":
            counts = [length - (padding[i] if i < len(padding) else 0) for i in range(batch)]
            return flattened_patches(config, counts, generator)
        channels, side = _pixel_sizes(config)
        return {"pixel_values": torch.randn((batch, channels, side, side), generator=generator)}

    def encoder_side(
        self, model: Any, config: Any, shapes: list[tuple[Any, ...]], generator: Any, batch: Any
    ) -> EncoderSide:
        import torch

        kind = self._kind(model)
        if kind == "text_image":
            return self._text_image_side(model, config, shapes, generator, batch)
        if kind == "view":
            found = model.encoder_side(config, shapes, generator, batch)
            return EncoderSide(
                found["sets"], found["dynamic_shapes"], None, None, found["labels"], found["notes"]
            )
        if kind == "pixel_values":
            from .image_text_to_text import _pixel_sizes

            sets = [
                self.encoder_inputs(model, config, b, n, p, generator) for b, n, p, *_ in shapes
            ]
            side = _pixel_sizes(config)[1]
            labels = [f"batch={b} {side}x{side}" for b, *_ in shapes]
            labels[-1] += " at bounds"
            notes = [
                f"pixel_values {side}x{side} static: the model's processor resizes every "
                "image to its encoder config's image_size, so the encoder states' length "
                "(the cross-attention cache) is static too"
            ]
            return EncoderSide(sets, {"pixel_values": {0: batch}}, None, None, labels, notes)
        shapes = [*shapes[:-1], (shapes[-1][0], PATCHES_MAX, (), *shapes[-1][3:])]
        sets = [self.encoder_inputs(model, config, b, n, p, generator) for b, n, p, *_ in shapes]
        patches = torch.export.Dim("patches", min=2, max=PATCHES_MAX)
        dims = {0: batch, 1: patches}
        labels = []
        for (b, n, padding, *_), _feeds in zip(shapes, sets, strict=True):
            label = f"batch={b} patches={n}" + (" padded" if any(padding) else "")
            labels.append(label + (" at bounds" if n == PATCHES_MAX else ""))
        notes = [
            "flattened patches: each image a grid of patches, each patch its row and column "
            "then its pixels, padded to the batch's longest with zero rows (attention_mask "
            "0), as the model's processor gives them; the patch count is dynamic"
        ]
        return EncoderSide(
            sets,
            {"flattened_patches": dims, "attention_mask": dims},
            dims,
            patches,
            labels,
            notes,
        )

    def _text_image_side(
        self, model: Any, config: Any, shapes: list[tuple[Any, ...]], generator: Any, batch: Any
    ) -> EncoderSide:
        """Prompts of one image's tokens then text tokens (the text lengths of ``shapes``,
        right-padded as they say), one image per prompt: the prompt's length is dynamic
        and the encoder states keep it; the pixels' resolution is static."""
        import torch

        sequence = image_sequence(model, config)
        sets = [
            text_image_inputs(model, config, b, n, p, generator, sequence) for b, n, p, *_ in shapes
        ]
        length = torch.export.Dim(
            "encoder_length", min=len(sequence) + 1, max=len(sequence) + shapes[-1][1]
        )
        dims = {0: batch, 1: length}
        side = text_image_pixels(config)[1]
        labels = [
            _label((b, len(sequence) + n, p, c, s), "encoder") + f" image={side}x{side}"
            for b, n, p, c, s in shapes
        ]
        notes = [
            f"an encoder of text and image: each prompt {len(sequence)} image tokens (a "
            "placeholder per feature row of its image, between the begin- and end-of-image "
            "tokens its config names) then text tokens, right-padded (attention_mask 0), "
            f"with one image per prompt, pixel_values {side}x{side} (the vision config's "
            "image_size, static); the graph writes the image's features over the "
            "placeholders as the model does (masked_scatter) and runs the encoder over the "
            "whole prompt, whose length is dynamic"
        ]
        return EncoderSide(
            sets,
            {"input_ids": dims, "attention_mask": dims, "pixel_values": {0: batch}},
            dims,
            length,
            labels,
            notes,
        )

    def encoder_class(self, model: Any, side: EncoderSide) -> type:
        """The text-and-image wrapper for an encoder of text and image."""
        if self._kind(model) == "text_image":
            return _text_image_encoder()
        if self._kind(model) == "view":
            return model.encoder_class(_parts()["input_ids"], check_rank)
        return super().encoder_class(model, side)

    def encoder_outputs(self, model: Any, feeds: dict[str, Any]) -> Any:
        """The encoder's output, merged as the model merges it for text and image."""
        if self._kind(model) == "text_image":
            return text_image_outputs(model, feeds)
        return super().encoder_outputs(model, feeds)

    def states_output(self, model: Any) -> str:
        """``pooler_output`` for a model whose forward hands its decoder the encoder's
        pooled output (PP-FormulaNet: its projector's), else the last hidden states."""
        base = getattr(model, "model", model)
        source = inspect.getsource(type(base).forward)
        if "encoder_hidden_states=encoder_outputs.pooler_output" in source:
            return "pooler_output"
        return "last_hidden_state"

    def build(self, config: Any, *, seed: int = 0) -> Any:
        """:meth:`Seq2Seq.build`, refused when the encoder gives two images the same
        states (for an encoder of text and image: the same prompts with their images
        swapped), or when the decoder does not read them (its logits do not change with
        them): the graphs would then be checked without the image."""
        import copy

        import torch

        m = super().build(config, seed=seed)
        encoder = m.components[0]
        feeds = encoder.input_sets[0]
        with torch.no_grad():
            states = encoder.module(**copy.deepcopy(feeds))
            if "input_ids" in feeds:  # the same prompts, other images
                other = {**feeds, "pixel_values": feeds["pixel_values"].flip(0)}
                states = states - encoder.module(**copy.deepcopy(other))
            else:
                states = states[0] - states[1]
        if float(states.abs().max()) < 1e-3:
            raise ValueError(
                f"{type(m.model).__name__}'s untrained encoder gives two different images "
                "the same states: its graphs would be checked on outputs that do not "
                "depend on the image"
            )
        init = next(c for c in m.components if c.name == "decoder_init")
        feeds = init.input_sets[0]
        other = {**feeds, "encoder_hidden_states": torch.randn_like(feeds["encoder_hidden_states"])}
        with torch.no_grad():
            same = torch.equal(
                init.module(**copy.deepcopy(feeds))["logits"],
                init.module(**copy.deepcopy(other))["logits"],
            )
        if same:
            raise ValueError(
                f"{type(m.model).__name__}'s decoder does not read the encoder's last hidden "
                "states (its logits stay the same when they change): it reads another "
                "output of the encoder, which exportcheck's encoder graph does not return"
            )
        return m

    def generation_inputs(self, m: Any) -> dict[str, Any]:
        """Two images (or two sets of flattened patches, one padded; or two prompts with
        their images, one padded), seeded: eager ``generate`` gets the same."""
        import torch

        generator = torch.Generator().manual_seed(1234)
        return self.encoder_inputs(m.model, m.config, 2, 12, (4,), generator)
