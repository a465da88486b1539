"""SqueezeBERT: grouped convolutions whose embedding width must equal the hidden size."""

from __future__ import annotations

from . import Family, register

register(
    Family(
        name="squeezebert",
        model_types=("squeezebert",),
        config_fixes={
            "squeezebert": (
                {"embedding_size": 64},
                "SqueezeBertModel requires embedding_size == hidden_size (768 both by "
                "default: 'If you want embedding_size != intermediate hidden_size, please "
                "insert a Conv1d layer'); the generic shrinking makes the hidden size 64 "
                "and leaves embedding_size at 768",
            )
        },
    )
)
