"""ShieldGemma 2: Gemma 3's vision-language model scoring an image against a policy prompt."""

from __future__ import annotations

from . import Family, register

register(
    Family(
        name="shieldgemma2",
        model_types=("shieldgemma2",),
        task_known_failures={
            "image-classification": {
                "shieldgemma2": (
                    r"You must specify exactly one of input_ids or inputs_embeds",
                    "ShieldGemma2ForImageClassification.forward "
                    "(transformers/models/shieldgemma2/modeling_shieldgemma2.py:113) runs "
                    "Gemma 3's language model on a policy prompt in which "
                    "ShieldGemma2Processor expands the image into image tokens, and reads "
                    "the Yes/No logits of its last token: it needs input_ids as well as "
                    "pixel_values, and without them Gemma3Model.forward "
                    "(transformers/models/gemma3/modeling_gemma3.py:838) raises. The task "
                    "feeds pixel values only; a prompt builder for this vision-language "
                    "classifier is not written",
                )
            }
        },
    )
)
