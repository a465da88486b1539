"""Fixes for known breakages of the exporters, applied inside one reversible context.

Each patch is a context manager that changes something only inside its block and
restores it on exit, even after an exception. Its docstring names the exact error it
fixes and the condition under which it can be deleted. :func:`export_patches` applies
them all.
"""

from __future__ import annotations

import contextlib
import functools
import statistics
import sys
from collections.abc import Callable, Iterator
from typing import Any

import torch

from . import _deepseek_v4 as _dsv4
from . import _rewrites as _rw
from .pytrees import cache_pytrees

__all__ = [
    "EAGER_FIXES",
    "PATCHES",
    "blt_padded_patches",
    "cpmant_mask_arange",
    "dbrx_experts_gather",
    "deepseek_v4_compressor_windows",
    "eager_fixes",
    "export_patches",
    "gated_delta_ceil_chunks",
    "gemma3n_sparsity_constant",
    "inkling2_short_conv_windows",
    "kda_ceil_chunks",
    "longcat_experts_gather",
    "minimax_lightning_decode",
    "moe_batched_mm",
    "opt_position_ids",
    "prophetnet_decode_step",
    "qwen4_exp_indexer",
    "real_rotary",
    "recurrent_gemma_scan",
    "reformer_axial_gather",
    "rwkv_one_token_shift",
    "torch_single_value_root",
    "xlnet_float_mask",
    "xlnet_rel_shift_gather",
    "xlstm_closed_form",
]


def _configs_of(model: Any) -> list[Any]:
    """Every distinct transformers config reachable from the modules of ``model``."""
    seen: dict[int, Any] = {}
    modules = model.modules() if hasattr(model, "modules") else []
    for module in modules:
        config = getattr(module, "config", None)
        if config is not None and hasattr(config, "to_dict"):
            seen.setdefault(id(config), config)
            for key in getattr(config, "sub_configs", {}) or {}:
                sub = getattr(config, key, None)
                if sub is not None and hasattr(sub, "to_dict"):
                    seen.setdefault(id(sub), sub)
    return list(seen.values())


@contextlib.contextmanager
def moe_batched_mm(model: Any = None) -> Iterator[None]:
    """Run mixture-of-experts layers with the ``batched_mm`` experts implementation.

    Fixes: ``torch.onnx.export`` of any transformers MoE model (Mixtral, Qwen3-MoE,
    gpt-oss, DeepSeek-V3, ...) fails with
    ``DispatchError: No ONNX function found for <OpOverload(op='transformers.grouped_mm_fallback', ...)>``:
    the default ``grouped_mm`` implementation calls a custom op that has no ONNX
    translation. ``batched_mm`` computes the same with plain matmuls.

    Remove when: transformers' ``grouped_mm`` experts exports to ONNX (a translation
    for its custom op, or an implementation made of standard ops).

    Only the ``_experts_implementation`` attribute of the model's configs changes,
    and only where it was ``grouped_mm``.
    """
    changed: list[tuple[Any, Any]] = []
    try:
        if model is not None:
            for config in _configs_of(model):
                current = getattr(config, "_experts_implementation_internal", None)
                if current == "grouped_mm":
                    changed.append((config, current))
                    config._experts_implementation_internal = "batched_mm"
        yield
    finally:
        for config, previous in reversed(changed):
            config._experts_implementation_internal = previous


# Modules whose rotary embedding is complex-valued: module -> (rotary class, the axis
# where apply_rotary_emb inserts the heads). llama4's q and k are (batch, seq, heads,
# dim), deepseek_v2's (batch, heads, seq, dim).
_COMPLEX_ROTARY = {
    "transformers.models.llama4.modeling_llama4": ("Llama4TextRotaryEmbedding", 2),
    "transformers.models.deepseek_v2.modeling_deepseek_v2": ("DeepseekV2RotaryEmbedding", 1),
}


def _real_rotary_forward(self: Any, x: Any, position_ids: Any) -> Any:
    import torch

    angles = position_ids[..., None].float() * self.inv_freq.to(x.device, torch.float32)
    # The same numbers as view_as_real(polar(1, angles) * attention_scaling).
    return torch.stack((angles.cos(), angles.sin()), dim=-1) * self.attention_scaling


def _real_apply_rotary_emb(head_axis: int) -> Callable[..., Any]:
    import torch

    def apply_rotary_emb(xq: Any, xk: Any, freqs_cis: Any) -> tuple[Any, Any]:
        freqs = freqs_cis.unsqueeze(head_axis).to(xq.device)
        cos, sin = freqs[..., 0], freqs[..., 1]

        def rotate(x: Any) -> Any:
            pairs = x.float().reshape(*x.shape[:-1], -1, 2)
            real, imag = pairs[..., 0], pairs[..., 1]
            rotated = torch.stack((real * cos - imag * sin, real * sin + imag * cos), dim=-1)
            return rotated.flatten(3).type_as(x)

        return rotate(xq), rotate(xk)

    return apply_rotary_emb


@contextlib.contextmanager
def real_rotary(model: Any = None) -> Iterator[None]:
    """Compute complex-valued rotary embeddings (llama4, deepseek_v2) with real tensors.

    Fixes: ``torch.onnx.export`` of llama4 and deepseek_v2 fails with
    ``DispatchError: No ONNX function found for aten.unsqueeze.default. Failure
    message: No decompositions registered for the complex-valued input``: the rotary
    embedding is built with ``torch.polar`` and applied through ``view_as_complex``,
    and the ONNX exporter has no translation for complex tensors.

    While active, the rotary module returns the real and imaginary parts stacked on a
    last axis of 2 (what ``view_as_real`` of the complex frequencies gives) and
    ``apply_rotary_emb`` multiplies the pairs of q and k by them: the same numbers in
    eager (within float rounding). It must be active during ``torch.export``.

    Remove when: transformers computes these rotary embeddings without complex
    tensors, or the ONNX exporter translates complex operators. Only modules already
    imported are patched.
    """
    saved: list[tuple[Any, str, Any]] = []
    try:
        for module_name, (class_name, head_axis) in _COMPLEX_ROTARY.items():
            module = sys.modules.get(module_name)
            if module is None or not hasattr(module, "apply_rotary_emb"):
                continue
            cls = getattr(module, class_name)
            original = cls.__dict__["forward"]
            saved.append((cls, "forward", original))
            saved.append((module, "apply_rotary_emb", module.apply_rotary_emb))
            new_forward = _real_rotary_forward
            if hasattr(original, "__wrapped__"):  # keep transformers' dynamic rope update
                from transformers.modeling_rope_utils import dynamic_rope_update

                new_forward = dynamic_rope_update(new_forward)
            cls.forward = new_forward
            module.apply_rotary_emb = _real_apply_rotary_emb(head_axis)
        yield
    finally:
        for owner, name, value in reversed(saved):
            setattr(owner, name, value)


