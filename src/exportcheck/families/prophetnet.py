"""ProphetNet: an n-gram decoder whose decode step takes exactly one new token."""

from __future__ import annotations

import contextvars
import sys
from typing import Any

import torch

from ..patches import Patch
from ..patches.core import passthrough
from . import Family, register

MODULE = "transformers.models.prophetnet.modeling_prophetnet"


def prophetnet_positions_forward(
    self, inputs_shape, device, attention_mask=None, cache=None, position_ids=None
):
    """ProphetNetPositionalEmbeddings.forward, the decode step without int() on the length."""
    if position_ids is None and cache is not None and cache.get_seq_length() != 0:
        seen = inputs_shape[1] + cache.get_seq_length()
        ones = torch.ones((1, 1), dtype=torch.long, device=device)
        position_ids = ones * (self.padding_idx + seen)
        return self._forward(position_ids), position_ids
    return passthrough(
        prophetnet_positions_forward.original,
        self, inputs_shape, device, attention_mask=attention_mask, cache=cache,
        position_ids=position_ids,
    )  # fmt: skip


def _prophetnet_buckets(self, offsets, position_ids):
    mod = sys.modules[MODULE]
    relative = offsets[None, None, :] - position_ids[:, :, None]
    return mod.compute_relative_buckets(
        self.num_buckets, self.relative_max_distance, relative, False
    ).long()


def prophetnet_main_relative(self, hidden_states, attn_weights, position_ids, buckets):
    """get_main_relative_pos_embeddings, gathering with buckets broadcast over the heads:
    those the decoder precomputed (no cache, a row of buckets per query) or, in the
    decode step, the new token's."""
    batch, heads, tgt, src = attn_weights.shape
    if buckets is None:
        buckets = _prophetnet_buckets(
            self, torch.arange(1, src + 1, device=position_ids.device), position_ids
        )
    rel = self.relative_pos_embeddings(hidden_states)  # (batch, tgt, buckets * heads)
    rel = rel.view(batch, tgt, self.num_buckets, heads).permute(0, 3, 1, 2)
    return torch.gather(rel, 3, buckets.long()[:, None].expand(batch, heads, tgt, src))


def prophetnet_predict_relative(self, hidden_states, attn_weights, position_ids, buckets):
    """get_predict_relative_pos_embeddings: every (batch, ngram, head, token) gathers the
    embeddings of its own token with that token's buckets; the decode step (``buckets``
    None) builds its buckets broadcast by ``expand``."""
    mod = sys.modules[MODULE]
    batch, ngram, heads, tgt, keys = attn_weights.shape
    if buckets is None:
        mod.torch_compilable_check(
            position_ids[0][0] == keys - 1,
            "`position_ids` are incorrect. They should be of the format 1 2 3 4 5 ... "
            "(key_sequence_length - 1)",
        )
        buckets = _prophetnet_buckets(
            self, torch.arange(0, keys, device=position_ids.device), position_ids
        )
    # hidden_states: (batch, tokens, ngram, hidden) -> (batch, ngram, heads, tokens, buckets)
    rel = self.relative_pos_embeddings(hidden_states.transpose(1, 2))
    rel = rel.view(batch, ngram, tgt, self.num_buckets, heads).permute(0, 1, 4, 2, 3)
    index = buckets.long()[:, None, None].expand(batch, ngram, heads, tgt, keys)
    return torch.gather(rel, 4, index)


def _install_prophetnet_predict_layout(patcher: Any, model: Any) -> None:
    """Gather each query's own predict-stream relative-position embeddings.

    Fixes: eager's full forward over several tokens, which the decode step is compared
    with, mixes the predict streams' position scores of other tokens: in
    get_predict_relative_pos_embeddings (transformers/models/prophetnet/
    modeling_prophetnet.py:771-828) the embeddings are flattened in (batch, token, ngram,
    head) order, the buckets in (ngram, batch, head, token) order, and the result is read
    as (batch, ngram, head, token); the orders agree only for one query token, so the
    decode step is right and every forward over several tokens is not (changing token 10
    changes the n-gram states of tokens 0-9). Eager's decode step differs from the full
    forward by 1.7e-3 without it, 1.5e-7 with it. The replacement projects the same
    embeddings and gathers, for every (batch, ngram, head, token), the buckets of that
    token. For one token (the decode step) it builds the buckets broadcast by ``expand``
    instead of viewing a repeated tensor, which torch.export cannot keep symbolic (see
    ``prophetnet_decode_step``): the same entries, the decode step's logits unchanged.

    Since eager is wrong without it, :func:`exportcheck.validate` computes its eager
    reference with it (``corrects_eager``).

    Remove when: get_predict_relative_pos_embeddings flattens embeddings and buckets in
    one order.
    """
    patcher.replace_in(
        MODULE,
        "ProphetNetNgramSelfAttention",
        "get_predict_relative_pos_embeddings",
        prophetnet_predict_relative,
    )


