"""State-space and hybrid Mamba models: one new token per decode step, and layer patterns
that keep an attention layer after shrinking.
"""

from __future__ import annotations

from . import Family, register

register(
    Family(
        name="state_space",
        model_types=(
            "mamba",
            "falcon_mamba",
            "jamba",
            "zamba",
            "bamba",
            "granitemoehybrid",
            "lfm2_moe",
        ),
        config_fixes={
            "zamba": (
                {"layers_block_type": ["hybrid", "hybrid"]},
                "the shared transformer's weight-tying pattern needs at least two hybrid layers",
            ),
            "bamba": (
                {"attn_layer_indices": [1]},
                "attn_layer_indices defaults to None: no attention layer, and get_seq_length "
                "needs one",
            ),
            "granitemoehybrid": (
                {"layer_types": ["linear_attention", "full_attention"]},
                "default layer_types are all linear attention: no attention layer "
                "for get_seq_length",
            ),
            "lfm2_moe": (
                {"layer_types": ["conv", "full_attention"], "num_dense_layers": 1},
                "layer_types defaults to None but is indexed per layer; keep one MoE layer",
            ),
        },
        one_token_decode={
            "mamba": "with a cache, several new tokens start from a zero state (wrong in eager); "
            "one token at a time is the decode step",
            "falcon_mamba": "with a cache, several new tokens start from a zero state (wrong in "
            "eager); one token at a time is the decode step",
            "jamba": "with a cache, several new tokens start its Mamba layers from a zero state "
            "(wrong in eager); one token at a time is the decode step",
            "zamba": "with a cache, several new tokens start its Mamba layers from a zero state "
            "(wrong in eager); one token at a time is the decode step",
        },
    )
)
