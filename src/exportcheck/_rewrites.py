"""Shape-generic rewrites of transformers functions, installed by :mod:`exportcheck.patches`.

Each function here replaces one method or module function of transformers while a patch
is active. A replacement that falls back to the code it replaces finds it in its own
``original`` attribute, set by the patch. Why each computes the same numbers as the
original is written in the docstring of the patch that installs it.
"""

from __future__ import annotations

import math
import sys
from typing import Any

import torch

QWEN4_EXP = "transformers.models.qwen4_exp.modeling_qwen4_exp"
XLNET = "transformers.models.xlnet.modeling_xlnet"
PROPHETNET = "transformers.models.prophetnet.modeling_prophetnet"
REFORMER = "transformers.models.reformer.modeling_reformer"
RECURRENT_GEMMA = "transformers.models.recurrent_gemma.modeling_recurrent_gemma"
XLSTM = "transformers.models.xlstm.modeling_xlstm"
RWKV = "transformers.models.rwkv.modeling_rwkv"
BLT = "transformers.models.blt.modeling_blt"


# --- recurrent_gemma: the RG-LRU scan -------------------------------------------------


def rglru_scan(
    self, hidden_states, recurrent_gate, reset, recurrent_states, acc_dtype=torch.float32
):
    """RecurrentGemmaRglru._rnn_scan as one weighted sum over the tokens.

    h_t = a_t h_{t-1} + x_t unrolls to h_t = sum_{i<=t} exp(S_t - S_i) x_i + exp(S_t) h_{-1}
    with S the cumulative sum of log a. A factor a_j == 0 (a reset, or an underflow)
    cuts every product spanning it: zeros count as log 1 and are tracked by their running
    count Z, and a term is kept only where Z_t == Z_i.
    """
    recurrent_gate = recurrent_gate * ~reset
    x = hidden_states.type(acc_dtype)
    a = recurrent_gate.type(acc_dtype)  # (batch, seq, width), in [0, 1]
    is_zero = a == 0
    log_a = torch.log(torch.where(is_zero, torch.ones_like(a), a))
    cum_log = torch.cumsum(log_a, dim=1)
    zeros_seen = torch.cumsum(is_zero.to(torch.int64), dim=1)
    pos = torch.arange(x.shape[1], device=x.device)
    causal = (pos[:, None] >= pos[None, :])[None, :, :, None]  # (1, t, i, 1)
    exponent = cum_log[:, :, None, :] - cum_log[:, None, :, :]  # (batch, t, i, width)
    keep = causal & (zeros_seen[:, :, None, :] == zeros_seen[:, None, :, :])
    weights = torch.where(keep, torch.exp(torch.where(keep, exponent, 0.0)), 0.0)
    states = (weights * x[:, None, :, :]).sum(dim=2)
    if recurrent_states is not None:
        decay = torch.where(zeros_seen == 0, torch.exp(cum_log), 0.0)
        states = states + decay * recurrent_states[:, None].to(device=x.device, dtype=acc_dtype)
    return states.type(hidden_states.dtype), states[:, -1]


# --- xlstm: the mLSTM backend ---------------------------------------------------------


def _optional(t: Any, shape: tuple[int, ...], dtype: torch.dtype, device: Any) -> torch.Tensor:
    return t.to(dtype) if t is not None else torch.zeros(shape, dtype=dtype, device=device)


