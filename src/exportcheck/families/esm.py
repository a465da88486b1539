"""ESM: a protein language model whose default config has no vocabulary."""

from __future__ import annotations

from . import Family, register

register(
    Family(
        name="esm",
        model_types=("esm",),
        config_arguments={
            "esm": (
                {"vocab_size": 33, "pad_token_id": 1, "mask_token_id": 32},
                "EsmConfig() leaves vocab_size, pad_token_id and mask_token_id at None (the "
                "embedding cannot be built: \"empty(): argument 'size' ... must be tuple of "
                'ints, but found element of type NoneType"); these are the values of the '
                "ESM-2 checkpoints and tokenizer (33 tokens, <pad> 1, <mask> 32)",
            )
        },
    )
)
