"""LED: a Longformer encoder, global attention chosen by the mask's values."""

from __future__ import annotations

from . import Family, register

register(
    Family(
        name="led",
        model_types=("led",),
        task_known_failures={
            "text2text-generation": {
                "led": (
                    r"Could not guard on data-dependent expression Eq\(u\d+, 1\)",
                    "data-dependent control flow: LEDEncoder.forward "
                    "(transformers/models/led/modeling_led.py:1446) computes "
                    "is_global_attn = is_index_global_attn.flatten().any().item(), whether "
                    "any token of the batch has global attention, and its layers branch on "
                    "it; torch.export cannot guard on a value read from the data (the "
                    "Longformer encoder's failure, see families/longformer.py)",
                ),
            },
        },
    )
)
