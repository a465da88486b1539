"""Token ids and masks as tokenizers give them, shared by the text tasks."""

from __future__ import annotations

from typing import Any


def text_config(config: Any, encoder: bool = False) -> Any:
    """The config that holds the vocabulary: the text part of a composite config, its
    output side (decoder) by default, its input side with ``encoder`` (an encoder-decoder
    can embed another vocabulary on each side)."""
    if not hasattr(config, "get_text_config"):
        return config
    if encoder:
        return config.get_text_config(encoder=True)
    return config.get_text_config(decoder=True)


def vocab_size(config: Any, encoder: bool = False) -> int:
    """The number of token ids the model embeds (on its encoder side with ``encoder``)."""
    text = text_config(config, encoder)
    return int(getattr(text, "vocab_size", None) or getattr(config, "vocab_size", 1024))


def pad_token(config: Any, encoder: bool = False) -> int | None:
    """The padding token id, None when the config has none within the vocabulary."""
    pad = getattr(text_config(config, encoder), "pad_token_id", None)
    return pad if isinstance(pad, int) and 0 <= pad < vocab_size(config, encoder) else None


def random_ids(config: Any, shape: tuple[int, ...], generator: Any, encoder: bool = False) -> Any:
    """Random token ids without the padding token: models that derive positions from
    the ids (RoBERTa-like tables skip padding tokens) would see a padded sequence.
    ``encoder``: ids of the encoder's vocabulary."""
    import torch

    vocab = vocab_size(config, encoder)
    ids = torch.randint(0, vocab, shape, generator=generator)
    pad = pad_token(config, encoder)
    if pad is not None and vocab > 1:
        ids[ids == pad] = (pad + 1) % vocab
    return ids
