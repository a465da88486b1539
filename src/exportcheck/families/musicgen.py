"""MusicGen: token ids laid out per codebook."""

from __future__ import annotations

from . import Family, register

register(
    Family(
        name="musicgen",
        model_types=("musicgen", "musicgen_melody"),
        no_generation={
            "musicgen": (
                "its generate offsets the codebooks by a delay pattern (MusicgenForCausalLM.build_delay_pattern_mask) and needs decoder_start_token_id: not a loop of plain decode steps"
            ),
            "musicgen_melody": (
                "its generate offsets the codebooks by a delay pattern (MusicgenMelodyForCausalLM.build_delay_pattern_mask) and needs decoder_start_token_id: not a loop of plain decode steps"
            ),
        },
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
