"""Janus: the vision aligner writes rows of ``vision_config.projection_dim``, which the
language model reads as its input embeddings."""

from __future__ import annotations

from . import Family, register

register(
    Family(
        name="janus",
        model_types=("janus",),
        config_fixes={
            "janus": (
                {"vision_config.projection_dim": 64},
                "the aligner (JanusVisionAlignerMLP) maps the vision states to "
                "vision_config.projection_dim, and the features replace the image tokens' "
                "embeddings, so it must equal the text model's hidden size, as in the "
                "checkpoints (Janus-Pro-1B: 2048 and 2048); the config class's defaults "
                "(2048 against 4096) do not tie them, and the tiny text hidden size is 64",
            )
        },
    )
)
