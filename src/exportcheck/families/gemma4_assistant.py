"""Gemma 4 drafters (assistants for speculative decoding): fed by the main model, not by tokens.

A drafter takes neither token ids nor a cache of its own but, at each draft step, what the
main model hands it; its input sets are that step. Its default config is invalid for a
drafter without the constructor arguments below.
"""

from __future__ import annotations

from typing import Any

from ..dims import BATCH_MAX, length_bounds
from . import Family, register

_GEMMA4_DRAFT_STEP = (
    "a drafter: one step of SinglePositionMultiTokenCandidateGenerator "
    "(transformers.generation.candidate_generator), fed the main model's embedding of the "
    "last token and last hidden state (inputs_embeds) and the key-value states of its last "
    "layer of each type (shared_kv_states), here random tensors of their shapes"
)


def _draft_inputs(config: Any, batch: int, cache_length: int, generator: Any) -> dict[str, Any]:
    """One draft step of a Gemma 4 drafter, as ``SinglePositionMultiTokenCandidateGenerator``
    calls it after the main model has seen ``cache_length`` tokens.

    * ``inputs_embeds`` (batch, 1, 2 x backbone_hidden_size): the main model's scaled
      embedding of the last token next to its final-norm hidden state of that token
    * ``attention_mask`` (batch, cache_length): the main model's mask
    * ``position_ids`` (batch, 1): the last token's position, ``cache_length - 1``
      (generate passes shape (1, 1) with batch 1; one row per sequence is the same)
    * ``shared_kv_states``: layer type -> (keys, values) of the main model's last layer
      of that type, (batch, key-value heads, cache_length, head_dim) with the heads and
      head_dim of the drafter's layers of that type; below the sliding window, the
      sliding layer's states cover every token too

    The states are standard normal: RMS-normed keys and values, a scaled embedding
    and a final-norm hidden state all have entries of about unit size.
    """
    import torch

    text = config.get_text_config()
    feeds: dict[str, Any] = {
        "inputs_embeds": torch.randn(
            (batch, 1, 2 * config.backbone_hidden_size), generator=generator
        ),
        "attention_mask": torch.ones((batch, cache_length), dtype=torch.int64),
        "position_ids": torch.full((batch, 1), cache_length - 1, dtype=torch.int64),
    }
    states = {}
    for layer_type in dict.fromkeys(text.layer_types):
        layer = text.per_layer_config[text.layer_types.index(layer_type)]
        shape = (batch, layer.num_key_value_heads, cache_length, layer.head_dim)
        keys = torch.randn(shape, generator=generator)
        states[layer_type] = (keys, torch.randn(shape, generator=generator))
    feeds["shared_kv_states"] = states
    return feeds


def _draft_step(model: Any, config: Any, seed: int) -> dict[str, Any]:
    """The input sets of a drafter: one draft step each (see :func:`_draft_inputs`)."""
    import torch

    notes = [f"draft step: {_GEMMA4_DRAFT_STEP}"]
    generator = torch.Generator().manual_seed(seed)
    _, cache_max = length_bounds(config)
    # the last one at the declared upper bounds
    shapes = [(2, 1, 30), (1, 1, 30), (3, 1, 30), (2, 1, 60), (3, 1, 17), (BATCH_MAX, 1, cache_max)]
    sets = [_draft_inputs(config, b, c, generator) for b, _, c in shapes]
    batch = torch.export.Dim("batch", min=1, max=BATCH_MAX)
    cache_length = torch.export.Dim("cache_length", min=1, max=cache_max)
    state = {0: batch, 2: cache_length}
    dynamic_shapes = {
        "inputs_embeds": {0: batch},
        "attention_mask": {0: batch, 1: cache_length},
        "position_ids": {0: batch},
        "shared_kv_states": {k: (state, state) for k in sets[0]["shared_kv_states"]},
    }
    return {
        "sets": sets,
        "dynamic_shapes": dynamic_shapes,
        "cache_argument": "shared_kv_states",
        "shapes": shapes,
        "notes": notes,
        "prompts": [None] * len(shapes),
    }


register(
    Family(
        name="gemma4_assistant",
        model_types=("gemma4_assistant", "gemma4_unified_assistant"),
        config_arguments={
            "gemma4_assistant": (
                {
                    "text_config": {
                        "hidden_size_per_layer_input": 0,
                        "vocab_size_per_layer_input": 0,
                    }
                },
                "the default text config has per-layer input embeddings (256 wide, "
                "262144 ids), which validate_architecture rejects for a drafter; "
                "the published drafters (google/gemma-4-*-it-assistant) set both "
                "to 0",
            )
        },
        input_builders={"gemma4_assistant": _draft_step, "gemma4_unified_assistant": _draft_step},
    )
)
