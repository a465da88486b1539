"""BLIP-2 and InstructBLIP: a Q-Former's query outputs, projected, written over image
placeholder tokens (InstructBLIP's Q-Former also reads the prompt)."""

from __future__ import annotations

from . import Family, register

#: an id of the tiny text vocabulary (1024) that no special token of the tiny configs uses
IMAGE_TOKEN = 1000
_TYPES = ("blip-2", "instructblip")

register(
    Family(
        name="blip2",
        model_types=(*_TYPES, "instructblipvideo"),
        config_fixes={
            t: (
                {"image_token_index": IMAGE_TOKEN},
                "the config class leaves image_token_index None, while the checkpoints "
                "set it to the '<image>' token their processor adds to the tokenizer "
                "(Salesforce/blip2-opt-2.7b: 50265) and writes num_query_tokens times "
                "before the prompt; the forward and generate write the projected query "
                "outputs over those tokens (masked_scatter), so the tiny config names an "
                "id of its own vocabulary",
            )
            for t in _TYPES
        }
        | {
            "instructblipvideo": (
                {"video_token_index": IMAGE_TOKEN},
                "the config class leaves video_token_index None, while the processor adds "
                "a '<video>' token to the tokenizer and writes it num_query_tokens times "
                "per frame before the prompt; the forward and generate write the projected "
                "query outputs of every frame over those tokens, so the tiny config names "
                "an id of its own vocabulary",
            )
        },
    )
)