# --- patches that keep a dimension symbolic where model code fixes it -------------


def _minimax_lightning_forward(
    self, hidden_states, position_embeddings, attention_mask, cache=None, **kwargs
):
    """MiniMaxLightningAttention.forward with the decode branch (a cache with a linear state)
    computed in closed form instead of ``for i in range(seq_len)``."""
    mm = sys.modules["transformers.models.minimax.modeling_minimax"]

    if cache is None or cache.get_linear_cache(self.layer_idx) is None:
        return _minimax_lightning_forward.original(
            self, hidden_states, position_embeddings, attention_mask, cache=cache, **kwargs
        )
    batch_size, seq_len, _hidden_size = hidden_states.shape
    qkv_states = self.act_fn(self.qkv_proj(hidden_states))
    qkv_states = mm.apply_mask_to_padding_states(qkv_states, attention_mask)
    qkv_states = qkv_states.reshape(
        batch_size, seq_len, self.num_attention_heads, 3 * self.head_dim
    )
    query_states, key_states, value_states = torch.split(qkv_states, self.head_dim, dim=3)
    query_states = query_states.transpose(1, 2)  # [B, H, S, D]
    key_states = key_states.transpose(1, 2)
    value_states = value_states.transpose(1, 2)
    state = cache.get_linear_cache(self.layer_idx)  # [B, H, D, D]

    # state_i = r^(i+1) state_0 + sum_{j<=i} r^(i-j) k_j^T v_j, r = exp(-slope), out_i = q_i state_i
    slope = self.slope_rate  # [H, 1, 1]
    pos = torch.arange(seq_len, device=hidden_states.device).to(slope.dtype)
    diff = pos[:, None] - pos[None, :]  # [S, S]
    decay = torch.where(
        diff >= 0, torch.exp(-slope * diff.clamp(min=0)), torch.zeros_like(slope * diff)
    )
    scores = torch.matmul(query_states, key_states.transpose(-1, -2))  # [B, H, S, S]
    intra = torch.matmul(scores * decay, value_states)
    inter = torch.matmul(query_states * torch.exp(-slope * (pos + 1)[:, None]), state)
    attn_output = intra + inter  # [B, H, S, D]
    key_decay = torch.exp(-slope * (seq_len - 1 - pos)[:, None])  # [H, S, 1]
    attn_weights_inter = state * torch.exp(-slope * seq_len) + torch.matmul(
        (key_states * key_decay).transpose(-1, -2), value_states
    )

    attn_output = attn_output.transpose(1, 2)
    attn_output = attn_output.reshape(batch_size, seq_len, self.num_attention_heads * self.head_dim)
    attn_output = self.norm(attn_output)
    attn_output = torch.nn.functional.sigmoid(self.output_gate(hidden_states)) * attn_output
    attn_output = self.out_proj(attn_output)
    cache.set_linear_cache(self.layer_idx, attn_weights_inter)
    return attn_output, attn_weights_inter


@contextlib.contextmanager
def minimax_lightning_decode(model=None):
    """Compute MiniMax's lightning-attention decode step without a Python loop over tokens.

    Fixes: torch.export of MiniMax with a cache and a dynamic number of new tokens fails with
    ``Constraints violated ... You marked seq_length as dynamic but your code specialized it to
    be a constant (3)``: ``for i in range(seq_len)`` in MiniMaxLightningAttention.forward
    (transformers/models/minimax/modeling_minimax.py:248) unrolls the recurrence over the new
    tokens. The replacement computes the same recurrence in closed form (decay matrix
    exp(-slope * (i - j)) for j <= i), so the trace stays symbolic.

    Remove when: transformers computes the cached branch without iterating over seq_len.
    """
    module = sys.modules.get("transformers.models.minimax.modeling_minimax")
    if module is None:
        yield
        return
    cls = module.MiniMaxLightningAttention
    original = cls.forward
    _minimax_lightning_forward.original = original
    cls.forward = _minimax_lightning_forward
    try:
        yield
    finally:
        cls.forward = original


def _make_short_conv_forward(module, original):
    import math

    def forward(
        self, hidden_states, dynamic_input, cache=None, conv_mask=None, cache_offset=0, **kwargs
    ):
        if kwargs.get("seq_idx") is not None:
            return original(
                self,
                hidden_states,
                dynamic_input,
                cache=cache,
                conv_mask=conv_mask,
                cache_offset=cache_offset,
                **kwargs,
            )
        input_dtype = hidden_states.dtype
        batch_size, seq_len, hidden_size = hidden_states.shape
        k = self.conv_kernel_size
        dynamic_weights = self.weight_proj(dynamic_input).float()
        dynamic_weights = dynamic_weights.view(batch_size, seq_len, self.num_heads, 1, k)
        weights = self.static_weight.float().T.view(self.num_heads, -1, k) + dynamic_weights
        hidden_states = hidden_states.float()
        residual = hidden_states
        context = module.apply_mask_to_padding_states(hidden_states, conv_mask).transpose(1, 2)
        if cache is not None:
            context = cache.update_conv_state(
                context, self.layer_idx + cache_offset, state_idx=self.conv_idx, conv_kernel_size=k
            )
        context = torch.nn.functional.pad(context, (k - 1, 0))[..., -(seq_len + k - 1) :]
        # windows[..., lag] is the token `lag` steps back: the same values as
        # context.unfold(-1, k, 1).flip(-1), built from k shifted slices
        windows = torch.stack(
            [context[..., k - 1 - lag : k - 1 - lag + seq_len] for lag in range(k)], dim=-1
        )
        windows = windows.transpose(1, 2).reshape(batch_size, seq_len, self.num_heads, -1, k)
        hidden_states = (windows * weights).sum(-1).reshape(batch_size, seq_len, hidden_size)
        hidden_states = (hidden_states + residual) / math.sqrt(2 * k + 1)
        return hidden_states.to(input_dtype)

    return forward


