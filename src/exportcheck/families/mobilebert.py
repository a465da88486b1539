"""MobileBERT: narrow embeddings and bottlenecks inside wider blocks."""

from __future__ import annotations

from . import Family, register

register(
    Family(
        name="mobilebert",
        model_types=("mobilebert",),
        config_fixes={
            "mobilebert": (
                {"embedding_size": 16, "intra_bottleneck_size": 16},
                "the default embeds in 128 and bottlenecks to 128 inside blocks of 512; the "
                "generic shrinking makes the blocks 64 wide and leaves the 128s, and the "
                "masked LM head projects to hidden_size - embedding_size (-64: 'Trying to "
                "create tensor with negative dimension -64'); 16 keeps the default's ratio "
                "of a quarter of the hidden size for both (true_hidden_size follows the "
                "bottleneck)",
            )
        },
    )
)
