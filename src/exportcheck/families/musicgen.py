"""MusicGen: token ids laid out per codebook, offset by a delay pattern in generation."""

from __future__ import annotations

from typing import Any

from . import Family, register


def delay_pattern_settings(model: Any) -> dict[str, Any]:
    """What MusicGen's own ``generate`` needs on top of greedy settings: the token that
    fills the delayed positions (its padding token when the config names none) and an
    explicit single sequence per prompt (it expands the ids by that number itself)."""
    start = model.generation_config.decoder_start_token_id
    if start is None:
        start = model.generation_config.pad_token_id
    return {"decoder_start_token_id": start, "num_return_sequences": 1}


def delay_pattern_feed(model: Any, ids: Any, forced: Any, settings: dict[str, Any]) -> Any:
    """The prompt and new tokens as MusicGen's ``generate`` feeds them to its decode
    steps: the prompt laid out by the model's ``build_delay_pattern_mask`` (codebook k
    shifted right by k, the positions before it filled with the start token), and every
    later token passed through ``apply_delay_pattern_mask`` with the same pattern."""
    import torch

    length = ids.shape[1] + forced.shape[1]
    start = settings["decoder_start_token_id"]
    prompt, pattern = model.build_delay_pattern_mask(ids, pad_token_id=start, max_length=length)
    fed = model.apply_delay_pattern_mask(torch.cat([prompt, forced], 1), pattern)
    return fed[:, : prompt.shape[1]], fed[:, prompt.shape[1] :]


_PATTERN = (
    "its generate offsets the codebooks by a delay pattern ({}.build_delay_pattern_mask): "
    "the steps are fed the ids as generate lays them out, the first position replaced by "
    "the start token"
)
_LAST_TOKEN_ONLY = (
    "; and it feeds a prompt's last token only (MusicgenForCausalLM."
    "prepare_inputs_for_generation keeps input_ids[:, -1:] whenever a cache is given, the "
    "empty one of the first call included), so generation starts from a one-token prompt, "
    "as it is used"
)

register(
    Family(
        name="musicgen",
        model_types=("musicgen", "musicgen_melody"),
        generation_inputs={
            "musicgen": (
                1,
                delay_pattern_settings,
                delay_pattern_feed,
                _PATTERN.format("MusicgenForCausalLM") + _LAST_TOKEN_ONLY,
            ),
            "musicgen_melody": (
                None,
                delay_pattern_settings,
                delay_pattern_feed,
                _PATTERN.format("MusicgenMelodyForCausalLM"),
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