PROPHETNET_PREDICT_LAYOUT = Patch(
    name="prophetnet_predict_layout",
    fixes="a forward over several tokens mixes the predict streams' position scores of "
    "other tokens (the embeddings and buckets flattened in different orders)",
    remove_when="get_predict_relative_pos_embeddings flattens embeddings and buckets in one order",
    install=_install_prophetnet_predict_layout,
    model_types=("prophetnet",),
    corrects_eager=True,
)


#: the 2D padding mask of the decoder call running, for its cached step's attention
_STEP_MASK: contextvars.ContextVar[Any] = contextvars.ContextVar("prophetnet_mask", default=None)


def prophetnet_decoder_forward(self, *args, **kwargs):
    """ProphetNetDecoder.forward, its padding mask kept for the attention of a cached step."""
    mask = kwargs.get("attention_mask")
    cache = kwargs.get("cache", kwargs.get("past_key_values"))
    if mask is None or cache is None or mask.dim() != 2:
        return passthrough(prophetnet_decoder_forward.original, self, *args, **kwargs)
    token = _STEP_MASK.set(mask)
    try:
        return prophetnet_decoder_forward.original(self, *args, **kwargs)
    finally:
        _STEP_MASK.reset(token)


def prophetnet_ngram_attention(
    self, hidden_states, cache=None, attention_mask=None, extended_predict_attention_mask=None,
    **kwargs,
):  # fmt: skip
    """ProphetNetNgramSelfAttention.forward: a cached step without masks gets the padding
    mask of its decoder call over the cached and new keys of both streams."""
    mask = _STEP_MASK.get()
    if mask is None or cache is None or attention_mask is not None:
        return passthrough(
            prophetnet_ngram_attention.original, self, hidden_states, cache=cache,
            attention_mask=attention_mask,
            extended_predict_attention_mask=extended_predict_attention_mask, **kwargs,
        )  # fmt: skip
    dtype = hidden_states.dtype
    self_cache = getattr(cache, "self_attention_cache", cache)
    keys = self_cache.get_seq_length(self.layer_idx) + 1  # the cached tokens and the new one
    # the last ``keys`` columns, picked by index: a slice would tie the mask's length to
    # the cache's in the exported graph (a guard mask == cache + 1 on its contiguity)
    columns = torch.arange(keys, device=mask.device) + (mask.shape[1] - keys)
    blocked = (1.0 - mask.index_select(1, columns).to(dtype)) * torch.finfo(dtype).min
    main = blocked[:, None, None, :]  # (batch, heads, 1 query, keys)
    # the predict streams attend the main keys, then their own key: never masked
    own = torch.zeros_like(blocked[:, :1])
    predict = torch.cat([blocked, own], 1)[:, None, None, None, :]
    return prophetnet_ngram_attention.original(
        self, hidden_states, cache=cache, attention_mask=main,
        extended_predict_attention_mask=predict, **kwargs,
    )  # fmt: skip


def _install_prophetnet_cached_mask(patcher: Any, model: Any) -> None:
    """Mask the padding of a cached step's keys.

    Fixes: a left-padded row's decode step attends to its padding and differs from the
    full forward over prompt + token (1.6e-3): with a cache, ProphetNetDecoder.forward
    (transformers/models/prophetnet/modeling_prophetnet.py:1168-1178) sets the main and
    predict streams' attention masks to None, whatever ``attention_mask`` says. The
    replacements keep the decoder call's 2D mask (cached and new tokens) for its
    attention layers, which add it, as the full forward does, over the main stream's keys
    and the predict streams' main keys (their own key stays unmasked). Unpadded masks add
    zeros: the same numbers as before.

    Since eager is wrong without it, :func:`exportcheck.validate` computes its eager
    reference with it (``corrects_eager``).

    Remove when: ProphetNetDecoder masks the padding on cached steps.
    """
    patcher.replace_in(MODULE, "ProphetNetDecoder", "forward", prophetnet_decoder_forward)
    patcher.replace_in(
        MODULE, "ProphetNetNgramSelfAttention", "forward", prophetnet_ngram_attention
    )


