"""xLSTM: the inference-mode mLSTM with Python control flow on the length."""

from __future__ import annotations

import sys
from typing import Any

import torch

from ..caches.pytrees import register_state_class
from ..patches import Patch
from ..patches.core import passthrough
from . import Family, register

MODULE = "transformers.models.xlstm.modeling_xlstm"


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
        return passthrough(
            xlstm_backend_forward.original,
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


def _install_xlstm_closed_form(patcher: Any, model: Any) -> None:
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
    module = sys.modules.get(MODULE)
    if module is None or not hasattr(module, "wrap_chunkwise_arbitrary_sequence_length"):
        return
    patcher.replace_in(MODULE, "xLSTMBackend", "forward", xlstm_backend_forward)


XLSTM_CLOSED_FORM = Patch(
    name="xlstm_closed_form",
    fixes="Constraints violated (seq_length)! ... specialized it to be a constant (3)",
    remove_when="transformers' native mLSTM has no Python control flow on the length",
    install=_install_xlstm_closed_form,
    model_types=("xlstm",),
)


def _flatten_xlstm_cache(cache: Any) -> tuple[list[tuple[str, Any]], Any]:
    """xLSTMCache -> [rnn_state: [(C, n, m) per layer], seqlen_offset]; the context keeps
    the config, the dtype and ``rnn_state_initial`` (set once a block has run)."""
    layers = sorted(cache.rnn_state)
    children = [
        ("rnn_state", [tuple(cache.rnn_state[i]) for i in layers]),
        ("seqlen_offset", cache.seqlen_offset),
    ]
    initial = getattr(cache, "rnn_state_initial", None)
    return children, (tuple(layers), cache.config, str(cache.dtype), initial)


def _unflatten_xlstm_cache(children: list[Any], context: Any) -> Any:
    from transformers.models.xlstm.modeling_xlstm import xLSTMCache

    layers, config, dtype, initial = context
    cache = xLSTMCache.__new__(xLSTMCache)  # the constructor allocates zero states
    cache.config = config
    cache.dtype = getattr(torch, dtype.replace("torch.", ""))
    cache.rnn_state = {i: tuple(state) for i, state in zip(layers, children[0], strict=True)}
    cache.seqlen_offset = children[1]
    if initial is not None:
        cache.rnn_state_initial = initial
    return cache


def _xlstm_cache_shapes(cache: Any, batch: Any, length: Any) -> Any:
    """Only the batch varies: the states have a fixed size, the offset is one number."""
    per_layer = [tuple({0: batch} for _ in cache.rnn_state[i]) for i in sorted(cache.rnn_state)]
    return [per_layer, None]


def _setup() -> None:
    # xLSTMCache is not a transformers Cache: without this, cache_dynamic_shapes raises
    # "expected a transformers cache with layers ... got xLSTMCache" and the model is
    # checked without its state.
    register_state_class(
        MODULE,
        "xLSTMCache",
        flatten=_flatten_xlstm_cache,
        unflatten=_unflatten_xlstm_cache,
        dynamic_shapes=_xlstm_cache_shapes,
    )


register(
    Family(
        name="xlstm",
        model_types=("xlstm",),
        config_fixes={
            "xlstm": (
                {"qk_dim_factor": 1.0},
                "the cache rounds qk_dim up to a multiple of 64 while the layer uses 64 x 0.5",
            )
        },
        patches=(XLSTM_CLOSED_FORM,),
        setup=_setup,
    )
)