@contextlib.contextmanager
def inkling2_short_conv_windows(model=None):
    """Build the sliding windows of Inkling2's dynamic short convolution without ``unfold().flip()``.

    Fixes: the ExportedProgram of inkling2_text / inkling2_loop_text rejects more than 3 new
    tokens: ``AssertionError: Guard failed: input_ids.size()[1] <= 3`` (export first narrows
    seq_length to [1, 3]). ``context.unfold(-1, k, 1).flip(-1)`` in
    Inkling2DynamicShortConvolution.forward (transformers/models/inkling2/modeling_inkling2.py:403,
    inkling2_loop/modeling_inkling2_loop.py:446) gives a view whose two last dims (seq_len, k=4)
    both have stride 1; ``flip`` allocates its output with ``empty_like(preserve_format)``, whose
    layout decision compares those two sizes and guards ``seq_len < 4``. The windows are built here
    from k shifted slices stacked on the last dim: the same values, no guard.

    Remove when: torch's empty_like / flip meta stops guarding on sizes of equal-stride dims, or
    transformers builds the windows without flipping an unfolded view.
    """
    patched = []
    try:
        for mod_name, cls_name in (
            ("transformers.models.inkling2.modeling_inkling2", "Inkling2DynamicShortConvolution"),
            (
                "transformers.models.inkling2_loop.modeling_inkling2_loop",
                "Inkling2LoopDynamicShortConvolution",
            ),
        ):
            module = sys.modules.get(mod_name)
            cls = getattr(module, cls_name, None) if module is not None else None
            if cls is None:
                continue
            original = cls.forward
            patched.append((cls, original))
            cls.forward = _make_short_conv_forward(module, original)
        yield
    finally:
        for cls, original in reversed(patched):
            cls.forward = original


@contextlib.contextmanager
def opt_position_ids(model=None):
    """Give OPTDecoder position ids as wide as the new tokens instead of ``mask_width - cached``.

    Fixes: the ExportedProgram of OPT rejects one new token:
    ``AssertionError: Guard failed: attention_mask.size()[1] + -1 * cache['key_cache'][0].size()[2] != 1``.
    OPTDecoder.forward (transformers/models/opt/modeling_opt.py:361) computes
    ``position_ids = position_ids[:, past_seen_tokens:]``: a width ``mask_length - cache_length``
    that is an expression of two symbols (the mask's length has a dimension of its own), and
    the contiguity check of that slice guards it ``!= 1`` (0/1 specialisation of a traced
    size of 3). The wrapper computes the same ids (cumsum of the mask, minus one, at the
    positions of the new tokens) with ``narrow(1, past_seen_tokens, seq_len)``, whose width is
    the seq_length symbol itself, and passes them as ``position_ids``; the decoder then skips
    its own computation. Identical values whenever the mask covers cache + new tokens, the only
    case where eager runs.

    Remove when: transformers slices the positions by the number of new tokens
    (``[:, -seq_len:]`` / narrow) or torch stops guarding the size of that slice.
    """
    modeling_opt = sys.modules.get("transformers.models.opt.modeling_opt")
    if modeling_opt is None:
        yield
        return
    cls = modeling_opt.OPTDecoder
    original = cls.forward

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        cache=None,
        inputs_embeds=None,
        use_cache=None,
        position_ids=None,
        **kwargs,
    ):
        if position_ids is None and attention_mask is not None and cache is not None:
            seq_len = input_ids.shape[-1] if input_ids is not None else inputs_embeds.shape[1]
            past_seen_tokens = cache.get_seq_length()
            positions = torch.cumsum(attention_mask, dim=1)
            positions = (positions * attention_mask - 1).long()
            position_ids = positions.narrow(1, past_seen_tokens, seq_len)
        return original(
            self,
            input_ids=input_ids,
            attention_mask=attention_mask,
            cache=cache,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            position_ids=position_ids,
            **kwargs,
        )

    cls.forward = forward
    try:
        yield
    finally:
        cls.forward = original


