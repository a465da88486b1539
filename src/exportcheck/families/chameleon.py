"""Chameleon: images as discrete tokens of a VQ-GAN, mapped into the text vocabulary."""

from __future__ import annotations

from . import Family, register

#: VQ codes of the tiny codebook, and the first text id they map to
CODES, FIRST_ID = 512, 400
#: the tiny vocabulary's image placeholder token
IMAGE_TOKEN = 1000


def _code_name(code: int) -> str:
    """The name of a VQ code's token in the checkpoints' vocabulary map: each decimal
    digit written as a letter (0 -> A), between IMGIMG and Z."""
    return "IMGIMG" + "".join(chr(ord("A") + int(d)) for d in str(code)) + "Z"


VOCABULARY_MAP = {"<image>": IMAGE_TOKEN, **{_code_name(c): FIRST_ID + c for c in range(CODES)}}

register(
    Family(
        name="chameleon",
        model_types=("chameleon",),
        config_fixes={
            "chameleon": (
                {
                    "vocabulary_map": VOCABULARY_MAP,
                    "image_token_id": IMAGE_TOKEN,
                    "vq_config.num_embeddings": CODES,
                    "vq_config.resolution": 128,
                    "vq_config.base_channels": 32,
                },
                "the config class leaves vocabulary_map None, while the checkpoints carry "
                "the tokenizer's map of '<image>' and of one token per VQ code "
                "('IMGIMG' + the code's digits as letters + 'Z'), which the model reads to "
                "turn codes into text ids; the tiny config gets such a map into its own "
                "vocabulary, for a codebook of 512 codes (8192 published, more than the "
                "tiny vocabulary holds), images of 128 pixels (8 x 8 codes) and 32 base "
                "channels",
            )
        },
    )
)
