"""DeepSeek-V4: compressed attention (CSA / HCA) whose code branches on how many windows close.

The patch ``deepseek_v4_compressor_windows`` replaces the compressors, the indexer and the
attention with branch-free versions (its documentation says what each replacement fixes
and why it computes the same numbers). The compressed cache keeps per-name counters and
token buffers, declared to the cache flattener in ``setup``.
"""

from __future__ import annotations

from typing import Any

import torch

from ..caches.pytrees import register_derived_counter, register_token_axis_slot
from ..patches import Patch
from . import Family, register

MODULE = "transformers.models.deepseek_v4.modeling_deepseek_v4"


def _dsv4() -> Any:
    import sys

    return sys.modules[MODULE]


def _dsv4_window_split(kv, gate, rate):
    """Splits ``(kv, gate)`` into the whole windows and the leftover. The window count is
    read back from a tensor (``.item()``): export then treats it as an unknown, instead of
    guarding on the example's count through every contiguity check of the split."""
    total = kv.shape[1]
    n_windows = torch.tensor(total // rate).item()
    torch._check(n_windows >= 0)
    torch._check(n_windows * rate <= total)
    torch._check(total - n_windows * rate < rate)
    usable = n_windows * rate
    rest = total - usable
    return (
        # contiguous: the window views then have strides without the total length
        kv.narrow(1, 0, usable).contiguous(),
        gate.narrow(1, 0, usable).contiguous(),
        kv.narrow(1, usable, rest),
        gate.narrow(1, usable, rest),
    )


def _dsv4_store_compression_weights(self, name, kv, gate):
    """DeepseekV4HCACache.store_compression_weights without testing the buffer's length:
    concatenating an empty buffer changes nothing."""
    first_window_position = self.entry_count[name] * self.compress_rate
    buffered_kv, buffered_gate = self.buffer_kv[name], self.buffer_gate[name]
    if buffered_kv is not None:
        kv = torch.cat([buffered_kv, kv], dim=1)
        gate = torch.cat([buffered_gate, gate], dim=1)
    chunk_kv, chunk_gate, self.buffer_kv[name], self.buffer_gate[name] = _dsv4_window_split(
        kv, gate, self.compress_rate
    )
    return chunk_kv, chunk_gate, first_window_position


def _dsv4_update_compressor_states(self, name, compressed):
    """DeepseekV4HCACache.update_compressor_states: always concatenates (zero new entries
    append nothing)."""
    if self.compressed_kv[name] is None:
        self.compressed_kv[name] = compressed
    else:
        self.compressed_kv[name] = torch.cat([self.compressed_kv[name], compressed], dim=1)
    self.entry_count[name] += compressed.shape[1]
    return self.compressed_kv[name]


def _dsv4_chunk(module, cache_layer, name, kv, gate):
    if cache_layer is None:
        chunk_kv, chunk_gate, _, _ = _dsv4_window_split(kv, gate, module.compress_rate)
        return chunk_kv, chunk_gate, 0
    return cache_layer.store_compression_weights(name, kv, gate)


def _dsv4_rope(module, compressed, n_windows, first_window_position, batch):
    """RoPE of the compressed entries at ``w * rate + first_window_position``, computed on
    a ``(batch * n_windows, 1, dim)`` view: the same element-wise numbers as on
    ``(batch, 1, n_windows, dim)``, with strides that do not depend on the window count."""
    apply_rotary_pos_emb = _dsv4().apply_rotary_pos_emb
    dim = compressed.shape[-1]
    flat = compressed.reshape(-1, 1, dim)
    positions = torch.arange(n_windows, device=compressed.device) * module.compress_rate
    positions = (positions + first_window_position).repeat(batch)
    cos, sin = module.rotary_emb(flat, position_ids=positions, layer_type=module.rope_layer_type)
    return apply_rotary_pos_emb(flat, cos, sin).reshape(batch, n_windows, dim)


def _dsv4_overlap_compress(module, cache_layer, name, kv, gate, batch):
    """The CSA / indexer compression of every closed window, for 0, 1 or more windows.

    Window ``w`` pools the Ca half of window ``w - 1`` (the one saved by the previous
    call for ``w = 0``; zero kv and -inf gate without one) with its own Cb half: the
    first halves are ``cat(prior, Ca)[:, :n]``, the saved Ca is ``cat(prior, Ca)[:, -1]``,
    which is the prior itself when no window closed (the original leaves it untouched).
    """
    ratio, head_dim = module.compress_rate, module.head_dim
    chunk_kv, chunk_gate, first_window_position = _dsv4_chunk(module, cache_layer, name, kv, gate)
    n_windows = chunk_kv.shape[1] // ratio
    chunk_kv = chunk_kv.view(batch, n_windows, ratio, 2 * head_dim)
    chunk_gate = chunk_gate.view(batch, n_windows, ratio, 2 * head_dim) + module.position_bias
    prior_kv = prior_gate = None
    if cache_layer is not None:
        prior_kv, prior_gate = cache_layer.overlap_kv[name], cache_layer.overlap_gate[name]
    had_prior = prior_kv is not None
    if not had_prior:
        prior_kv = chunk_kv.new_zeros((batch, ratio, head_dim))
        prior_gate = chunk_gate.new_full((batch, ratio, head_dim), float("-inf"))
    first_kv = torch.cat(
        [prior_kv.unsqueeze(1).to(chunk_kv.dtype), chunk_kv[..., :head_dim]], dim=1
    )
    first_gate = torch.cat(
        [prior_gate.unsqueeze(1).to(chunk_gate.dtype), chunk_gate[..., :head_dim]], dim=1
    )
    new_kv = torch.cat([first_kv[:, :n_windows], chunk_kv[..., head_dim:]], dim=2)
    new_gate = torch.cat([first_gate[:, :n_windows], chunk_gate[..., head_dim:]], dim=2)
    # Without a prior (a first prefill, never exported with a cache), the original saves
    # nothing when no window closed.
    if cache_layer is not None and (had_prior or n_windows > 0):
        cache_layer.overlap_kv[name] = first_kv[:, -1].clone()
        cache_layer.overlap_gate[name] = first_gate[:, -1].clone()
    compressed = module.kv_norm(
        (new_kv * new_gate.softmax(dim=2, dtype=torch.float32).to(new_kv.dtype)).sum(dim=2)
    )
    compressed = _dsv4_rope(module, compressed, n_windows, first_window_position, batch)
    if cache_layer is not None:
        compressed = cache_layer.update_compressor_states(name, compressed)
    return compressed


def _dsv4_hca_forward(self, hidden_states, q_residual, position_ids, cache, layer_idx, **kwargs):
    """DeepseekV4HCACompressor.forward for any number of closed windows, always with a
    block bias (all zeros where the original returns None: one new token sees every
    closed window, no entry sees nothing)."""
    batch = hidden_states.shape[0]
    cache_layer = cache.layers[layer_idx] if cache is not None else None
    kv = self.kv_proj(hidden_states)
    gate = self.gate_proj(hidden_states)
    chunk_kv, chunk_gate, first_window_position = _dsv4_chunk(
        self, cache_layer, "compressor", kv, gate
    )
    n_windows = chunk_kv.shape[1] // self.compress_rate
    chunk_kv = chunk_kv.view(batch, n_windows, self.compress_rate, self.head_dim)
    chunk_gate = (
        chunk_gate.view(batch, n_windows, self.compress_rate, self.head_dim) + self.position_bias
    )
    compressed = self.kv_norm(
        (chunk_kv * chunk_gate.softmax(dim=2, dtype=torch.float32).to(chunk_kv.dtype)).sum(dim=2)
    )
    compressed = _dsv4_rope(self, compressed, n_windows, first_window_position, batch)
    if cache_layer is not None:
        compressed = cache_layer.update_compressor_states("compressor", compressed)
    compressed_kv = compressed.unsqueeze(1)
    compressed_len = compressed_kv.shape[2]
    seq_len = position_ids.shape[1]
    entry_indices = torch.arange(compressed_len, device=compressed_kv.device)
    causal_threshold = (position_ids + 1) // self.compress_rate
    block_bias = compressed_kv.new_zeros((batch, 1, seq_len, compressed_len))
    block_bias = block_bias.masked_fill(
        entry_indices.view(1, 1, 1, -1) >= causal_threshold.unsqueeze(1).unsqueeze(-1),
        float("-inf"),
    )
    return compressed_kv, block_bias


def _dsv4_indexer_forward(
    self, hidden_states, q_residual, position_ids, cache, layer_idx, **kwargs
):
    """DeepseekV4Indexer.forward for any number of closed windows and of compressed
    entries (top-k of zero entries is empty on both paths of the original)."""
    apply_rotary_pos_emb = _dsv4().apply_rotary_pos_emb
    batch, seq_len, _ = hidden_states.shape
    cache_layer = cache.layers[layer_idx] if cache is not None else None
    kv = self.kv_proj(hidden_states)
    gate = self.gate_proj(hidden_states)
    compressed_kv = _dsv4_overlap_compress(self, cache_layer, "indexer", kv, gate, batch)
    cos_q, sin_q = self.rotary_emb(
        hidden_states, position_ids=position_ids, layer_type=self.rope_layer_type
    )
    q = self.q_b_proj(q_residual).view(batch, seq_len, -1, self.head_dim).transpose(1, 2)
    q = apply_rotary_pos_emb(q, cos_q, sin_q).transpose(1, 2)
    index_scores = self.scorer(q, compressed_kv, hidden_states)  # [B, S, T]
    compressed_len = compressed_kv.shape[1]
    top_k = torch.sym_min(self.index_topk, compressed_len)
    causal_threshold = (position_ids + 1) // self.compress_rate  # [B, S]
    entry_indices = torch.arange(compressed_len, device=index_scores.device)
    future_mask = entry_indices.view(1, 1, -1) >= causal_threshold.unsqueeze(-1)
    index_scores = index_scores.masked_fill(future_mask, float("-inf"))
    top_k_indices = index_scores.topk(top_k, dim=-1).indices
    invalid = top_k_indices >= causal_threshold.unsqueeze(-1)
    return torch.where(invalid, torch.full_like(top_k_indices, -1), top_k_indices)


def _dsv4_csa_forward(self, hidden_states, q_residual, position_ids, cache, layer_idx, **kwargs):
    """DeepseekV4CSACompressor.forward for any number of closed windows."""
    batch, seq_len, _ = hidden_states.shape
    cache_layer = cache.layers[layer_idx] if cache is not None else None
    kv = self.kv_proj(hidden_states)
    gate = self.gate_proj(hidden_states)
    compressed = _dsv4_overlap_compress(self, cache_layer, "compressor", kv, gate, batch)
    compressed_kv = compressed.unsqueeze(1)
    top_k_indices = self.indexer(hidden_states, q_residual, position_ids, cache, layer_idx)
    compressed_len = compressed_kv.shape[2]
    valid = top_k_indices >= 0
    safe_indices = torch.where(valid, top_k_indices, torch.full_like(top_k_indices, compressed_len))
    block_bias = compressed_kv.new_full((batch, 1, seq_len, compressed_len + 1), float("-inf"))
    block_bias.scatter_(-1, safe_indices.unsqueeze(1), 0.0)
    return compressed_kv, block_bias[..., :compressed_len]


def _dsv4_attention_forward(
    self, hidden_states, position_embeddings, position_ids, attention_mask, cache=None, **kwargs
):
    """DeepseekV4Attention.forward appending the compressor's block bias to a tensor mask
    without comparing lengths: the bias is exactly as wide as the compressed entries."""
    m = _dsv4()
    if cache is None and "past_key_values" in kwargs:
        cache = kwargs.pop("past_key_values")
    input_shape = hidden_states.shape[:-1]
    hidden_shape = (*input_shape, -1, self.head_dim)
    cos, sin = position_embeddings[self.rope_layer_type]
    q_residual = self.q_a_norm(self.q_a_proj(hidden_states))
    q = self.q_b_proj(q_residual).view(*hidden_shape).transpose(1, 2)
    q = self.q_b_norm(q)
    q = m.apply_rotary_pos_emb(q, cos, sin)
    kv = self.kv_norm(self.kv_proj(hidden_states)).view(*hidden_shape).transpose(1, 2)
    kv = m.apply_rotary_pos_emb(kv, cos, sin)
    if cache is not None:
        kv = cache.update(kv, kv, self.layer_idx, kwargs=kwargs)[0]
    if self.compressor is not None:
        compressed_kv, block_bias = self.compressor(
            hidden_states, q_residual, position_ids, cache, self.layer_idx
        )
        kv = torch.cat([kv, compressed_kv], dim=2)
        if isinstance(attention_mask, torch.Tensor):
            attention_mask = torch.cat(
                [attention_mask, block_bias.to(attention_mask.dtype)], dim=-1
            )
    attention_interface = m.ALL_ATTENTION_FUNCTIONS.get_interface(
        self.config._attn_implementation, m.eager_attention_forward
    )
    attn_output, attn_weights = attention_interface(
        self,
        q,
        kv,
        kv,
        attention_mask,
        dropout=0.0 if not self.training else self.attention_dropout,
        scaling=self.scaling,
        sliding_window=self.sliding_window,
        s_aux=self.sinks,
        **kwargs,
    )
    attn_output = m.apply_rotary_pos_emb(attn_output.transpose(1, 2), cos, -sin).transpose(1, 2)
    grouped = attn_output.reshape(*input_shape, self.config.o_groups, -1)
    grouped = self.o_a_proj(grouped).flatten(2)
    return self.o_b_proj(grouped), attn_weights


REPLACEMENTS = (
    ("DeepseekV4HCACache", "store_compression_weights", _dsv4_store_compression_weights),
    ("DeepseekV4HCACache", "update_compressor_states", _dsv4_update_compressor_states),
    ("DeepseekV4HCACompressor", "forward", _dsv4_hca_forward),
    ("DeepseekV4Indexer", "forward", _dsv4_indexer_forward),
    ("DeepseekV4CSACompressor", "forward", _dsv4_csa_forward),
    ("DeepseekV4Attention", "forward", _dsv4_attention_forward),
)


def _install(patcher: Any, model: Any) -> None:
    """Compute DeepSeek-V4's compressed attention (CSA / HCA) without Python tests on how
    many windows close in the step.

    Fixes: torch.export of deepseek_v4 with a cache fails with ``Constraints violated
    (seq_length)! ... guard (2 + L['input_ids'].size()[1] + (-4)*((2 + ...) // 4)) == 1``
    and ``2 <= L['input_ids'].size()[1] <= 5`` (which torch then hides behind
    ``AssertionError: Cannot create Dim with inconsistent min=1, max=1`` raised while it
    formats its suggested fix ``seq_length = 4*_seq_length - 1``). The code branches on
    shapes: ``if buffered_kv.shape[1]`` in DeepseekV4HCACache.store_compression_weights
    (transformers/models/deepseek_v4/modeling_deepseek_v4.py:218), ``if chunk_kv.shape[1] > 0``
    and ``if n_windows > 1`` in the HCA / CSA compressors and the indexer (:424, :539, :550,
    :654, :670), ``if seq_len == 1 or compressed_len == 0`` (:444), ``if compressed_len > 0``
    (:588), ``elif compressed.shape[1] > 0`` (:234) and ``kv.shape[2] > attention_mask.shape[-1]``
    (:849): whether a window of ``compress_rate`` tokens closes depends on
    ``(buffer + seq_length) // rate``, so export specializes the new tokens' count.

    Even branch-free, the window count ``(buffer + seq_length) // rate`` and the leftover
    are backed by the example's values (1 and 1): torch guards on them in every
    contiguity check (torch/fx/passes/shape_prop.py:57 _extract_tensor_metadata ->
    torch/_prims_common/__init__.py:285 ``guard_or_false(x == 1)``, which guards on backed
    symbols), pinning seq_length (``Constraints violated (seq_length) ... 2 <= s <= 5``).
    So the count is read back with ``torch.tensor(total // rate).item()`` (an unbacked
    size: export keeps it symbolic, no guard), bounded with ``torch._check``, and the split
    uses ``narrow``; the windows are made contiguous before the ``view`` so the
    position-bias add does not compare the total length with the window size.

    Same numbers: ``.item()`` of ``total // rate`` is that integer; ``narrow`` / contiguous
    copies are the same slices; concatenating zero-length tensors is a no-op, so the buffer and the
    compressed entries are always concatenated; the windows are pooled with views of
    explicit size (0 windows give 0 entries, as the original's ``new_zeros``); the
    Ca/Cb overlap layout is built as ``cat(prior, Ca)[:, :n]`` next to Cb instead of
    by slice assignment (same entries: window 0 gets the saved Ca, window w the Ca of
    w - 1, zero kv / -inf gate without a saved one), and the saved Ca is
    ``cat(prior, Ca)[:, -1]`` (the prior when no window closed, as the original keeps
    it); the indexer always masks future entries (top-k of zero entries is empty on both
    paths); HCA always returns its block bias, which is all zeros exactly where the
    original returns None (one new token, or no entry) and the attention pads with zeros.

    Remove when: transformers' DeepSeek-V4 compressors handle any window count without
    branching on shapes.
    """
    for owner, attribute, function in REPLACEMENTS:
        patcher.replace_in(MODULE, owner, attribute, function)


COMPRESSOR_WINDOWS = Patch(
    name="deepseek_v4_compressor_windows",
    fixes="Constraints violated (seq_length)! ... satisfy the generated guard 2 <= L['input_ids'].size()[1] and L['input_ids'].size()[1] <= 5",
    remove_when="transformers' DeepSeek-V4 compressors handle any window count without branching "
    "on shapes",
    install=_install,
    model_types=("deepseek_v4",),
)


def _setup() -> None:
    # The compressed layers keep ``entry_count[name] == compressed_kv[name].shape[1]``;
    # the tokens waiting for a full window (cache_length % rate) and the windows
    # compressed so far (cache_length // rate) are not linear in cache_length.
    register_derived_counter("entry_count", "compressed_kv")
    for slot in ("buffer_kv", "buffer_gate", "compressed_kv"):
        register_token_axis_slot(slot)


register(
    Family(
        name="deepseek_v4",
        model_types=("deepseek_v4",),
        patches=(COMPRESSOR_WINDOWS,),
        setup=_setup,
    )
)
