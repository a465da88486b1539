"""GIT: a text decoder whose cache may start with image tokens that no mask covers.

In image-text-to-text, GIT names no image placeholder token: ``GitModel.forward``
(transformers/models/git/modeling_git.py) runs the vision encoder and the visual
projection on ``pixel_values`` and concatenates the projected rows *before* the text's
embeddings, which alone get the position embeddings (text positions: 0 on the first text
token) and the embedding LayerNorm; the image rows attend to each other both ways (their
``token_type_ids`` 1 are one block of ``create_causal_mask``), the text causally to them
and to itself. ``generate`` passes ``pixel_values`` at the first step only: the cache holds
the image prefix, and the later steps' text positions come from the text's mask.

exportcheck lays the prompt out as a span (:func:`processor_prompt`): the image rows'
positions first, marked 1 by ``image_embeds_position_mask``, then the processor's ids;
the vision encoder graph gives the projected rows (:func:`image_encoder`) that the driver
writes over the span, and the decoder step runs :class:`SpanLM` on the merged
embeddings with the span mask of its new positions: position embeddings and LayerNorm on
the text rows only, the span rows one block. The generation prefills the image prefix in
one decoder call (``span_both_ways``).
"""

from __future__ import annotations

from typing import Any

from ..patches import Patch
from ..patches.core import passthrough
from . import Family, register

MODULE = "transformers.models.git.modeling_git"


def git_model_forward(
    self,
    input_ids=None,
    attention_mask=None,
    position_ids=None,
    pixel_values=None,
    inputs_embeds=None,
    cache=None,
    use_cache=None,
    interpolate_pos_encoding=False,
    **kwargs,
):
    """GitModel.forward, widening a cached step's mask only over the cached positions it
    does not cover."""
    given = {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "position_ids": position_ids,
        "pixel_values": pixel_values,
        "inputs_embeds": inputs_embeds,
        "cache": cache,
        "use_cache": use_cache,
        "interpolate_pos_encoding": interpolate_pos_encoding,
        **kwargs,
    }
    cached = cache.get_seq_length() if cache is not None else 0
    tokens = input_ids if input_ids is not None else inputs_embeds
    empty = isinstance(cached, int) and cached == 0  # symbolic while exporting
    if pixel_values is not None or attention_mask is None or attention_mask.ndim != 2:
        return passthrough(git_model_forward.original, self, **given)
    if tokens is None or empty:
        return passthrough(git_model_forward.original, self, **given)
    # The original widens the mask by every image patch token; the widening it needs is
    # what the mask lacks: the image tokens a prefill with pixel values left in the cache,
    # none after a text-only prompt whose mask covers the cache.
    attention = self.encoder.layer[0].attention.self
    saved = attention.image_patch_tokens
    attention.image_patch_tokens = cached + tokens.shape[1] - attention_mask.shape[1]
    try:
        return git_model_forward.original(self, **given)
    finally:
        attention.image_patch_tokens = saved


def _install_git_cached_mask(patcher: Any, model: Any) -> None:
    """Widen a cached step's 2D mask only over the cached image tokens it does not cover.

    Fixes: eager's decode step of a left-padded text prompt differs from a full forward
    over prompt + new tokens (1.9e-3 on the logits). On a cached step without
    ``pixel_values``, GitModel.forward (transformers/models/git/modeling_git.py:840-848)
    puts ``image_patch_tokens`` ones (197 for the tiny config) in front of the mask,
    assuming the cache starts with image tokens. After a text-only prompt the mask, as
    ``generate`` passes it, already covers every cached token: the widened mask is
    longer than the keys, the mask builder reads its first columns, all ones, and the
    padded row attends to its padding. The replacement sets the widening, for the call,
    to the cached positions the mask lacks: the image tokens after a prefill with pixel
    values (the same number as before), none after a text-only one. Unpadded masks give
    the same numbers as before, since the first columns were ones either way.

    Since eager is wrong without it, :func:`exportcheck.validate` computes its eager
    reference with it (``corrects_eager``).

    Remove when: GitModel.forward widens a cached step's mask by the columns it lacks.
    """
    patcher.replace_in(MODULE, "GitModel", "forward", git_model_forward)