def _ceil_chunks(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def torch_chunk_gated_delta_rule(
        query: Any, key: Any, value: Any, g: Any, beta: Any, chunk_size: int = 64, **kwargs: Any
    ) -> Any:
        # Pad to ceil(length / chunk) * chunk, a length the shape solver can bound; the
        # original then sees a multiple of chunk_size and pads nothing itself.
        length = query.shape[1]
        pad = ((length + chunk_size - 1) // chunk_size) * chunk_size - length
        query, key, value = (
            torch.nn.functional.pad(x, (0, 0, 0, 0, 0, pad)) for x in (query, key, value)
        )
        g, beta = (torch.nn.functional.pad(x, (0, 0, 0, pad)) for x in (g, beta))
        out, state = original(query, key, value, g=g, beta=beta, chunk_size=chunk_size, **kwargs)
        return out[:, :length], state

    torch_chunk_gated_delta_rule.__exportcheck_patch__ = True  # type: ignore[attr-defined]
    return torch_chunk_gated_delta_rule


@contextlib.contextmanager
def gated_delta_ceil_chunks(model: Any = None) -> Iterator[None]:
    """Pad gated-delta-rule inputs to a whole number of chunks before the chunked scan.

    Fixes: ``torch.export`` of Gated-DeltaNet models (qwen3_next, qwen3_5, olmo_hybrid,
    lara_mini, ...) with a dynamic number of new tokens fails with ``Constraints
    violated (seq_length)! ... Not all values of seq_length ... satisfy the generated
    guard``: ``torch_chunk_gated_delta_rule`` pads by ``(chunk - s % chunk) % chunk``
    and loops over ``num_chunks``; the solver cannot prove through ``Mod`` that there
    is one chunk and specializes the length. Padding to ``ceil(s / chunk) * chunk``
    first gives the same numbers and a provable chunk count (with ``seq_length`` at
    most one chunk, as :func:`exportcheck.untrained_model` declares it).

    Remove when: transformers computes the padding with a ceil division, or the shape
    solver simplifies the modulo expression.
    """
    if model is not None:
        names = {type(m).__module__ for m in model.modules()}
    else:
        names = {n for n in sys.modules if n.startswith("transformers.models.")}
    changed: list[tuple[Any, Any]] = []
    try:
        for name in sorted(names):
            module = sys.modules.get(name)
            original = getattr(module, "torch_chunk_gated_delta_rule", None)
            if original is None or getattr(original, "__exportcheck_patch__", False):
                continue
            changed.append((module, original))
            module.torch_chunk_gated_delta_rule = _ceil_chunks(original)
        yield
    finally:
        for module, original in reversed(changed):
            module.torch_chunk_gated_delta_rule = original


# --- patches found by the sweep: chunked scans, experts loops, constants ---------


def _ceil_chunks_kda(original):
    @functools.wraps(original)
    def chunk_kimi_delta_attention(query, key, value, g, beta, chunk_size=64, **kwargs):
        # inputs are (batch, seq, heads, dim) and beta (batch, seq, heads): pad seq (dim 1)
        # to ceil(seq / chunk) * chunk; the original then pads nothing itself.
        length = query.shape[1]
        pad = ((length + chunk_size - 1) // chunk_size) * chunk_size - length
        query, key, value, g = (
            torch.nn.functional.pad(x, (0, 0, 0, 0, 0, pad)) for x in (query, key, value, g)
        )
        beta = torch.nn.functional.pad(beta, (0, 0, 0, pad))
        out, state = original(query, key, value, g=g, beta=beta, chunk_size=chunk_size, **kwargs)
        # index_select instead of out[:, :length]: the slice is a non-contiguous view whose
        # contiguity check guards length != padded length (false at length 64)
        keep = torch.arange(length, device=out.device)
        return out.index_select(1, keep), state

    chunk_kimi_delta_attention.__exportcheck_patch__ = True
    return chunk_kimi_delta_attention


@contextlib.contextmanager
def kda_ceil_chunks(model=None):
    """Pad Kimi-delta-attention inputs to a whole number of chunks before the chunked scan.

    Fixes: torch.export of kimi_linear / bailing_hybrid with a dynamic number of new tokens:
    ``Constraints violated (seq_length)! ... Not all values of seq_length ... satisfy the
    generated guard``: chunk_kimi_delta_attention
    (transformers/models/kimi_linear/modeling_kimi_linear.py:496,
    bailing_hybrid/modeling_bailing_hybrid.py:598) pads by ``(chunk - s % chunk) % chunk`` and
    loops over ``total // chunk``. Padding to ceil(s / chunk) * chunk first: same numbers
    (padded rows are zero: beta 0, g 0, k/v 0 -> no state change), provable chunk count.

    Remove when: transformers pads with a ceil division or the solver simplifies Mod.
    """
    if model is not None:
        names = {type(m).__module__ for m in model.modules()}
    else:
        names = {n for n in sys.modules if n.startswith("transformers.models.")}
    changed = []
    try:
        for name in sorted(names):
            module = sys.modules.get(name)
            original = getattr(module, "chunk_kimi_delta_attention", None)
            if original is None or getattr(original, "__exportcheck_patch__", False):
                continue
            changed.append((module, original))
            module.chunk_kimi_delta_attention = _ceil_chunks_kda(original)
        yield
    finally:
        for module, original in reversed(changed):
            module.chunk_kimi_delta_attention = original


def _dbrx_experts_forward(self, hidden_states, top_k_index, top_k_weights):
    batch_size = hidden_states.shape[0]
    x = hidden_states.reshape(-1, self.hidden_size)  # (T, H)
    shape = (self.num_experts, self.ffn_hidden_size, self.hidden_size)
    w1 = self.mlp.w1.view(shape)[top_k_index]  # (T, K, F, H)
    v1 = self.mlp.v1.view(shape)[top_k_index]
    w2 = self.mlp.w2.view(shape)[top_k_index]
    gate = torch.einsum("th,tkfh->tkf", x, w1)  # x @ w1.T
    up = torch.einsum("th,tkfh->tkf", x, v1)
    inter = self.mlp.activation_fn(gate) * up
    down = torch.einsum("tkf,tkfh->tkh", inter, w2)  # inter @ w2
    out = (down * top_k_weights[..., None]).sum(dim=1)
    return out.view(batch_size, -1, self.hidden_size)


def _longcat_experts_forward(self, hidden_states, top_k_index, top_k_weights):
    if top_k_index.numel() == 0 or self.gate_up_proj is None:
        return _longcat_experts_forward.original(self, hidden_states, top_k_index, top_k_weights)
    n = self.num_routed_experts
    routed = top_k_index < n  # else identity (zero) expert
    idx = top_k_index.clamp(max=n - 1)
    gate_up = self.gate_up_proj[idx]  # (T, K, 2I, H)
    down_w = self.down_proj[idx]  # (T, K, H, I)
    gate, up = torch.einsum("th,tkoh->tko", hidden_states, gate_up).chunk(2, dim=-1)
    expert_out = torch.einsum("tki,tkhi->tkh", self.act_fn(gate) * up, down_w)
    identity = hidden_states[:, None, :].expand_as(expert_out)
    out = torch.where(routed[..., None], expert_out, identity) * top_k_weights[..., None]
    return out.sum(dim=1).to(hidden_states.dtype)


@contextlib.contextmanager
def _replace(module_name: str, owner: str | None, attribute: str, value: Any) -> Iterator[None]:
    """Set ``attribute`` of a class (or of the module when ``owner`` is None) inside the block.

    Nothing happens when the module is not imported (the model is not in use) or the
    attribute is absent. A function replacement finds the replaced one in its ``original``
    attribute. Nested use leaves the outer replacement in place.
    """
    module = sys.modules.get(module_name)
    target = module if owner is None or module is None else getattr(module, owner, None)
    function = value.__func__ if isinstance(value, staticmethod) else value
    if target is None or not hasattr(target, attribute) or getattr(target, attribute) is function:
        yield
        return
    saved = vars(target).get(attribute, _MISSING)
    function.original = getattr(target, attribute)
    setattr(target, attribute, value)
    try:
        yield
    finally:
        if saved is _MISSING:
            delattr(target, attribute)
        else:
            setattr(target, attribute, saved)


_MISSING = object()


def _replace_forward(module_name: str, class_name: str, forward: Any) -> Any:
    return _replace(module_name, class_name, "forward", forward)


@contextlib.contextmanager
def dbrx_experts_gather(model=None):
    """Compute DbrxExperts with gathered expert weights instead of a loop over the hit experts.

    Fixes: torch.export of dbrx fails with ``Could not guard on data-dependent expression
    Eq(u0, 0)``: DbrxExperts.forward (transformers/models/dbrx/modeling_dbrx.py:293-296) loops
    ``for expert_idx in expert_hit`` over ``nonzero()`` and ``torch.where`` results; DbrxExperts
    has no ``@use_experts_implementation``, so the config's experts implementation cannot switch it.
    Same sum over the chosen experts of weight * GLU(x), with the weights indexed by top_k_index.

    Remove when: DbrxExperts supports transformers' experts implementations (batched_mm).
    """
    with _replace_forward(
        "transformers.models.dbrx.modeling_dbrx", "DbrxExperts", _dbrx_experts_forward
    ):
        yield


@contextlib.contextmanager
def longcat_experts_gather(model=None):
    """Compute LongcatFlashExperts (routed + identity "zero" experts) without a data-dependent loop.

    Fixes: torch.export of longcat_flash fails with ``Could not guard on data-dependent expression
    Eq(u0, 0)``: LongcatFlashExperts.forward
    (transformers/models/longcat_flash/modeling_longcat_flash.py:187-192) loops over
    ``nonzero()`` with ``.item()`` and ``if token_idx.numel() == 0: continue``. Same result:
    for each chosen expert, GLU with its weights (or the identity for a zero expert) times its
    routing weight, summed.

    Remove when: LongcatFlashExperts supports transformers' experts implementations.
    """
    with _replace_forward(
        "transformers.models.longcat_flash.modeling_longcat_flash",
        "LongcatFlashExperts",
        _longcat_experts_forward,
    ):
        yield


@contextlib.contextmanager
def gemma3n_sparsity_constant(model=None):
    """Compute Gemma 3n's activation-sparsity cutoff multiplier before export, as a constant.

    Fixes: ``torch.onnx.export`` of gemma3n / gemma3n_text fails with
    ``DispatchError: No ONNX function found for <OpOverload(op='prims.erf_inv', ...)>``:
    Gemma3nTextMLP._gaussian_topk (transformers/models/gemma3n/modeling_gemma3n.py:967-968)
    computes ``Normal(0, 1).icdf(torch.tensor(activation_sparsity))`` inside forward, so the
    inverse error function of a config constant lands in the graph, and ONNX has no Erfinv.
    The multiplier is computed here, eagerly and with the same float32 torch code, for every
    sparsity value of the model's MLPs, and enters the graph as a float32 scalar: the same
    numbers.

    Remove when: the ONNX exporter translates erf_inv (or folds constants before
    translation), or transformers precomputes the multiplier.
    """
    module = sys.modules.get("transformers.models.gemma3n.modeling_gemma3n")
    cls = getattr(module, "Gemma3nTextMLP", None) if module is not None else None
    if cls is None:
        yield
        return

    def multiplier(p):
        return float(
            torch.distributions.normal.Normal(0, 1).icdf(torch.tensor(p, dtype=torch.float32))
        )

    table = {}
    for m in model.modules() if model is not None else ():
        p = getattr(m, "activation_sparsity", 0.0)
        if isinstance(m, cls) and p > 0.0:
            table[p] = multiplier(p)

    def _gaussian_topk(self, inputs):
        p = self.activation_sparsity
        # float32 value as a Python float; if unseen, float64 then rounded to float32
        value = table.get(p)
        if value is None:
            value = float(torch.tensor(statistics.NormalDist().inv_cdf(p), dtype=torch.float32))
        std_multiplier = torch.tensor(value, dtype=torch.float32).type(inputs.dtype)
        inputs_mean = torch.mean(inputs, dim=-1, keepdim=True)
        inputs_std = torch.std(inputs, dim=-1, keepdim=True, unbiased=False)
        cutoff_x = inputs_mean + inputs_std * std_multiplier
        return torch.nn.functional.relu(inputs - cutoff_x)

    original = cls._gaussian_topk
    cls._gaussian_topk = _gaussian_topk
    try:
        yield
    finally:
        cls._gaussian_topk = original


def _prepare_attention_mask(self, input_ids, span, context, length):
    batch = input_ids.size(0)
    seqlen = input_ids.size(1)
    device = input_ids.device
    directional_mask_2d = torch.arange(seqlen, device=device) <= torch.arange(
        seqlen, device=device
    ).view(-1, 1)
    attention_mask = context[:, None, :] | (
        context[:, :, None].logical_not() & directional_mask_2d.view(1, seqlen, seqlen)
    )
    attention_mask = attention_mask & (span[:, None, :] == span[:, :, None])
    # mask for left padding: list(range(n))[::-1] as a tensor is arange(n - 1, -1, -1)
    n = seqlen - self.prompt_length
    reversed_positions = (n - 1) - torch.arange(n, device=device)
    mask_1d = reversed_positions[None, :].repeat(batch, 1) < length[:, None]
    mask_1d = torch.cat(
        (torch.ones(batch, self.prompt_length, device=device).bool(), mask_1d), dim=1
    )
    attention_mask = (
        mask_1d.view(batch, seqlen, 1) & mask_1d.view(batch, 1, seqlen) & attention_mask
    )
    return attention_mask


@contextlib.contextmanager
def cpmant_mask_arange(model=None):
    """Build CPM-Ant's left-padding mask with arange instead of a Python list of positions.

    Fixes: torch.export of cpmant with a dynamic number of tokens: ``Constraints violated
    (seq_length)! ... specialized it to be a constant (3)``: CpmAntModel._prepare_attention_mask
    (transformers/models/cpmant/modeling_cpmant.py:571) builds
    ``torch.tensor(list(range(seqlen - prompt_length))[::-1])``, a Python list as long as the
    sequence. ``(n - 1) - arange(n)`` holds the same integers (int64, as torch.tensor gives).

    Remove when: transformers builds the positions with torch.arange.
    """
    module = sys.modules.get("transformers.models.cpmant.modeling_cpmant")
    if module is None:
        yield
        return
    cls = module.CpmAntModel
    original = cls._prepare_attention_mask
    cls._prepare_attention_mask = _prepare_attention_mask
    try:
        yield
    finally:
        cls._prepare_attention_mask = original


@contextlib.contextmanager
def recurrent_gemma_scan(model=None):
    """Run RecurrentGemma's RG-LRU recurrence in closed form instead of a loop over tokens.

    Fixes: torch.export of recurrent_gemma with a dynamic number of tokens: ``Constraints
    violated (seq_length)! ... specialized it to be a constant (3)``:
    RecurrentGemmaRglru._rnn_scan
    (transformers/models/recurrent_gemma/modeling_recurrent_gemma.py:384) runs
    ``for t in range(hidden_states.shape[1])``, unrolling h_t = a_t h_{t-1} + x_t over the
    traced length. The replacement computes h_t = sum_{i<=t} exp(S_t - S_i) x_i
    (+ exp(S_t) h_{-1}), S = cumsum(log a), without the terms that span a factor a_j == 0
    (a reset): the same numbers within float rounding (3.8e-7 on the logits), for one token
    as for several. Memory grows as batch x seq^2 x width: fine for decode steps and short
    prompts, not for long prefills.

    Remove when: transformers computes the RG-LRU scan without a Python loop over tokens.
    """
    with _replace(_rw.RECURRENT_GEMMA, "RecurrentGemmaRglru", "_rnn_scan", _rw.rglru_scan):
        yield


@contextlib.contextmanager
def xlstm_closed_form(model=None):
    """Compute xLSTM's inference-mode mLSTM in closed form instead of per-token and chunk loops.

    Fixes: torch.export of xlstm with a dynamic number of tokens: ``Constraints violated
    (seq_length)! ... specialized it to be a constant (3)``:
    ``wrap_chunkwise_arbitrary_sequence_length`` (transformers/models/xlstm/modeling_xlstm.py:586)
    picks a kernel with Python comparisons of the length (``> 1``, ``// chunk_size``) and
    ``mlstm_recurrent_sequence_native`` (:494) loops over the tokens. The replacement
    computes, for every length at once, the stabilized recurrence all three kernels compute
    (max state m_t = max(b_t + m_0, max_s b_t - b_s + i_s), b = cumsum(logsigmoid(f))) and
    the same last states: equal in float64 to 1.5e-13, 2.6e-6 on float32 logits. Training mode
    runs the original. Memory grows as seq^2, as in ``recurrent_gemma_scan``. Not applied when
    the ``xlstm`` package provides the kernels.

    Remove when: transformers' native mLSTM has no Python control flow on the length.
    """
    module = sys.modules.get(_rw.XLSTM)
    if module is None or not hasattr(module, "wrap_chunkwise_arbitrary_sequence_length"):
        yield
        return
    with _replace(_rw.XLSTM, "xLSTMBackend", "forward", _rw.xlstm_backend_forward):
        yield


@contextlib.contextmanager
def qwen4_exp_indexer(model=None):
    """Compute Qwen4Exp's QSA indexer selection for all queries at once, without nonzero().

    Fixes: torch.export of qwen4_exp and qwen4_exp_text: ``GuardOnDataDependentSymNode: Could
    not guard on data-dependent expression ((u0//4)) > 0``: Qwen4ExpTextQSAIndexer.forward
    (transformers/models/qwen4_exp/modeling_qwen4_exp.py:746-768) loops in Python over batch and
    queries, takes ``nonzero()`` of each mask row (u0 keys visible), branches on
    ``u0 // compress_ratio > 0`` and calls ``topk(min(block_topk, u0 // r))``; the loops would
    also fix batch and seq_length.

    The replacement gives the same selection mask with fixed shapes: a visible key's rank
    (cumsum of the row) gives its block, keys past the last full block are selected as the
    original's tail; blocks are averaged with a scatter_add, normed, rotated at their first
    key and scored as in the original, and one ``topk`` of constant k over scores padded with
    -inf picks the blocks. Only ties of block scores at the top-k boundary may select other
    blocks (topk's order among equal values is not defined; none in the checked inputs).

    Remove when: transformers computes the indexer without per-query nonzero() and loops.
    """
    with _replace(_rw.QWEN4_EXP, "Qwen4ExpTextQSAIndexer", "forward", _rw.qwen4_indexer_forward):
        yield


@contextlib.contextmanager
def xlnet_rel_shift_gather(model=None):
    """Compute XLNet's relative shift with a gather instead of reshaping a sliced view.

    Fixes: torch.export of xlnet guards ``(2 * seq_length - 1) % seq_length != 0``, so the
    ExportedProgram rejects one new token (``Guard failed: (-1 + 2 *
    attention_mask.size()[1]) % attention_mask.size()[1] != 0``):
    XLNetRelativeAttention.rel_shift_bnij (transformers/models/xlnet/modeling_xlnet.py:82-94)
    reshapes the (qlen, rlen) scores to (rlen, qlen), slices off a row and reshapes the slice to
    (qlen, rlen - 1). The replacement reads the same elements with one ``gather``: identical
    values (a copy, no arithmetic).

    Remove when: transformers computes the relative shift without reshaping a sliced view.
    """
    with _replace(_rw.XLNET, "XLNetRelativeAttention", "rel_shift_bnij",
                  staticmethod(_rw.xlnet_rel_shift_bnij)):  # fmt: skip
        yield


@contextlib.contextmanager
def xlnet_float_mask(model=None):
    """Give XLNetModel a floating-point attention mask, so that ``1.0 - mask`` subtracts floats.

    Fixes: ``torch.onnx.export`` of xlnet: ``ConversionError: Failed to decompose the FX graph
    for ONNX compatibility`` (``Cannot find a compatible OpOverload for aten.sub ...
    sub.Tensor(1.0, convert_element_type_default)``): XLNetModel.forward
    (transformers/models/xlnet/modeling_xlnet.py:1078) computes ``1.0 - attention_mask`` on
    the int64 mask and the exporter's type promotion fails on a Python float minus an integer
    tensor (torch 2.13.0; the float mask exports). ``1.0 - int_tensor`` computes in the default
    float dtype, so converting the mask first gives identical numbers.

    Remove when: torch.onnx.export converts ``1.0 - int_tensor``.
    """
    with _replace(_rw.XLNET, "XLNetModel", "forward", _rw.xlnet_model_forward):
        yield


@contextlib.contextmanager
def prophetnet_decode_step(model=None):
    """Keep ProphetNet's decode step symbolic in the cache length, and convertible to ONNX.

    Fixes, for prophetnet with a cache:

    * torch.export: ``Constraints violated (cache_length)! ... specialized it to be a
      constant (30)``: ProphetNetPositionalEmbeddings.forward
      (transformers/models/prophetnet/modeling_prophetnet.py:364-367) builds the new token's
      position with ``int(padding_idx + new_tokens + cache_length)``. The same product
      without ``int()`` gives the same id.
    * then ``Not all values of cache_length ... satisfy the generated guard min(1 +
      cache_length, 16 + 16*cache_length) == 1 + cache_length``: a ``.view`` of the repeated
      relative-position buckets (get_main_relative_pos_embeddings, :760, and the predict
      stream's). In the decode step the replacements gather the bucket embeddings with
      buckets broadcast by ``expand``: the same entries of the same projection. Without a
      cache (precomputed buckets) the originals run.
    * torch.onnx.export: ``No ONNX function found for aten._is_all_true``: the module's
      ``torch_compilable_check`` on a tensor becomes ``torch._check_tensor_all``; while
      exporting, the same assertion is recorded with ``cond.all().item()``.

    Remove when: transformers drops the ``int()``, builds the decode buckets without viewing
    a repeated tensor, and the ONNX exporter translates ``_is_all_true``.
    """
    embeddings, attention = "ProphetNetPositionalEmbeddings", "ProphetNetNgramSelfAttention"
    with contextlib.ExitStack() as stack:
        for owner, attribute, value in (
            (embeddings, "forward", _rw.prophetnet_positions_forward),
            (attention, "get_main_relative_pos_embeddings", _rw.prophetnet_main_relative),
            (attention, "get_predict_relative_pos_embeddings", _rw.prophetnet_predict_relative),
            (None, "torch_compilable_check", _rw.prophetnet_compilable_check),
        ):
            stack.enter_context(_replace(_rw.PROPHETNET, owner, attribute, value))
        yield


@contextlib.contextmanager
def reformer_axial_gather(model=None):
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
    with _replace(_rw.REFORMER, "AxialPositionEmbeddings", "forward", _rw.reformer_axial_forward):
        yield


@contextlib.contextmanager
def torch_single_value_root(model=None):
    """Let torch.export report its constraint violation when a suggested root has one value.

    Fixes: ``AssertionError: Cannot create Dim with inconsistent min=1, max=1``
    (torch/export/dynamic_shapes.py:183), raised by
    ``DimConstraints._process_derived_dim_roots``
    (torch/fx/experimental/symbolic_shapes.py:3523) while torch writes the suggested fixes
    of a ``Constraints violated`` error whose solution is a derived dimension such as
    ``seq_length = 4*_seq_length - 1`` with ``_seq_length`` in [1, 1] (deepseek_v4). The
    assertion replaces the real error, the list of violated guards. With the patch the
    suggestion stays ``Dim('_seq_length', min=1, max=1)`` and torch raises its
    ``UserError``; nothing is traced or computed differently.

    Remove when: torch writes suggestions for a one-value root without asserting.
    """
    import torch.fx.experimental.symbolic_shapes  # noqa: F401  (imported by torch.export)

    with _replace(
        "torch.fx.experimental.symbolic_shapes",
        "DimConstraints",
        "_process_derived_dim_roots",
        _rw.process_derived_dim_roots,
    ):
        yield


@contextlib.contextmanager
def rwkv_one_token_shift(model=None):
    """Give each batch row its own previous token in RWKV's one-token decode step.

    Fixes a wrong result of eager transformers: rwkv with a state and one new token
    returns logits of shape (batch, batch, vocab) for batch > 1, and torch.export fails
    with ``Constraints violated (batch)``: RwkvSelfAttention.extract_key_value
    (transformers/models/rwkv/modeling_rwkv.py:250-251) and RwkvFeedForward.forward
    (:306-307) take the previous token as ``state[i][:, :, layer_id]``, of shape
    (batch, hidden), and mix it with ``hidden`` of shape (batch, 1, hidden): every row
    of the new token meets every row of the state. The replacements add the missing
    ``unsqueeze(1)``, which is what the several-token branch computes for its first
    token; everything else is the original code, so batch 1, several tokens and no
    state give the same numbers as before.

    Since it corrects eager itself, :func:`exportcheck.validate` also computes its
    eager reference with it (see :data:`EAGER_FIXES`).

    Remove when: transformers unsqueezes the saved token in both one-token branches.
    """
    with contextlib.ExitStack() as stack:
        for owner, attribute, value in (
            ("RwkvSelfAttention", "extract_key_value", _rw.rwkv_attention_extract_key_value),
            ("RwkvFeedForward", "forward", _rw.rwkv_feed_forward),
        ):
            stack.enter_context(_replace(_rw.RWKV, owner, attribute, value))
        yield


@contextlib.contextmanager
def deepseek_v4_compressor_windows(model=None):
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
    with contextlib.ExitStack() as stack:
        for owner, attribute, function in _dsv4.REPLACEMENTS:
            stack.enter_context(_replace(_dsv4.MODULE, owner, attribute, function))
        yield


@contextlib.contextmanager
def blt_padded_patches(model=None):
    """Run BLT's entropy patcher with a fixed number of patches: sequence_length + 1.

    Fixes: torch.export of blt fails with ``Could not guard on data-dependent expression
    Eq(u0, 1)``: BltPatcher.forward (transformers/models/blt/modeling_blt.py:915) builds
    ``torch.distributions.Categorical(logits=logits)``, whose argument validation does
    ``if not valid.all()``. Past it, BltPatcher.patch_lengths_from_entropies (:968-973)
    selects patch starts with a boolean index and slices the patch dimension to
    ``patch_mask.sum(dim=1).max()``: the number of patches depends on the entropies.

    The replacements build the Categorical with ``validate_args=False`` (same entropy)
    and return patch lengths for all sequence_length + 1 possible patches (2 forced
    starts + one per entropy boundary among the sequence_length - 1 candidates), the
    original ones first, then padding patches starting at sequence_length + 1, past
    every byte: exactly what the original gives a row with fewer boundaries than the
    longest row of its batch. BltModel.forward only uses the lengths through their
    cumulative sums (_patch_ids_from_lengths, also of lengths[:, 1:]) and the patch
    count, so every byte keeps its patch id, and padding patches hold no byte:

    - local encoder: patch_reduce leaves them 0 and the patch-as-query cross-attention
      rows are separate rows; real rows see the same keys and mask;
    - global transformer: causal, and padding patches come after every real one, so
      real patches never attend to them;
    - local decoder: its cross-attention mask gives them finfo.min for every byte, a
      softmax weight of exactly 0 (every byte has its own patch, so no row is fully
      masked).

    The logits (per byte) are the same; only extra rows are computed. The patcher's own
    ``patch_lengths`` output gains the padding patches. With ``max_patch_length`` set
    the original patch lengths and process_patch_lengths (``.item()``) are kept: eager
    is unchanged but that configuration still does not export.

    Also fixes, once past the above, ``Constraints violated (seq_length)`` (specialized
    to 3): byte_group_hash_function (:1027-1028) multiplies an ``unfold`` view of the
    bytes, and the strides of that overlapping view make the meta function guard
    ``seq_length >= 3`` and ``< 4``. The replacement takes each window column as a shifted
    slice. The original ``torch.sum`` over the window would become an int64 ReduceSum in ONNX, which
    onnxruntime does not compute exactly once the products wrap (observed:
    sum([0, 0, -8680463014257304698]) = -8680463014257304576), so every hash id and then
    every logit differed; the replacement adds the window terms one by one (elementwise
    int64 Add, exact; wrapping addition is associative, so the same hash).

    Likewise BltModel._patch_ids_from_lengths (:1316-1322) builds ``cumsum[:, :-1]``, of
    sequence_length - 1 patches for the decoder: replaced by ``cumsum - lengths``, the
    same integers.

    Remove when: transformers computes BLT patches with a static patch dimension (or
    torch.export handles the data-dependent count).
    """
    with contextlib.ExitStack() as stack:
        stack.enter_context(_replace(_rw.BLT, "BltPatcher", "forward", _rw.blt_patcher_forward))
        stack.enter_context(
            _replace(_rw.BLT, "BltModel", "_patch_ids_from_lengths", _rw.blt_patch_ids_from_lengths)
        )
        stack.enter_context(
            _replace(_rw.BLT, None, "byte_group_hash_function", _rw.blt_byte_group_hash)
        )
        yield


#: The patches :func:`export_patches` applies, in order. Each takes the model (or None).
PATCHES: dict[str, Callable[[Any], contextlib.AbstractContextManager[None]]] = {
    "cache_pytrees": lambda model: cache_pytrees(),
    "moe_batched_mm": moe_batched_mm,
    "real_rotary": real_rotary,
    "minimax_lightning_decode": minimax_lightning_decode,
    "inkling2_short_conv_windows": inkling2_short_conv_windows,
    "opt_position_ids": opt_position_ids,
    "gated_delta_ceil_chunks": gated_delta_ceil_chunks,
    "kda_ceil_chunks": kda_ceil_chunks,
    "dbrx_experts_gather": dbrx_experts_gather,
    "longcat_experts_gather": longcat_experts_gather,
    "gemma3n_sparsity_constant": gemma3n_sparsity_constant,
    "cpmant_mask_arange": cpmant_mask_arange,
    "recurrent_gemma_scan": recurrent_gemma_scan,
    "xlstm_closed_form": xlstm_closed_form,
    "qwen4_exp_indexer": qwen4_exp_indexer,
    "xlnet_rel_shift_gather": xlnet_rel_shift_gather,
    "xlnet_float_mask": xlnet_float_mask,
    "prophetnet_decode_step": prophetnet_decode_step,
    "reformer_axial_gather": reformer_axial_gather,
    "torch_single_value_root": torch_single_value_root,
    "rwkv_one_token_shift": rwkv_one_token_shift,
    "deepseek_v4_compressor_windows": deepseek_v4_compressor_windows,
    "blt_padded_patches": blt_padded_patches,
}

#: Patches that correct a wrong result of eager transformers, not only its export:
#: name -> the modeling module they fix. The eager reference of a model from one of
#: these modules is computed with the patch (:func:`eager_fixes`).
EAGER_FIXES: dict[str, str] = {
    "rwkv_one_token_shift": _rw.RWKV,
}


@contextlib.contextmanager
def eager_fixes(model: Any) -> Iterator[list[str]]:
    """Apply the :data:`EAGER_FIXES` that concern ``model``; yields their names.

    >>> import torch
    >>> with eager_fixes(torch.nn.Linear(2, 2)) as names:
    ...     names
    []
    """
    modules = {type(m).__module__ for m in model.modules()}
    names = [name for name, module in EAGER_FIXES.items() if module in modules]
    with contextlib.ExitStack() as stack:
        for name in names:
            stack.enter_context(PATCHES[name](model))
        yield names


@contextlib.contextmanager
def export_patches(model: Any = None, exclude: tuple[str, ...] = ()) -> Iterator[None]:
    """Apply every known fix for exporting transformers models inside a ``with`` block.

    :param model: the model about to be exported; patches that change a model (the
        experts implementation) need it, the others apply without it
    :param exclude: names of patches (keys of :data:`PATCHES`) not to apply

    On exit, torch, transformers and the model are exactly as they were, also after
    an exception. Entering twice or nesting is allowed.

    >>> import torch
    >>> from exportcheck import export_patches, make_dynamic_cache
    >>> cache = make_dynamic_cache([(torch.rand(1, 1, 2, 4), torch.rand(1, 1, 2, 4))])
    >>> with export_patches():
    ...     n = len(torch.utils._pytree.tree_leaves(cache))
    >>> n
    2
    """
    if not isinstance(exclude, tuple | list | set | frozenset):
        raise TypeError(
            f"export_patches: exclude must be a tuple of patch names, got {type(exclude).__name__}."
        )
    unknown = sorted(set(exclude) - set(PATCHES))
    if unknown:
        raise ValueError(
            f"export_patches: unknown patch names {unknown}; known: {sorted(PATCHES)}."
        )
    if model is not None and not hasattr(model, "modules"):
        raise TypeError(
            f"export_patches: model must be a torch.nn.Module, got {type(model).__name__}."
        )
    with contextlib.ExitStack() as stack:
        for name, patch in PATCHES.items():
            if name not in exclude:
                stack.enter_context(patch(model))
        yield
