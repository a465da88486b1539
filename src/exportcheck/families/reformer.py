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


def reformer_lsh_attend(
    self, query_vectors, key_vectors, value_vectors, sorted_bucket_idx_per_hash,
    attention_mask, do_standard_self_attention, use_cache,
):  # fmt: skip
    """LSHSelfAttention._attend; a cached one-token step without hashed buckets masks the
    padding of its keys (cached and new) as the full forward does."""
    keys = key_vectors.shape[-2]
    if not (
        use_cache
        and do_standard_self_attention
        and query_vectors.dim() == 4  # no hash rounds: the cache holds no buckets
        and attention_mask is not None
        and attention_mask.dim() == 2
    ):
        return passthrough(
            reformer_lsh_attend.original, self, query_vectors, key_vectors, value_vectors,
            sorted_bucket_idx_per_hash, attention_mask, do_standard_self_attention, use_cache,
        )  # fmt: skip
    if query_vectors.dtype == torch.float16:
        blocked, own = self.mask_value_float16.half(), self.self_mask_value_float16.half()
    else:
        blocked, own = self.mask_value_float32, self.self_mask_value_float32
    scores = torch.matmul(query_vectors, key_vectors.transpose(-1, -2))  # (B, H, 1, keys)
    # the one query is the last position: causality masks nothing, padding does
    scores = torch.where(attention_mask.to(torch.bool)[:, None, None, :], scores, blocked)
    # shared query-key attention: a token attends to itself only as a last resort
    last = torch.arange(keys, device=scores.device) == keys - 1
    scores = torch.where(last, own, scores)
    logits = torch.logsumexp(scores, dim=-1, keepdim=True)
    probs = torch.exp(scores - logits)
    probs = torch.nn.functional.dropout(probs, p=self.dropout, training=self.training)
    return torch.matmul(probs, value_vectors), logits, probs


def _install_reformer_cached_padding(patcher: Any, model: Any) -> None:
    """Mask the cached padding in the decode step of Reformer's LSH layers.

    Fixes: a left-padded row's decode step differs from the full forward over prompt +
    new token by 1.1e-3: LSHSelfAttention._attend
    (transformers/models/reformer/modeling_reformer.py:861) applies the attention mask
    only ``if not use_cache``, so a cached step attends to the padding in its cache
    (generate never sees it: prepare_inputs_for_generation drops the mask, :2287). The
    replacement handles the cached one-token step whose cache holds no hashed buckets
    (prompts up to ``lsh_attn_chunk_length``): the dot products, the padding mask, the
    self mask on the new token's own key, softmax. Every other call runs the original;
    an unpadded step masks nothing, so its numbers are the original's.

    Since eager is wrong without it, :func:`exportcheck.validate` computes its eager
    reference with it (``corrects_eager``).

    Remove when: LSHSelfAttention masks the padding on cached steps.
    """
    patcher.replace_in(MODULE, "LSHSelfAttention", "_attend", reformer_lsh_attend)


REFORMER_CACHED_PADDING = Patch(
    name="reformer_cached_padding",
    fixes="a left-padded row's cached step attends to its padding: LSHSelfAttention "
    "applies the attention mask only without a cache",
    remove_when="LSHSelfAttention masks the padding on cached steps",
    install=_install_reformer_cached_padding,
    model_types=("reformer",),
    corrects_eager=True,
)


def reformer_attention_forward(self, hidden_states, attention_mask=None, *args, **kwargs):
    """ReformerAttention.forward; a cached step takes its mask's columns by index."""
    cache = kwargs.get("past_buckets_states")
    if (
        cache is None
        or attention_mask is None
        or attention_mask.dim() != 2
        or len(cache.states_cache) <= self.layer_id
    ):
        return passthrough(
            reformer_attention_forward.original, self, hidden_states, attention_mask,
            *args, **kwargs,
        )  # fmt: skip
    keys = cache.states_cache[self.layer_id].shape[1] + hidden_states.shape[1]
    columns = torch.arange(keys, device=attention_mask.device) + (attention_mask.shape[1] - keys)
    return reformer_attention_forward.original(
        self, hidden_states, attention_mask.index_select(1, columns), *args, **kwargs
    )


