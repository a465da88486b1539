"""ModernBERT decoder: windows larger than every checked length."""

from __future__ import annotations

from . import Family, register

register(
    Family(
        name="modernbert_decoder",
        model_types=("modernbert-decoder",),
        config_fixes={
            "modernbert-decoder": (
                {"local_attention": 256, "sliding_window": 128},
                "a window of 64 is reached by the input sets (63 tokens): the "
                "sliding layers would take another branch on one of them",
            )
        },
    )
)
