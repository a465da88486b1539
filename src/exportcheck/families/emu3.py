"""Emu3: images as discrete codes of a VQ-VAE, mapped into the text vocabulary, one
row-end token after each row of codes."""

from __future__ import annotations

from . import Family, register

#: VQ codes of the tiny codebook, and the first text id they map to
CODES, FIRST_ID = 512, 400
#: the tiny vocabulary's image placeholder and row-end tokens
IMAGE_TOKEN, ROW_END = 1000, 1001


def _code_name(code: int) -> str:
    """The name of a VQ code's token in the checkpoints' vocabulary map: the code in six
    digits, which the model reads back from the name's characters [-8:-2]."""
    return f"<|visual token {code:06d}|>"


VOCABULARY_MAP = {
    "<image>": IMAGE_TOKEN,
    "<|extra_200|>": ROW_END,
    **{_code_name(c): FIRST_ID + c for c in range(CODES)},
}

register(
    Family(
        name="emu3",
        model_types=("emu3",),
        config_fixes={
            "emu3": (
                {
                    "vocabulary_map": VOCABULARY_MAP,
                    "vq_config.codebook_size": CODES,
                    "vq_config.base_channels": 32,
                    "vq_config.hidden_size": 128,
                },
                "the config class leaves vocabulary_map None, while the checkpoints carry "
                "the tokenizer's map, which the model reads (Emu3ImageVocabularyMapping) "
                "for the image placeholder '<image>', the row-end token '<|extra_200|>' "
                "written after each row of codes, and one '<|visual token NNNNNN|>' token "
                "per VQ code; the tiny config gets such a map into its own vocabulary, for "
                "a codebook of 512 codes (32768 in the config class, more than the tiny "
                "vocabulary holds) and 32 base channels (256); the VQ attention block of "
                "the last stage "
                "(attn_resolutions [3]) runs on base_channels x channel_multiplier[3] "
                "channels with vq_config.hidden_size as its width, 256 x 4 = 1024 in the "
                "config class: 32 x 4 = 128 here (the generic shrink leaves 64)",
            )
        },
    )
)