def mlstm_closed_form(q, k, v, igate, fgate, c0, n0, m0, eps, dtype):
    """The stabilized mLSTM over all tokens at once; returns h and the last (C, n, m).

    With b_t = sum_{j<=t} logsigmoid(f_j) and D[t, s] = b_t - b_s + i_s (s <= t):
    m_t = max(b_t + m_0, max_s D[t, s]); C_t = sum_s exp(D[t, s] - m_t) k_s v_s^T +
    exp(b_t + m_0 - m_t) C_0 (n_t alike with k_s); h_t = (q_t C_t / sqrt(d)) /
    (max(|q_t . n_t| / sqrt(d), exp(-m_t)) + eps).
    """
    batch, heads, seq, dqk = q.shape
    device, query_dtype = q.device, q.dtype
    q, k, v = (t.to(dtype) for t in (q, k, v))
    c0 = _optional(c0, (batch, heads, dqk, v.shape[-1]), dtype, device)
    n0 = _optional(n0, (batch, heads, dqk), dtype, device)
    m0 = _optional(m0, (batch, heads, 1), dtype, device)
    b = torch.cumsum(torch.nn.functional.logsigmoid(fgate.to(dtype)), dim=-1)
    pos = torch.arange(seq, device=device)
    log_d = b[..., :, None] - b[..., None, :] + igate.to(dtype)[..., None, :]
    log_d = torch.where(pos[:, None] >= pos[None, :], log_d, float("-inf"))
    from_initial = b + m0  # (batch, heads, t)
    m = torch.maximum(from_initial, log_d.amax(dim=-1))
    weights = torch.exp(log_d - m[..., None])  # zero above the diagonal
    decay0 = torch.exp(from_initial - m)[..., None]
    q_scaled = q * dqk**-0.5
    gated = (q_scaled @ k.transpose(-2, -1)) * weights
    numerator = gated @ v + decay0 * (q_scaled @ c0)
    denominator = gated.sum(dim=-1, keepdim=True) + decay0 * (q_scaled @ n0[..., None])
    denominator = torch.maximum(denominator.abs(), torch.exp(-m)[..., None]) + eps
    h = (numerator / denominator).to(query_dtype)
    k_last = k * weights[..., -1, :, None]  # exp(D[T, s] - m_T) k_s
    decay_last = decay0[..., -1, :]
    c_last = k_last.transpose(-2, -1) @ v + decay_last[..., None] * c0
    n_last = k_last.sum(dim=-2) + decay_last * n0
    return h, (c_last, n_last, m[..., -1:])


def xlstm_backend_forward(
    self,
    query,
    key,
    value,
    igate,
    fgate,
    c_initial=None,
    n_initial=None,
    m_initial=None,
    return_last_states=None,
    mode=None,
):
    """xLSTMBackend.forward: the closed form in inference mode, the original in training."""
    current = self.config.mode if mode is None else mode
    if "train" in current or "inference" not in current:
        return xlstm_backend_forward.original(
            self,
            query,
            key,
            value,
            igate,
            fgate,
            c_initial=c_initial,
            n_initial=n_initial,
            m_initial=m_initial,
            return_last_states=return_last_states,
            mode=mode,
        )
    # inference mode returns the last states, as the original does
    dtype = getattr(torch, self.config.inference_state_dtype)
    return mlstm_closed_form(
        query, key, value, igate, fgate, c_initial, n_initial, m_initial, self.config.eps, dtype
    )


# --- qwen4_exp: the QSA indexer -------------------------------------------------------


