"""CvT: convolutional token embeddings and projections in front of each stage."""

from __future__ import annotations

from . import Family, register

register(
    Family(
        name="cvt",
        model_types=("cvt",),
        config_fixes={
            "cvt": (
                {"num_heads": [1, 2, 4], "depth": [1, 2, 3]},
                "the generic shrinking sets every stage's embed_dim to 64 but keeps the "
                "checkpoint's heads (1, 3, 6), which do not divide it, and its stage depths "
                "(1, 2, 10), which it does not know: 1, 2 and 4 heads, 1, 2 and 3 layers (CvtStage "
                "indexes its drop-path rates by the stage, modeling_cvt.py:422, so stage i "
                "needs i + 1 layers or more)",
            )
        },
    )
)
