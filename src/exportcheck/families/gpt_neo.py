"""GPT-Neo: an attention pattern repeated over the layers."""

from __future__ import annotations

from . import Family, register

register(
    Family(
        name="gpt_neo",
        model_types=("gpt_neo",),
        config_fixes={
            "gpt_neo": (
                {"attention_types": [[["global", "local"], 1]]},
                "attention_layers is expanded from attention_types, a pattern repeated 12 times",
            )
        },
    )
)