def _install_reformer_step_mask(patcher: Any, model: Any) -> None:
    """Keep the mask of Reformer's decode step a dimension of its own.

    Fixes: torch.export of reformer with its cache: ``Constraints violated
    (L['attention_mask'].size()[1])! ... must always be related to the values of
    cache_length ... by L['attention_mask'].size()[1] = cache_length + 1``: the attention layers broadcast the
    mask against keys of the cached and new tokens. The replacement passes each attention
    layer the mask's last ``cache + new`` columns, picked with ``index_select`` (a slice
    would tie the lengths again): the mask already has that length, so these are its own
    values.

    Remove when: torch.export can declare a dimension as the sum of two others.
    """
    patcher.replace_in(MODULE, "ReformerAttention", "forward", reformer_attention_forward)


REFORMER_STEP_MASK = Patch(
    name="reformer_step_mask",
    fixes="Constraints violated (L['attention_mask'].size()[1])! ... must always be related "
    "to the values of cache_length ... L['attention_mask'].size()[1] = cache_length + 1",
    remove_when="torch.export can declare a dimension as the sum of two others",
    install=_install_reformer_step_mask,
    model_types=("reformer",),
)


def reformer_cache_update(self, buckets, states, layer_idx, cache_kwargs=None):
    """ReformerDynamicCache.update; a layer without buckets keeps its one empty entry."""
    if buckets is not None or len(self.buckets_cache) <= layer_idx:
        return passthrough(
            reformer_cache_update.original, self, buckets, states, layer_idx, cache_kwargs
        )
    # the original's other branch would append another empty entry for this layer
    kept = self.buckets_cache
    self.buckets_cache = kept[:layer_idx]
    try:
        return reformer_cache_update.original(self, None, states, layer_idx, cache_kwargs)
    finally:
        self.buckets_cache = kept


def _install_reformer_cache_buckets(patcher: Any, model: Any) -> None:
    """Keep one buckets entry per layer in Reformer's cache across decode steps.

    Fixes: the generation stage, ``Trying to flatten user inputs with exported input tree
    spec``: ReformerDynamicCache.update
    (transformers/models/reformer/modeling_reformer.py:124-126) appends an empty tensor to
    ``buckets_cache`` whenever a layer brings no buckets (local attention, and LSH attention
    that hashed nothing), on every step: after a prefill the cache of two layers holds 2
    entries, after one decode step 4, so the step's output cache is not the structure its
    input had and cannot be fed back. Layers read only their own entry
    (``buckets_cache[layer_idx]``), which stays the same empty tensor, so the numbers are
    the original's; only the list stops growing.

    Since eager's cache is wrong without it (entries for layers that do not exist), the
    eager reference is computed with it (``corrects_eager``).

    Remove when: ReformerDynamicCache.update stops appending for a layer it already holds.
    """
    patcher.replace_in(MODULE, "ReformerDynamicCache", "update", reformer_cache_update)


REFORMER_CACHE_BUCKETS = Patch(
    name="reformer_cache_buckets",
    fixes="Trying to flatten user inputs with exported input tree spec: the step's cache "
    "comes back with two more empty buckets entries",
    remove_when="ReformerDynamicCache.update stops appending for a layer it already holds",
    install=_install_reformer_cache_buckets,
    model_types=("reformer",),
    corrects_eager=True,
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
                    "lsh_attn_chunk_length": 512,
                    "local_attn_chunk_length": 512,
                },
                "axial position embedding widths must add up to hidden_size; attention "
                "chunks of 512, longer than any checked prompt or cache + new token "
                "(<= 257), run the unchunked attention on every checked length: with chunks "
                "of 64 a prompt of 64 meets the guard 'length % 64 != 0', and the cached "
                "local attention changes branch once cache + 1 reaches the chunk length, so "
                "the export would be valid for caches up to 126 only ('... <= 126')",
            )
        },
        task_config_fixes={
            task: {"reformer": _ENCODER_FIX} for task in ("fill-mask", "feature-extraction")
        },
        one_token_decode={
            "reformer": "LSHSelfAttention.forward asserts one new token per step when "
            "past_buckets_states is given (transformers/models/reformer/modeling_reformer.py:468)",
        },
        patches=(
            REFORMER_AXIAL_GATHER,
            REFORMER_CACHED_PADDING,
            REFORMER_STEP_MASK,
            REFORMER_CACHE_BUCKETS,
        ),
        setup=_setup,
    )
)
