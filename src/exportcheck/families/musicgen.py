"""MusicGen: token ids laid out per codebook."""

from __future__ import annotations

from . import Family, register

register(
    Family(
        name="musicgen",
        model_types=("musicgen", "musicgen_melody"),
        config_fixes={
            "musicgen": (
                {"decoder.num_codebooks": 1},
                "input_ids are (batch x codebooks, seq): one codebook keeps them (batch, seq)",
            ),
            "musicgen_melody": (
                {"decoder.num_codebooks": 1},
                "input_ids are (batch x codebooks, seq): one codebook keeps them (batch, seq)",
            ),
        },
    )
)
