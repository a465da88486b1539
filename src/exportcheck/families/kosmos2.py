"""Kosmos-2: image features written over a span of the prompt that a mask marks.

Kosmos-2 names no image placeholder token. Its processor opens each prompt with
``<s> <image>``, then ``latent_query_num`` ids, one per image feature row, then
``</image>`` and the text; the span's ids are distinct (``unk + 1`` on: 4, 5, ... in the
published vocabulary, where ``<image>`` and ``</image>`` are 64003 and 64004), and the
processor returns ``image_embeds_position_mask``, 1 on the span. The text model embeds
the ids, writes the feature rows over the masked positions in order, and only then
multiplies by its ``embed_scale`` and adds its sinusoidal positions: the embeddings that
``embed_tokens`` returns are the unscaled ones the features replace, so the task's
``embed_tokens`` graph, the merge at the mask and a decoder step on the merged embeddings
compute what the forward computes (see ``image_span`` in
:mod:`exportcheck.tasks.image_text_to_text`).
"""

from __future__ import annotations

from typing import Any

from . import Family, register

#: ``<unk>`` of the Kosmos-2 tokenizer (an XLM-R vocabulary: ``<s>`` 0, ``<pad>`` 1,
#: ``</s>`` 2, ``<unk>`` 3, as the config's bos, pad and eos ids say); the processor's
#: image span starts at the next id
UNK = 3
#: ``<image>`` and ``</image>`` in the published vocabulary (65037 ids)
BOI, EOI = 64003, 64004


def tags(vocab: int) -> tuple[int, int]:
    """The ids of ``<image>`` and ``</image>``: the published ones, or, in a vocabulary
    too small to hold them (the tiny config's), its two last ids: the processor adds its
    tag tokens after the sentencepiece vocabulary."""
    return (BOI, EOI) if vocab > EOI else (vocab - 2, vocab - 1)


def processor_prompt(model: Any, rows: int, text: Any) -> dict[str, Any]:
    """The prompt as ``Kosmos2Processor`` lays it out for one image per row followed by
    ``text`` ``(batch, length)``: ``<s> <image>``, ``rows`` span ids, ``</image>``, the
    text; with the attention mask and ``image_embeds_position_mask`` (1 on the span).

    :raises ValueError: when ``rows`` is not the config's ``latent_query_num`` (the
        processor writes that many span ids, one per feature row of an image)
    """
    import torch

    config = model.config
    if rows != config.latent_query_num:
        raise ValueError(
            f"an image gives {rows} feature rows and the processor writes "
            f"latent_query_num={config.latent_query_num} span ids: they must agree"
        )
    text_config = config.get_text_config(decoder=True)
    boi, eoi = tags(text_config.vocab_size)
    batch = text.shape[0]
    ids = torch.cat(
        [
            torch.tensor([[text_config.bos_token_id, boi]]).expand(batch, 2),
            torch.arange(UNK + 1, UNK + 1 + rows)[None].expand(batch, rows),
            torch.full((batch, 1), eoi),
            text,
        ],
        1,
    )
    span = torch.zeros_like(ids)
    span[:, 2 : 2 + rows] = 1
    return {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "image_embeds_position_mask": span,
    }


#: how Kosmos-2's inputs differ from a placeholder-token model's
LAYOUT = (
    {
        "image_span": processor_prompt,
        "text_lm": lambda model: model.text_model,
    },
    "no placeholder token: the processor writes <s> <image>, latent_query_num distinct "
    "span ids (unk + 1 on), </image>, then the text, and returns "
    "image_embeds_position_mask, 1 on the span, where the text model writes the image "
    "features before scaling the embeddings and adding positions; the forward requires "
    "pixel_values or image_embeds on every call, so the decoder step runs its text_model, "
    "the causal LM it hands the ids, features and mask to",
)

register(
    Family(
        name="kosmos2",
        model_types=("kosmos-2",),
        config_fixes={
            "kosmos-2": (
                {
                    "text_config.layers": 2,
                    "text_config.attention_heads": 4,
                    "text_config.init_std": 0.1,
                },
                "the text config names its depth and heads layers and attention_heads "
                "(num_hidden_layers and num_attention_heads are aliases), which the "
                "generic shrinking does not reach: left at 24 layers of 32 heads of width "
                "2 over the tiny width 64; init_std 0.02 -> 0.1: it also initialises the "
                "image-to-text projection, whose latent queries (std 1) cross-attend to the "
                "projected, L2-normalised patch features, so the image reaches the features "
                "through three layers of that std (dense, value, output): at 0.02, other "
                "pixels move the untrained features by 5e-4, under what the checks can see; "
                "at 0.1, by 7e-2",
            ),
        },
        input_layouts={"kosmos-2": LAYOUT},
    )
)
