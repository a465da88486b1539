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
  (mask 0). The patch count is dynamic, and so is the encoder states' length.

The encoder graph returns what the decoder cross-attends to: the last hidden states, or
the pooled output for a model whose forward hands that to its decoder (PP-FormulaNet's
projector output). A model whose decoder's logits do not change with those states is
refused at build time: its graphs would decode without the image.
"""

from __future__ import annotations

import math
from typing import Any

from ._seq2seq import EncoderSide, Seq2Seq

__all__ = ["ImageSeq2Seq", "is_encoder_decoder"]

#: the patch count of the last input set of flattened patches (at the declared bound)
PATCHES_MAX = 64


def is_encoder_decoder(config: Any) -> bool:
    """True for a config whose model the image encoder-decoder route builds."""
    return bool(getattr(config, "is_encoder_decoder", False))


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

    def _kind(self, model: Any) -> str:
        import inspect

        params = inspect.signature(model.get_encoder().forward).parameters
        if "input_ids" in params:
            raise ValueError(
                f"{type(model.get_encoder()).__name__}.forward reads token ids with the "
                "image (an encoder of text and image): exportcheck's image "
                "encoder-decoders take the image alone"
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
        patches with row ``i`` shorter by ``padding[i]``."""
        import torch

        from .image_text_to_text import _pixel_sizes

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

    def states_output(self, model: Any) -> str:
        """``pooler_output`` for a model whose forward hands its decoder the encoder's
        pooled output (PP-FormulaNet: its projector's), else the last hidden states."""
        import inspect

        base = getattr(model, "model", model)
        source = inspect.getsource(type(base).forward)
        if "encoder_hidden_states=encoder_outputs.pooler_output" in source:
            return "pooler_output"
        return "last_hidden_state"

    def build(self, config: Any, *, seed: int = 0) -> Any:
        """:meth:`Seq2Seq.build`, refused when the encoder gives two images the same
        states, or when the decoder does not read them (its logits do not change with
        them): the graphs would then be checked without the image."""
        import copy

        import torch

        m = super().build(config, seed=seed)
        encoder = m.components[0]
        with torch.no_grad():
            states = encoder.module(**copy.deepcopy(encoder.input_sets[0]))
        if float((states[0] - states[1]).abs().max()) < 1e-3:
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
        """Two images (or two sets of flattened patches, one padded), seeded."""
        import torch

        generator = torch.Generator().manual_seed(1234)
        return self.encoder_inputs(m.model, m.config, 2, 12, (4,), generator)