GIT_CACHED_MASK = Patch(
    name="git_cached_mask",
    fixes="a left-padded row's decode step attends to its padding: the mask widened by "
    "every image patch token after a text-only prompt",
    remove_when="GitModel.forward widens a cached step's mask by the columns it lacks",
    install=_install_git_cached_mask,
    model_types=("git",),
    corrects_eager=True,
)


def _image_tokens(model: Any) -> int:
    """The image tokens GIT's forward prepends (``image_patch_tokens``: a class token and
    the patches of each image)."""
    return int(model.git.encoder.layer[0].attention.self.image_patch_tokens)


def _span_lm_class() -> type:
    import torch

    class SpanLM(torch.nn.Module):
        """GitForCausalLM's text stack on merged embeddings: ``inputs_embeds`` holds the
        word embeddings of text rows and the projected image rows where
        ``image_embeds_position_mask`` (of the new positions) is 1. Text rows get the
        position embedding of their text position and the embedding LayerNorm, as
        GitEmbeddings gives them, image rows neither, as GitModel.forward concatenates
        them; the image rows of the call are one block of ``create_causal_mask`` (both
        ways), as GitModel.forward's ``token_type_ids`` 1 make them. A text position is
        the count of unmasked positions before it less the image tokens
        (``image_patch_tokens``) that GIT's cache holds before the text, as its forward
        widens a cached step's mask by them: ``generate``'s text positions (the text
        mask's cumulative sum) on a prompt laid out by :func:`processor_prompt`; clamped
        at 0 for positions a prompt without image puts before."""

        def __init__(self, model: Any) -> None:
            super().__init__()
            self.model = model
            self.image_tokens = _image_tokens(model)

        def forward(
            self,
            inputs_embeds: Any,
            attention_mask: Any,
            image_embeds_position_mask: Any = None,
            cache: Any = None,
            use_cache: bool = True,
        ) -> Any:
            from transformers import DynamicCache
            from transformers.masking_utils import create_causal_mask
            from transformers.modeling_outputs import CausalLMOutputWithPast

            git = self.model.git
            new = inputs_embeds.shape[1]
            span = image_embeds_position_mask
            if span is None:
                span = torch.zeros(inputs_embeds.shape[:2], dtype=torch.int64)
            if use_cache and cache is None:
                cache = DynamicCache(config=self.model.config)
            seen = attention_mask.long().cumsum(-1) - 1 - self.image_tokens
            positions = seen.clamp(min=0)[:, -new:]
            embeddings = git.embeddings
            text = embeddings.LayerNorm(inputs_embeds + embeddings.position_embeddings(positions))
            image = (span == 1)[..., None]
            hidden = torch.where(image, inputs_embeds, text)
            # each position's block over cache + new, -1 on the cached ones; indexed so
            # that no tensor is as long as the cache (the export would guard it != 1)
            length = attention_mask.shape[1]
            index = torch.arange(length, device=attention_mask.device) - (length - new)
            kinds = span.gather(1, index.clamp(min=0).expand_as(attention_mask))
            blocks = torch.where((index >= 0) & (kinds == 1), 0, -1)
            mask = create_causal_mask(
                config=self.model.config.get_text_config(),
                inputs_embeds=hidden,
                attention_mask=attention_mask,
                cache=cache,
                block_sequence_ids=blocks,
            )
            out = git.encoder(hidden, attention_mask=mask, cache=cache, use_cache=use_cache)
            return CausalLMOutputWithPast(
                logits=self.model.output(out.last_hidden_state), cache=out.cache
            )

    return SpanLM


def span_lm(model: Any) -> Any:
    """:class:`SpanLM` of a GitForCausalLM: its decoder step on merged embeddings."""
    return _span_lm_class()(model)


def _image_encoder_class() -> type:
    import torch

    class ImageEncoder(torch.nn.Module):
        """pixel values ``(images, channels, size, size)`` -> the projected image rows
        GitModel.forward prepends, ``(images * image_patch_tokens, hidden)``: its vision
        encoder's last state through its visual projection."""

        layout = "pixels"

        def __init__(self, model: Any, channels: int, width: int) -> None:
            super().__init__()
            self.model = model
            self.channels = int(model.config.vision_config.num_channels)
            self.width = 0
            self.frames = 0

        def forward(self, pixel_values: Any) -> Any:
            shape = tuple(getattr(pixel_values, "shape", ()))
            if len(shape) != 4 or shape[1] != self.channels:
                raise ValueError(
                    f"pixel_values must be (images, {self.channels}, height, width), as the "
                    f"image processor returns them; got shape {shape}"
                )
            git = self.model.git
            state = git.image_encoder(pixel_values).last_hidden_state
            rows = git.visual_projection(state)
            return rows.reshape(-1, rows.shape[-1])

    return ImageEncoder