PROPHETNET_CACHED_MASK = Patch(
    name="prophetnet_cached_mask",
    fixes="a left-padded row's cached step attends to its padding: the decoder drops the "
    "attention masks whenever a cache is given",
    remove_when="ProphetNetDecoder masks the padding on cached steps",
    install=_install_prophetnet_cached_mask,
    model_types=("prophetnet",),
    corrects_eager=True,
)


def prophetnet_compilable_check(cond, msg, error_type=ValueError):
    """transformers' torch_compilable_check, recording a tensor condition with item() while
    exporting (torch._check_tensor_all records aten._is_all_true, which ONNX lacks)."""
    if isinstance(cond, torch.Tensor) and torch.compiler.is_exporting():
        torch._check(cond.all().item())
        return None
    return passthrough(prophetnet_compilable_check.original, cond, msg, error_type)


def _install_prophetnet_decode_step(patcher: Any, model: Any) -> None:
    """Keep ProphetNet's decode step symbolic in the cache length, and convertible to ONNX.

    Fixes, for prophetnet with a cache:

    * torch.export: ``Constraints violated (cache_length)! ... specialized it to be a
      constant (30)``: ProphetNetPositionalEmbeddings.forward
      (transformers/models/prophetnet/modeling_prophetnet.py:364-367) builds the new token's
      position with ``int(padding_idx + new_tokens + cache_length)``. The same product
      without ``int()`` gives the same id.
    * then ``Not all values of cache_length ... satisfy the generated guard min(1 +
      cache_length, 16 + 16*cache_length) == 1 + cache_length``: a ``.view`` of the repeated
      relative-position buckets (get_main_relative_pos_embeddings, :760; the predict
      stream's is replaced by ``prophetnet_predict_layout``). In the decode step the
      replacement gathers the bucket embeddings with buckets broadcast by ``expand``: the
      same entries of the same projection. Without a cache (precomputed buckets) the
      original runs.
    * torch.onnx.export: ``No ONNX function found for aten._is_all_true``: the module's
      ``torch_compilable_check`` on a tensor becomes ``torch._check_tensor_all``; while
      exporting, the same assertion is recorded with ``cond.all().item()``.

    Remove when: transformers drops the ``int()``, builds the decode buckets without viewing
    a repeated tensor, and the ONNX exporter translates ``_is_all_true``.
    """
    embeddings, attention = "ProphetNetPositionalEmbeddings", "ProphetNetNgramSelfAttention"
    for owner, attribute, value in (
        (embeddings, "forward", prophetnet_positions_forward),
        (attention, "get_main_relative_pos_embeddings", prophetnet_main_relative),
        (None, "torch_compilable_check", prophetnet_compilable_check),
    ):
        patcher.replace_in(MODULE, owner, attribute, value)


PROPHETNET_DECODE_STEP = Patch(
    name="prophetnet_decode_step",
    fixes="Constraints violated (cache_length)! ... specialized it to be a constant (30)",
    remove_when="transformers drops the ``int()``, builds the decode buckets without viewing a "
    "repeated tensor, and the ONNX exporter translates ``_is_all_true``",
    install=_install_prophetnet_decode_step,
    model_types=("prophetnet",),
)


def prophetnet_streams_chunk(self, chunks, dim=0):
    """torch.Tensor.chunk, in equal pieces by narrow when the length is a multiple of the
    piece count (the same pieces); otherwise the original."""
    from torch.fx.experimental.symbolic_shapes import guard_or_false

    length = self.shape[dim]
    if not guard_or_false(length % chunks == 0):
        return passthrough(prophetnet_streams_chunk.original, self, chunks, dim)
    size = length // chunks
    return tuple(self.narrow(dim, i * size, size) for i in range(chunks))