def qwen4_indexer_forward(self, hidden_states, position_embeddings, attention_mask, cache):
    """Qwen4ExpTextQSAIndexer.forward for all batches and queries at once, without nonzero()."""
    mod = sys.modules[QWEN4_EXP]
    batch, seq, _ = hidden_states.shape
    full_cos, full_sin = position_embeddings
    qk = self.index_qk_proj(hidden_states)
    q, raw_keys = torch.split(
        qk,
        [self.index_n_heads * self.index_head_dim, self.index_kv_heads * self.index_head_dim],
        dim=-1,
    )
    q = self.q_layernorm(q.reshape(batch, seq, -1, self.index_head_dim))
    cos, sin = full_cos[:, -seq:, :], full_sin[:, -seq:, :]
    q = mod.apply_rotary_pos_emb(q, cos=cos, sin=sin, unsqueeze_dim=2)
    raw_keys = raw_keys.reshape(batch, seq, -1, self.index_head_dim).squeeze(2)
    if cache is not None:
        raw_keys = cache.update_indexer(raw_keys, self.layer_idx)

    visible = attention_mask if attention_mask.dtype == torch.bool else attention_mask == 0
    visible = visible[:, 0]  # (batch, seq, keys): the keys each query sees
    keys = visible.shape[-1]
    ratio = self.compress_ratio
    rank = visible.long().cumsum(-1) - 1  # rank among the visible keys (nonzero's order)
    n_visible = visible.long().sum(-1, keepdim=True)
    in_block = visible & (rank < (n_visible // ratio) * ratio)
    in_tail = visible & ~in_block
    block = torch.where(in_block, rank // ratio, torch.zeros_like(rank))
    # Block m of a query holds its visible keys of ranks m*r .. m*r+r-1; `keys` slots
    # are allocated, those from n_visible // r on are invalid.
    masked = raw_keys.float()[:, None, :, :] * in_block[..., None].float()
    pooled = torch.zeros_like(masked).scatter_add(
        2, block[..., None].expand(-1, -1, -1, masked.shape[-1]), masked
    )
    pooled = self.k_layernorm((pooled / ratio).to(raw_keys.dtype))  # mean of a full block
    positions = torch.arange(keys, device=visible.device).expand_as(rank)
    is_start = in_block & (rank % ratio == 0)
    starts = torch.zeros_like(rank).scatter_add(
        2, block, torch.where(is_start, positions, torch.zeros_like(positions))
    )  # the position of each block's first key gives its rotary angle
    index = starts.reshape(batch, -1, 1).expand(-1, -1, full_cos.shape[-1])
    block_cos = full_cos.gather(1, index).view(batch, seq, keys, -1)
    block_sin = full_sin.gather(1, index).view(batch, seq, keys, -1)
    block_keys = mod.apply_rotary_pos_emb(
        pooled.unsqueeze(-2), cos=block_cos, sin=block_sin, unsqueeze_dim=-2
    ).squeeze(-2)
    # score of a block: sum over index heads of relu(q_h . k) / sqrt(head_dim)
    scores = torch.relu(block_keys.float() @ q.float().transpose(-1, -2)).sum(dim=-1)
    scores = scores / math.sqrt(self.index_head_dim)
    valid = torch.arange(keys, device=visible.device) < (n_visible // ratio)
    scores = torch.where(valid, scores, torch.full_like(scores, -math.inf))
    # the top min(block_topk, blocks) valid blocks: padding with -inf keeps k constant
    padding = torch.full_like(scores[..., :1], -math.inf).expand(-1, -1, self.block_topk)
    top = torch.cat([scores, padding], dim=-1).topk(self.block_topk, dim=-1).indices
    chosen = (
        torch.zeros(
            (batch, seq, keys + self.block_topk), dtype=torch.bool, device=visible.device
        ).scatter(-1, top, True)[..., :keys]
        & valid
    )
    return (in_tail | (in_block & chosen.gather(-1, block))).unsqueeze(1)


# --- xlnet ----------------------------------------------------------------------------


def xlnet_rel_shift_bnij(x, klen=-1):
    """XLNetRelativeAttention.rel_shift_bnij with one gather.

    The original reads the (qlen, rlen) scores as (rlen, qlen), drops the first row, reads
    the rest as (qlen, rlen - 1) and keeps klen columns: element (i, j) is element
    ``qlen + i * (rlen - 1) + j`` of the row-major buffer.
    """
    batch, heads, qlen, rlen = x.shape
    i = torch.arange(qlen, device=x.device)[:, None]
    j = torch.arange(klen, device=x.device)[None, :]
    index = (qlen + i * (rlen - 1) + j).reshape(1, 1, -1).expand(batch, heads, -1)
    return x.reshape(batch, heads, qlen * rlen).gather(2, index).reshape(batch, heads, qlen, klen)


def xlnet_model_forward(self, input_ids=None, attention_mask=None, *args, **kwargs):
    """XLNetModel.forward with an integer attention mask converted to float first."""
    if isinstance(attention_mask, torch.Tensor) and not attention_mask.is_floating_point():
        attention_mask = attention_mask.to(torch.get_default_dtype())
    return xlnet_model_forward.original(self, input_ids, attention_mask, *args, **kwargs)


# --- prophetnet -----------------------------------------------------------------------


def prophetnet_positions_forward(
    self, inputs_shape, device, attention_mask=None, cache=None, position_ids=None
):
    """ProphetNetPositionalEmbeddings.forward, the decode step without int() on the length."""
    if position_ids is None and cache is not None and cache.get_seq_length() != 0:
        seen = inputs_shape[1] + cache.get_seq_length()
        ones = torch.ones((1, 1), dtype=torch.long, device=device)
        position_ids = ones * (self.padding_idx + seen)
        return self._forward(position_ids), position_ids
    return prophetnet_positions_forward.original(
        self, inputs_shape, device, attention_mask=attention_mask, cache=cache,
        position_ids=position_ids,
    )  # fmt: skip


def _prophetnet_buckets(self, offsets, position_ids):
    mod = sys.modules[PROPHETNET]
    relative = offsets[None, None, :] - position_ids[:, :, None]
    return mod.compute_relative_buckets(
        self.num_buckets, self.relative_max_distance, relative, False
    ).long()


def prophetnet_main_relative(self, hidden_states, attn_weights, position_ids, buckets):
    """get_main_relative_pos_embeddings: the decode step gathers with expanded buckets."""
    if buckets is not None:  # no cache: the decoder precomputed the buckets
        return prophetnet_main_relative.original(
            self, hidden_states, attn_weights, position_ids, buckets
        )
    batch, heads, tgt, src = attn_weights.shape
    buckets = _prophetnet_buckets(
        self, torch.arange(1, src + 1, device=position_ids.device), position_ids
    )
    rel = self.relative_pos_embeddings(hidden_states)  # (batch, tgt, buckets * heads)
    rel = rel.view(batch, tgt, self.num_buckets, heads).permute(0, 3, 1, 2)
    return torch.gather(rel, 3, buckets[:, None].expand(batch, heads, tgt, src))


def prophetnet_predict_relative(self, hidden_states, attn_weights, position_ids, buckets):
    """get_predict_relative_pos_embeddings: the decode step gathers with expanded buckets."""
    if buckets is not None:
        return prophetnet_predict_relative.original(
            self, hidden_states, attn_weights, position_ids, buckets
        )
    mod = sys.modules[PROPHETNET]
    batch, ngram, heads, tgt, keys = attn_weights.shape
    mod.torch_compilable_check(
        position_ids[0][0] == keys - 1,
        "`position_ids` are incorrect. They should be of the format 1 2 3 4 5 ... "
        "(key_sequence_length - 1)",
    )
    buckets = _prophetnet_buckets(
        self, torch.arange(0, keys, device=position_ids.device), position_ids
    )
    rel = self.relative_pos_embeddings(hidden_states.transpose(1, 2))
    rel = rel.view(batch, ngram, tgt, self.num_buckets, heads).permute(0, 1, 4, 2, 3)
    index = buckets[:, None, None].expand(batch, ngram, heads, tgt, keys)
    return torch.gather(rel, 4, index)


def prophetnet_compilable_check(cond, msg, error_type=ValueError):
    """transformers' torch_compilable_check, recording a tensor condition with item() while
    exporting (torch._check_tensor_all records aten._is_all_true, which ONNX lacks)."""
    if isinstance(cond, torch.Tensor) and torch.compiler.is_exporting():
        torch._check(cond.all().item())
        return None
    return prophetnet_compilable_check.original(cond, msg, error_type)


# --- reformer -------------------------------------------------------------------------


def reformer_axial_forward(self, position_ids):
    """AxialPositionEmbeddings.forward (eval) as a lookup in the full axial table."""
    if self.training:
        return reformer_axial_forward.original(self, position_ids)
    mod = sys.modules[REFORMER]
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


# --- torch: suggested fixes of a derived dimension with one value ---------------------


def process_derived_dim_roots(self, results, name_to_dim):
    """DimConstraints._process_derived_dim_roots, leaving a one-value root as it is."""
    try:
        return process_derived_dim_roots.original(self, results, name_to_dim)
    except AssertionError as e:
        if "Cannot create Dim with inconsistent" not in str(e):
            raise
        return None


# --- rwkv: the previous token of the one-token step -----------------------------------


def _rwkv_previous_token(self, hidden, saved):
    """The hidden state before each position, (batch, seq, hidden); ``saved`` is the
    layer's state slot (batch, hidden), the last token seen before ``hidden``."""
    if hidden.size(1) == 1:
        return saved.unsqueeze(1)  # the original omits this unsqueeze
    shifted = self.time_shift(hidden)
    shifted[:, 0] = saved
    return shifted


def _rwkv_shift(self, hidden, state, slot):
    if state is None:
        return self.time_shift(hidden)
    return _rwkv_previous_token(self, hidden, state[slot][:, :, self.layer_id])


def rwkv_attention_extract_key_value(self, hidden, state=None):
    """RwkvSelfAttention.extract_key_value with the previous token taken per batch row."""
    shifted = _rwkv_shift(self, hidden, state, 1)
    key = hidden * self.time_mix_key + shifted * (1 - self.time_mix_key)
    value = hidden * self.time_mix_value + shifted * (1 - self.time_mix_value)
    receptance = hidden * self.time_mix_receptance + shifted * (1 - self.time_mix_receptance)
    key, value = self.key(key), self.value(value)
    receptance = torch.sigmoid(self.receptance(receptance))
    if state is not None:
        state[1][:, :, self.layer_id] = hidden[:, -1]
    return receptance, key, value, state


def rwkv_feed_forward(self, hidden, state=None):
    """RwkvFeedForward.forward with the previous token taken per batch row."""
    shifted = _rwkv_shift(self, hidden, state, 0)
    key = hidden * self.time_mix_key + shifted * (1 - self.time_mix_key)
    receptance = hidden * self.time_mix_receptance + shifted * (1 - self.time_mix_receptance)
    value = self.value(torch.square(torch.relu(self.key(key))))
    receptance = torch.sigmoid(self.receptance(receptance))
    if state is not None:
        state[0][:, :, self.layer_id] = hidden[:, -1]
    return receptance * value, state


# --- blt: entropy patching with sequence_length + 1 patches ---------------------------


def blt_patcher_forward(
    self,
    input_ids=None,
    attention_mask=None,
    position_ids=None,
    cache=None,
    inputs_embeds=None,
    use_cache=None,
    patch_size=None,
    threshold=None,
    max_patch_length=None,
    **kwargs,
):
    """BltPatcher.forward: entropy from an unvalidated Categorical, patches padded.

    The original code otherwise; with ``max_patch_length`` unset (the default) the patch
    lengths come from :func:`blt_patch_lengths_padded`. With it set, the original
    lengths and process_patch_lengths (data-dependent, ``.item()``) are used.
    """
    mod = sys.modules[BLT]
    if (input_ids is None) ^ (inputs_embeds is not None):
        raise ValueError("You must specify exactly one of input_ids or inputs_embeds")
    if inputs_embeds is None:
        inputs_embeds = self.embed_tokens(input_ids)
    if use_cache and cache is None:
        cache = mod.DynamicCache(config=self.config)
    if position_ids is None:
        past_seen_tokens = cache.get_seq_length() if cache is not None else 0
        position_ids = (
            torch.arange(inputs_embeds.shape[1], device=inputs_embeds.device) + past_seen_tokens
        )
        position_ids = position_ids.unsqueeze(0)
    mask_function = (
        mod.create_causal_mask
        if self.config.sliding_window is None
        else mod.create_sliding_window_causal_mask
    )
    causal_mask = mask_function(
        config=self.config,
        inputs_embeds=inputs_embeds,
        attention_mask=attention_mask,
        cache=cache,
        position_ids=position_ids,
    )
    hidden_states = inputs_embeds
    position_embeddings = self.rotary_emb(hidden_states, position_ids)
    for layer in self.layers:
        hidden_states = layer(
            hidden_states, position_embeddings=position_embeddings, attention_mask=causal_mask
        )
    logits = self.lm_head(self.norm(hidden_states))
    # validate_args=False: the default check `constraints.real.check(logits).all()` is a
    # data-dependent Python bool; the entropy itself is the same computation.
    prediction_entropies = torch.distributions.Categorical(
        logits=logits, validate_args=False
    ).entropy()
    batch_size, sequence_length = inputs_embeds.shape[:2]
    if patch_size is not None:
        lengths_of = (
            blt_patch_lengths_padded
            if max_patch_length is None
            else self.patch_lengths_from_entropies
        )
        patch_lengths = lengths_of(
            entropies=prediction_entropies,
            sequence_length=sequence_length,
            patch_size=patch_size,
            threshold=threshold,
        )
    else:
        patch_lengths = torch.ones(
            (batch_size, sequence_length), dtype=inputs_embeds.dtype, device=inputs_embeds.device
        )
    patch_lengths = mod.process_patch_lengths(patch_lengths, max_patch_length)
    return prediction_entropies, patch_lengths, logits


def blt_patch_lengths_padded(entropies, sequence_length, patch_size=None, threshold=None):
    """BltPatcher.patch_lengths_from_entropies keeping all sequence_length + 1 patches.

    The original starts patches at 0, 1 and p + 1 for every byte p >= 1 whose entropy
    exceeds the threshold, pads shorter rows with starts at sequence_length + 1, and
    cuts the patch dimension to the longest row. Here byte 0 counts as a boundary too,
    so the starts are 0 and b_k + 1 for the k-th boundary b_k (b_0 = 0), and b_k is the
    number of bytes whose running count of boundaries is <= k: that is sequence_length
    when a row has fewer than k + 1 boundaries, the original's padding start. Nothing
    is cut: the patch dimension is sequence_length + 1 for every input. (No tensor of
    length sequence_length - 1 is made: its 0/1 sizes make torch.export specialize.)
    """
    seq = entropies.shape[1]
    positions = torch.arange(seq, device=entropies.device)
    boundary = (entropies > threshold) | (positions == 0)
    running = boundary.cumsum(dim=1)  # boundaries among bytes 0..p
    j = torch.arange(seq + 1, device=entropies.device)
    patch_start_ids = (running.unsqueeze(1) <= (j - 1).view(1, -1, 1)).sum(dim=-1) + (j > 0)
    last_token = torch.full_like(patch_start_ids[:, :1], sequence_length - 1)
    patch_ends = torch.cat((patch_start_ids[:, 1:] - 1, last_token), dim=1)
    return patch_ends - patch_start_ids + 1


def blt_patch_ids_from_lengths(self, patch_lengths, seq_len):
    """BltModel._patch_ids_from_lengths with the patch starts as cumsum - lengths.

    The original concatenates a 0 and ``cumsum[:, :-1]``: the same integers, but through
    a tensor one patch shorter (sequence_length - 1 patches for the decoder ids), whose
    0/1 sizes make torch.export specialize.
    """
    patch_starts = patch_lengths.cumsum(dim=-1) - patch_lengths
    token_positions = torch.arange(seq_len, device=patch_lengths.device)
    return (patch_starts.unsqueeze(1) <= token_positions.unsqueeze(0).unsqueeze(-1)).sum(dim=-1) - 1


def blt_byte_group_hash(token_ids, group_size=2, prime=1000000007, max_hash=30000):
    """byte_group_hash_function without ``unfold`` and without an int64 reduction.

    The original hashes ``windows = padded.unfold(1, group_size, 1)`` as
    ``sum(windows * prime ** arange(group_size), -1)`` in wrapping int64. Here term j is
    ``padded[:, j : j + seq_len] * prime ** j`` (the same window column) and the terms
    are added one by one: wrapping integer addition is associative, so the hash is the
    same, bit for bit.
    """
    with torch.no_grad():
        batch_size, seq_len = token_ids.shape
        padding = torch.zeros(
            batch_size, group_size - 1, dtype=torch.int64, device=token_ids.device
        )
        padded_tokens = torch.cat([padding, token_ids], dim=1)
        prime_powers = torch.tensor(
            prime, dtype=torch.int64, device=token_ids.device
        ) ** torch.arange(group_size, device=token_ids.device)
        hashes = padded_tokens[:, 0:seq_len] * prime_powers[0]
        for j in range(1, group_size):
            hashes = hashes + padded_tokens[:, j : j + seq_len] * prime_powers[j]
        return hashes % max_hash
