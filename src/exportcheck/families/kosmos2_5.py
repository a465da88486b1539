"""Kosmos-2.5: Kosmos-2's image span, read from flattened patches and at every position.

Like Kosmos-2 (:mod:`exportcheck.families.kosmos2`), Kosmos-2.5 names no image
placeholder token: ``Kosmos2_5Processor`` opens each prompt with ``<s> <image>``, then
``num_image_tokens`` ids of its image token (``<s>`` again), one per feature row, then
``</image>`` and the text, and returns ``image_embeds_position_mask``. The text model
writes the feature rows where that mask is 1, so the task's merge at the mask
(``image_span``) computes what the forward computes. Three things differ:

* the image arrives as ``flattened_patches`` ``(images, patches, 2 + patch area x
  channels)``, each row led by its patch's 1-based row and column (indices into the
  tower's position tables), each image padded with zero rows that the tower masks by
  their zero sum. The image processor returns a patch mask too, but the processor
  overwrites it with the text's ``attention_mask``: ``flattened_patches`` is all the
  tower gets, so it is all the vision graph takes (the task's ``flattened`` layout, built
  by the Pix2Struct builder);
* the processor's mask is -1 on ``<image>`` and ``</image>``, 1 on the span, 0 elsewhere;
  features go where it is 1 only;
* the text model adds a segment embedding of ``mask != 0`` to every position (the tags
  count as image), and segment 0 when no mask is given, which is what ``generate`` gives
  every generated token once the cache holds the prompt. A decoder step over a prefill
  chunk must therefore take that chunk's mask (``step_span``), 0 for generated tokens.
"""

from __future__ import annotations

from typing import Any

from . import Family, register

#: the feature rows of an image (``latent_query_num``) in the tiny config: the published
#: 2048 (the processor's ``num_image_tokens``) would make every prompt 2052 positions long
LATENT_QUERIES = 16


def tags(vocab: int) -> tuple[int, int]:
    """Ids for ``<image>`` and ``</image>``: the vocabulary's two last. The published ids
    come with the tokenizer, which is not read here; any two ids that are neither
    ``<s>``, ``<pad>`` nor ``</s>`` lay the prompt out alike, their embeddings are the
    only thing the model reads of them."""
    return vocab - 2, vocab - 1


def processor_prompt(model: Any, rows: int, text: Any) -> dict[str, Any]:
    """The prompt as ``Kosmos2_5Processor`` lays it out for one image per row followed by
    ``text`` ``(batch, length)``: ``<s> <image>``, ``rows`` image tokens (``<s>``),
    ``</image>``, the text; with the attention mask and ``image_embeds_position_mask``
    (0, -1, 1 on the span, -1, then 0 on the text).

    :raises ValueError: when ``rows`` is not the config's ``latent_query_num`` (the
        processor writes ``num_image_tokens`` image tokens, one per feature row)
    """
    import torch

    config = model.config
    if rows != config.latent_query_num:
        raise ValueError(
            f"an image gives {rows} feature rows and the processor writes "
            f"latent_query_num={config.latent_query_num} image tokens: they must agree"
        )
    text_config = config.get_text_config(decoder=True)
    boi, eoi = tags(text_config.vocab_size)
    bos = text_config.bos_token_id
    batch = text.shape[0]
    ids = torch.cat(
        [
            torch.tensor([[bos, boi]]).expand(batch, 2),
            torch.full((batch, rows), bos),
            torch.full((batch, 1), eoi),
            text,
        ],
        1,
    )
    span = torch.zeros_like(ids)
    span[:, 1] = span[:, 2 + rows] = -1
    span[:, 2 : 2 + rows] = 1
    return {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "image_embeds_position_mask": span,
    }


#: how Kosmos-2.5's inputs differ from a placeholder-token model's
LAYOUT = (
    {
        "layout": "flattened",
        "image_span": processor_prompt,
        "step_span": True,
        "text_lm": lambda model: model.text_model,
    },
    "no placeholder token: the processor writes <s> <image>, latent_query_num image "
    "tokens (<s>), </image>, then the text, and returns image_embeds_position_mask (-1 "
    "on the tags, 1 on the span), where the text model writes the features of "
    "flattened_patches (each patch its row and column then its pixels, zero rows padding, "
    "masked by the tower); it adds a segment embedding of mask != 0 at every position, so "
    "the decoder step, on its text_model, takes the mask of its new positions",
)

register(
    Family(
        name="kosmos2_5",
        model_types=("kosmos-2.5",),
        config_fixes={
            "kosmos-2.5": (
                {
                    "text_config.layers": 2,
                    "text_config.attention_heads": 4,
                    "initializer_range": 0.1,
                    "latent_query_num": LATENT_QUERIES,
                },
                "the text config names its depth and heads layers and attention_heads, "
                "which the generic shrinking does not reach: left at 24 layers of 16 heads "
                "of width 4 over the tiny width 64; latent_query_num 2048 -> "
                f"{LATENT_QUERIES}: every prompt holds that many image tokens; "
                "initializer_range 0.02 -> 0.1 (the top config's, which initialises the "
                "image-to-text projection: latent queries of std 1 cross-attending to the "
                "L2-normalised patch states through dense, value and output layers of that "
                "std): at 0.02 other pixels move the untrained features by 2e-4, under what "
                "the checks can see; at 0.1, by 3e-2",
            ),
        },
        input_layouts={"kosmos-2.5": LAYOUT},
    )
)