def _install_prophetnet_streams_split(patcher: Any, model: Any) -> None:
    """Cut ProphetNet's main and predict streams into equal pieces by narrowing.

    Fixes: the first decoder step (several tokens, no cache) exported with a dynamic
    length: ``Constraints violated (seq_length)! ... generated guard (((-1) +
    4*L['decoder_input_ids'].size()[1]) // L['decoder_input_ids'].size()[1]) == 3``.
    ProphetNetNgramSelfAttention.forward
    (transformers/models/prophetnet/modeling_prophetnet.py:602-605) cuts the hidden states,
    queries, keys and values of its 1 + ngram streams with ``chunk``, whose decomposition
    checks that pieces of ceil(length / pieces) give that many pieces: true for every
    length, not provable by the symbolic shapes. The streams have equal lengths, so the
    replacement narrows each piece at its offset: the same tensors. It replaces
    ``torch.Tensor.chunk`` while a model holding ProphetNet modules is exported (given to
    :func:`exportcheck.export_patches`; those four lines are the model's only calls) and
    narrows only a length known to be a multiple of the piece count,
    where ``chunk`` gives the same pieces; any other call runs the original.

    Remove when: torch.export proves the piece count of ``chunk`` on a multiple of it.
    """
    # torch.Tensor is everyone's: replaced only while a ProphetNet model is exported
    if model is not None and any(type(m).__module__ == MODULE for m in model.modules()):
        patcher.replace(torch.Tensor, "chunk", prophetnet_streams_chunk)


PROPHETNET_STREAMS_SPLIT = Patch(
    name="prophetnet_streams_split",
    fixes="Constraints violated (seq_length)! ... ((-1) + 4*L['decoder_input_ids'].size()[1]) "
    "// L['decoder_input_ids'].size()[1]) == 3",
    remove_when="torch.export proves the piece count of chunk on a multiple of it",
    install=_install_prophetnet_streams_split,
    model_types=("prophetnet",),
)


def _float_masks(self, kwargs: dict[str, Any]) -> dict[str, Any]:
    for name in ("attention_mask", "encoder_attention_mask"):
        mask = kwargs.get(name)
        if isinstance(mask, torch.Tensor) and not mask.is_floating_point():
            kwargs[name] = mask.to(self.dtype)
    return kwargs


def prophetnet_encoder_float_masks(self, *args, **kwargs):
    """ProphetNetEncoder.forward with its mask as floats."""
    return prophetnet_encoder_float_masks.original(self, *args, **_float_masks(self, kwargs))


def prophetnet_model_float_masks(self, *args, **kwargs):
    """ProphetNetModel.forward with the encoder's mask, which its decoder also reads, as
    floats."""
    return prophetnet_model_float_masks.original(self, *args, **_float_masks(self, kwargs))


def _install_prophetnet_float_masks(patcher: Any, model: Any) -> None:
    """Give ProphetNet's encoder and its decoder's cross-attention their masks as floats.

    Fixes: the ONNX conversion, ``Failed to decompose the FX graph for ONNX
    compatibility`` (``aten::sub() Expected a value of type 'Tensor' for argument 'self'
    but instead found type 'float'``): ProphetNetEncoder.forward and ProphetNetDecoder.forward
    (transformers/models/prophetnet/modeling_prophetnet.py:1011, :1189) compute ``1.0 -
    mask`` on the integer masks, exported as ``aten.rsub.Scalar`` on an int64 tensor,
    which the ONNX exporter's decomposition turns into ``sub(1.0, tensor)``, a call it
    cannot trace. On a float mask the same expression converts. ``1.0 - mask`` is a float
    either way: the same numbers.

    Remove when: the ONNX exporter decomposes ``rsub`` of an integer tensor.
    """
    patcher.replace_in(MODULE, "ProphetNetEncoder", "forward", prophetnet_encoder_float_masks)
    # (ProphetNetDecoder.forward is prophetnet_cached_mask's: the decoder gets the encoder's
    # mask through the model)
    patcher.replace_in(MODULE, "ProphetNetModel", "forward", prophetnet_model_float_masks)


PROPHETNET_FLOAT_MASKS = Patch(
    name="prophetnet_float_masks",
    fixes="Failed to decompose the FX graph for ONNX compatibility ... aten::sub() Expected "
    "a value of type 'Tensor' for argument 'self' but instead found type 'float'",
    remove_when="the ONNX exporter decomposes rsub of an integer tensor",
    install=_install_prophetnet_float_masks,
    model_types=("prophetnet",),
)


register(
    Family(
        name="prophetnet",
        model_types=("prophetnet",),
        one_token_decode={
            "prophetnet": "with a cache, the n-gram decoder accepts exactly one new token"
        },
        patches=(
            PROPHETNET_DECODE_STEP,
            PROPHETNET_PREDICT_LAYOUT,
            PROPHETNET_CACHED_MASK,
            PROPHETNET_STREAMS_SPLIT,
            PROPHETNET_FLOAT_MASKS,
        ),
    )
)
