"""HRM text: cache slots per stack and cycle."""

from __future__ import annotations

from . import Family, register

register(
    Family(
        name="hrm_text",
        model_types=("hrm_text",),
        config_fixes={
            "hrm_text": (
                {"num_layers_per_stack": 1, "num_hidden_layers": 8},
                "cache slots = layers per stack x H cycles x (L cycles + 1); the stack was "
                "not shrunk",
            )
        },
    )
)
