"""Token ids and masks as tokenizers give them, shared by the text tasks."""

from __future__ import annotations

from typing import Any


def text_config(config: Any) -> Any:
    """The config that holds the vocabulary: the text part of a composite config."""
    return config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config


def vocab_size(config: Any) -> int:
    """The number of token ids the model embeds."""
    return int(
        getattr(text_config(config), "vocab_size", None) or getattr(config, "vocab_size", 1024)
    )


def pad_token(config: Any) -> int | None:
    """The padding token id, None when the config has none within the vocabulary."""
    pad = getattr(text_config(config), "pad_token_id", None)
    return pad if isinstance(pad, int) and 0 <= pad < vocab_size(config) else None


def random_ids(config: Any, shape: tuple[int, ...], generator: Any) -> Any:
    """Random token ids without the padding token: models that derive positions from
    the ids (RoBERTa-like tables skip padding tokens) would see a padded sequence."""
    import torch

    vocab = vocab_size(config)
    ids = torch.randint(0, vocab, shape, generator=generator)
    pad = pad_token(config)
    if pad is not None and vocab > 1:
        ids[ids == pad] = (pad + 1) % vocab
    return ids