def image_encoder(model: Any, channels: int, width: int) -> Any:
    """The vision encoder graph's module (GIT has no ``get_image_features``)."""
    return _image_encoder_class()(model, channels, width)


def image_shapes(model: Any) -> tuple[dict[str, Any], str]:
    """The vision encoder graph's dynamic shapes (images) and what they say."""
    import torch

    from ..dims import BATCH_MAX

    side = model.config.vision_config.image_size
    images = torch.export.Dim("images", min=1, max=BATCH_MAX)
    return {"pixel_values": {0: images}}, (
        f"pixel_values {side}x{side} static: the model's processor resizes every image to "
        "its vision config's image_size; the graph returns the projected rows GIT prepends"
    )


def processor_prompt(model: Any, rows: int, text: Any) -> dict[str, Any]:
    """The prompt of one image per row: ``rows`` span positions (their ids the pad id,
    never embedded: the image rows are written over them), then ``[CLS]`` and ``text``
    ``(batch, length)``, as GitProcessor gives the text; the mask, and
    ``image_embeds_position_mask`` 1 on the span.

    :raises ValueError: when ``rows`` is not the ``image_patch_tokens`` GIT prepends
    """
    import torch

    if rows != _image_tokens(model):
        raise ValueError(
            f"an image gives {rows} rows and GIT prepends image_patch_tokens="
            f"{_image_tokens(model)} image tokens: they must agree"
        )
    config = model.config
    batch = text.shape[0]
    ids = torch.cat(
        [
            torch.full((batch, rows), config.pad_token_id),
            torch.full((batch, 1), config.bos_token_id),
            text,
        ],
        1,
    )
    span = torch.zeros_like(ids)
    span[:, :rows] = 1
    return {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "image_embeds_position_mask": span,
    }


def processor_text(model: Any, given: dict[str, Any]) -> dict[str, Any]:
    """What GitProcessor gives ``generate`` beside the pixels for a prompt of
    :func:`processor_prompt`: the ids and mask after the span (the forward prepends the
    image rows itself)."""
    span = given["image_embeds_position_mask"]
    keep = (span == 0).all(0)
    return {
        "input_ids": given["input_ids"][:, keep],
        "attention_mask": given["attention_mask"][:, keep],
    }


def prepare_config(config: Any, tiny_config: Any) -> tuple[Any, str]:
    """``config`` (a copy) with the vision image_size 96: 6 patches per side, 37 image
    tokens, which the decoder graph takes in one call (at most 64 positions)."""
    import copy

    config = copy.deepcopy(config)
    config.vision_config.image_size = 96
    return config, (
        "vision_config.image_size -> 96 (6 patches per side, 37 image tokens): the image "
        "prefix attends to itself both ways, so the generation prefills it in one decoder "
        "call, which takes at most 64 positions (65 image tokens at 128)"
    )


#: how GIT's image-text-to-text inputs differ from a placeholder-token model's
LAYOUT = (
    {
        "layout": "pixels",
        "prepare_config": prepare_config,
        "encoder": image_encoder,
        "image_shapes": image_shapes,
        "image_span": processor_prompt,
        "step_span": True,
        "span_both_ways": True,
        "processor_text": processor_text,
        "text_lm": span_lm,
    },
    "no placeholder token: GitModel.forward prepends the projected image rows "
    "(image_patch_tokens of them) to the text's embeddings, the text alone getting "
    "position embeddings and LayerNorm, the image rows attending to each other both ways; "
    "laid out as a span of image_patch_tokens positions (image_embeds_position_mask 1) "
    "before the processor's ids, the decoder step taking the span mask of its new "
    "positions, and the generation prefilling the image prefix in one decoder call",
)

register(
    Family(
        name="git",
        model_types=("git",),
        patches=(GIT_CACHED_MASK,),
        input_layouts={"git": LAYOUT},
    )
)
