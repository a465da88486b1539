"""T5Gemma 2: an encoder-decoder whose encoder writes a SigLIP tower's pooled features
over the image tokens of its prompt."""

from __future__ import annotations

from . import Family, register

register(
    Family(
        name="t5gemma2",
        model_types=("t5gemma2",),
        config_fixes={
            "t5gemma2": (
                {
                    "image_token_index": 1015,
                    "encoder.image_token_index": 1015,
                    "encoder.vision_config.image_size": 64,
                    "encoder.mm_tokens_per_image": 4,
                },
                "the image token (256001) is beyond the tiny vocabulary of 1024, where the "
                "begin- and end-of-image tokens were moved (1017, 1016): it gets the next "
                "free id; and the projector pools each side's patches by "
                "patches // sqrt(mm_tokens_per_image), which the published 256 tokens over "
                "14 patches per side make 0: 64-pixel images of 4 patches per side, pooled "
                "to 2 x 2 = 4 tokens, as the checkpoints pool 64 patches per side to 16",
            )
        },
    )
)
