"""Pix2Struct: an image encoder-decoder over flattened patches."""

from __future__ import annotations

from . import Family, register

register(
    Family(
        name="pix2struct",
        model_types=("pix2struct",),
        config_fixes={
            "pix2struct": (
                {"text_config.d_kv": 16, "vision_config.d_kv": 16},
                "the attention layers project heads * d_kv back with a layer of "
                "hidden_size inputs, so d_kv must be hidden_size // num_heads, as in the "
                "checkpoints (pix2struct-base: 768 // 12 = 64); the tiny config keeps the "
                "published 64 for 4 heads of a 64-wide model, and its forward fails",
            )
        },
    )
)
