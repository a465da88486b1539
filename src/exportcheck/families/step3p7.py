"""Step 3.7: a text model that builds its sliding-window mask whatever its layer kinds."""

from __future__ import annotations

from . import Family, register

register(
    Family(
        name="step3p7",
        model_types=("step3p7",),
        config_fixes={
            "step3p7": (
                {"text_config.sliding_window": 512},
                "Step3p7TextModel.forward builds the sliding-window mask for every call "
                "(modeling_step3p7.py:889), and create_sliding_window_causal_mask refuses a "
                "config whose sliding_window is None, which the config class leaves it; "
                "512 is longer than every sequence checked, so the tiny model's layers "
                "(full attention) read no mask of it",
            )
        },
    )
)
