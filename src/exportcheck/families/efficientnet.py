"""EfficientNet: widths and depths scaled by coefficients the generic shrinking does not
know."""

from __future__ import annotations

from . import Family, register

register(
    Family(
        name="efficientnet",
        model_types=("efficientnet",),
        config_fixes={
            "efficientnet": (
                {"width_coefficient": 0.5, "depth_coefficient": 0.5, "hidden_dim": 640},
                "the config class defaults to EfficientNet-B7's scaling (width 2.0, depth "
                "3.1: 64 million parameters and 55 blocks), which the generic shrinking does "
                "not know: width and depth coefficients of 0.5 (12 blocks), and hidden_dim "
                "640, the width the top convolution gets from them (round_filters(config, "
                "1280), modeling_efficientnet.py:394) and the classifier reads",
            )
        },
    )
)
