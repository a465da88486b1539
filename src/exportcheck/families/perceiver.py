"""Perceiver: a fixed array of latents cross-attends to the input, then self-attends."""

from __future__ import annotations

from . import Family, register

register(
    Family(
        name="perceiver",
        model_types=("perceiver",),
        task_config_fixes={
            "image-classification": {
                "perceiver": (
                    {
                        "d_latents": 64,
                        "num_latents": 32,
                        "num_self_attends_per_block": 2,
                        "num_self_attention_heads": 2,
                        "num_cross_attention_heads": 1,
                    },
                    "the generic shrinking does not know the latent array (256 latents of "
                    "1280 values, 26 self-attentions): 272 M parameters untrained; 32 "
                    "latents of 64 values and 2 self-attentions keep the architecture",
                )
            }
        },
    )
)
