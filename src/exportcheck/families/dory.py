"""Dory: input, recurrent and output layer counts."""

from __future__ import annotations

from . import Family, register

register(
    Family(
        name="dory",
        model_types=("dory",),
        config_fixes={
            "dory": (
                {
                    "layer_types": ["sliding_attention", "full_attention", "sliding_attention"],
                    "num_hidden_layers": 3,
                    "n_input_layers": 1,
                    "n_recurrent_layers": 1,
                    "n_output_layers": 1,
                },
                "input, recurrent and output layer counts must add up to num_hidden_layers",
            )
        },
    )
)
