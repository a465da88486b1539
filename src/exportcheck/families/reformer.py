"""Reformer: axial position encodings gathered in a loop over the batch."""

from __future__ import annotations

import sys
from typing import Any

import torch

from ..caches.pytrees import register_state_class
from ..patches import Patch
from ..patches.core import passthrough
from . import Family, register

MODULE = "transformers.models.reformer.modeling_reformer"


def reformer_axial_forward(self, position_ids):
    """AxialPositionEmbeddings.forward (eval) as a lookup in the full axial table."""
    if self.training:
        return passthrough(reformer_axial_forward.original, self, position_ids)
    mod = sys.modules[MODULE]
    axial_h, axial_w = self.axial_pos_shape
    if axial_h * axial_w < position_ids.shape[1]:
        raise ValueError(
            f"Make sure that config.axial_pos_shape factors: {self.axial_pos_shape} multiply "
            f"at least to the sequence length {position_ids.shape[1]}."
        )
    largest = position_ids.max().item()
    mod.torch_compilable_check(largest >= 0, "Axial position id underflow.")
    mod.torch_compilable_check(
        largest < axial_h * axial_w,
        "Position id exceeds axial_pos_shape[0] * axial_pos_shape[1].",
    )
    # row h * axial_w + w is the concatenation of the axial weights at (h, w)
    table = torch.cat(
        [w.expand((axial_h, axial_w, w.shape[-1])) for w in self.weights], dim=-1
    ).reshape(axial_h * axial_w, -1)
    return torch.nn.functional.embedding(position_ids, table)


def _install_reformer_axial_gather(patcher: Any, model: Any) -> None:
    """Look Reformer's axial position encodings up in one table instead of a loop over the batch.

    Fixes: torch.export of reformer: ``Constraints violated (batch, seq_length)! ... specialized
    it to be a constant (2)``: AxialPositionEmbeddings.forward
    (transformers/models/reformer/modeling_reformer.py:285-291), in eval mode, builds the
    encodings with ``for i in range(batch_size)`` of ``index_select``. The replacement
    concatenates the expanded axial weights into the (axial_h * axial_w, hidden) table and
    takes the rows at ``position_ids`` with ``F.embedding``: row p is what the original selects
    for position p, so the values are identical. The same range checks are kept; training mode
    runs the original.

    Remove when: transformers gathers the axial encodings without a loop over the batch.
    """
    patcher.replace_in(MODULE, "AxialPositionEmbeddings", "forward", reformer_axial_forward)


REFORMER_AXIAL_GATHER = Patch(
    name="reformer_axial_gather",
    fixes="Constraints violated (batch)! ... specialized it to be a constant (2)",
    remove_when="transformers gathers the axial encodings without a loop over the batch",
    install=_install_reformer_axial_gather,
    model_types=("reformer",),
)


def _flatten_reformer_cache(cache: Any) -> tuple[list[tuple[str, Any]], Any]:
    """ReformerDynamicCache -> [states_cache: [per layer], buckets_cache: [per entry]].

    ``_seen_tokens`` is not kept: it is the length of the first layer's states, recomputed
    on unflatten, so that the program accepts caches of any length."""
    children = [
        ("states_cache", list(cache.states_cache)),
        ("buckets_cache", list(cache.buckets_cache)),
    ]
    return children, None


def _unflatten_reformer_cache(children: list[Any], context: Any) -> Any:
    cls = sys.modules[MODULE].ReformerDynamicCache
    cache = cls.__new__(cls)
    cache.states_cache = list(children[0])
    cache.buckets_cache = list(children[1])
    cache._seen_tokens = cache.states_cache[0].shape[1] if cache.states_cache else 0
    return cache


def _reformer_cache_shapes(cache: Any, batch: Any, length: Any) -> Any:
    """States are (batch, tokens, hidden); buckets (batch, heads, hashes x tokens) when
    an LSH layer hashed the prompt, else empty (their shape does not vary)."""
    states = [{0: batch, 1: length} for _ in cache.states_cache]
    buckets = [{0: batch} if b.dim() > 1 else None for b in cache.buckets_cache]
    return [states, buckets]


def _setup() -> None:
    # ReformerDynamicCache is not a transformers Cache: without this, cache_dynamic_shapes
    # raises "expected a transformers cache with layers ... got ReformerDynamicCache".
    register_state_class(
        MODULE,
        "ReformerDynamicCache",
        flatten=_flatten_reformer_cache,
        unflatten=_unflatten_reformer_cache,
        dynamic_shapes=_reformer_cache_shapes,
    )


# The encoder tasks: both ways, and chunks longer than their longest checked length.
_ENCODER_FIX = (
    {"is_decoder": False, "lsh_attn_chunk_length": 1024, "local_attn_chunk_length": 1024},
    "a masked LM and an encoder attend both ways (ReformerForMaskedLM asserts "
    "'config.is_decoder=False', while the causal LM of text-generation needs True); these "
    "tasks check lengths up to 512, and with chunks of 128 ReformerModel.forward pads a "
    "longer input to a multiple of 128 and chunks its attention, another graph than the "
    "one traced at length 8 (the export is valid up to 128 only: 'Guard failed: "
    "input_ids.size()[1] <= 128' at 512); chunks of 1024, longer than any checked length, "
    "run the unchunked attention on every length, as the chunks of 128 do for "
    "text-generation's lengths",
)

register(
    Family(
        name="reformer",
        model_types=("reformer",),
        config_fixes={
            "reformer": (
                {
                    "axial_pos_embds_dim": [32, 32],
                    "lsh_attn_chunk_length": 128,
                    "local_attn_chunk_length": 128,
                },
                "axial position embedding widths must add up to hidden_size; attention "
                "chunks of 128, longer than any checked length (<= 64), run the same "
                "unchunked attention as chunks of 64 without the guard 'length % 64 != 0' "
                "that is false at 64",
            )
        },
        task_config_fixes={
            task: {"reformer": _ENCODER_FIX} for task in ("fill-mask", "feature-extraction")
        },
        no_cache={
            "reformer": "its state (ReformerDynamicCache in past_buckets_states, flattened "
            "by this family) takes one new token per step (LSHSelfAttention.forward asserts "
            "it, transformers/models/reformer/modeling_reformer.py:468), and checked that "
            "way it fails twice: eager's decode step differs from a full forward over "
            "prompt + new tokens by 1.1e-3 on the left-padded set (LSHSelfAttention._attend "
            "applies the padding mask only without a cache, :861, so a cached step attends "
            "to the cached padding; generate never passes a mask, "
            "prepare_inputs_for_generation drops it, :2287), and torch.export raises "
            "'Constraints violated (L['attention_mask'].size()[1], cache_length)! ... must "
            "always be related to ... by L['attention_mask'].size()[1] = cache_length + 1 "
            "... satisfy the generated guard 2 <= "
            "L['past_buckets_states']['states_cache'][0].size()[1] and ... <= 126' (the "
            "cached local attention changes branch once cache + 1 reaches "
            "local_attn_chunk_length 128); the task's dynamic shapes give the mask a "
            "dimension of its own and the cache one bounded by 8128",
        },
        patches=(REFORMER_AXIAL_GATHER,),
        setup=_setup,
    )
)
