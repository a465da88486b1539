"""Fixes of transformers code shared by many models (no model type of its own).

* ``cache_pytrees``: caches as pytree nodes (:func:`exportcheck.cache_pytrees`), first;
* ``moe_batched_mm``: the experts implementation of mixture-of-experts models;
* ``gated_delta_ceil_chunks`` and ``kda_ceil_chunks``: chunked scans of linear-attention
  layers, a function that several modeling files define under the same name.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any

import torch

from ..caches.pytrees import cache_pytrees
from . import register_patch
from .core import Patch

__all__ = ["CACHE_PYTREES", "GATED_DELTA_CEIL_CHUNKS", "KDA_CEIL_CHUNKS", "MOE_BATCHED_MM"]


def _install_cache_pytrees(patcher: Any, model: Any) -> None:
    """Register transformers' cache classes as torch pytree nodes (:func:`exportcheck.cache_pytrees`).

    Fixes: ``torch.export`` of a model called with a cache fails with ``Cannot associate
    shape ... to non-tensor type <class '...DynamicCache'>``: transformers does not
    register its cache classes. Registered, a cache flattens into its tensors and is
    rebuilt by assigning them to its layers (not through ``update()``, whose lazily
    allocated tensors break ``run_decompositions()`` and the ONNX conversion): the model
    computes exactly what it computes on the original cache.

    Remove when: transformers registers its cache classes as pytree nodes without
    rebuilding layers through ``update()``.
    """
    patcher.enter(cache_pytrees())


CACHE_PYTREES = register_patch(
    Patch(
        name="cache_pytrees",
        fixes="Cannot associate shape ... to non-tensor type <class '...DynamicCache'>",
        remove_when="transformers registers its cache classes as pytree nodes without "
        "rebuilding layers through update()",
        install=_install_cache_pytrees,
    )
)


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


def _install_moe_batched_mm(patcher: Any, model: Any) -> None:
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
    for config in _configs_of(model) if model is not None else ():
        if getattr(config, "_experts_implementation_internal", None) == "grouped_mm":
            patcher.replace(config, "_experts_implementation_internal", "batched_mm")


MOE_BATCHED_MM = register_patch(
    Patch(
        name="moe_batched_mm",
        fixes="DispatchError: No ONNX function found for "
        "<OpOverload(op='transformers.grouped_mm_fallback', ...)>",
        remove_when="transformers' grouped_mm experts exports to ONNX (a translation for its "
        "custom op, or an implementation made of standard ops)",
        install=_install_moe_batched_mm,
        runtimes=("onnx",),
    )
)


def _modules_of(model: Any) -> list[Any]:
    """The modeling modules of ``model``, or every transformers model module imported."""
    if model is not None:
        names = {type(m).__module__ for m in model.modules()}
    else:
        names = {n for n in sys.modules if n.startswith("transformers.models.")}
    return [sys.modules[n] for n in sorted(names) if n in sys.modules]


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

    return torch_chunk_gated_delta_rule


def _install_gated_delta(patcher: Any, model: Any) -> None:
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
    for module in _modules_of(model):
        original = getattr(module, "torch_chunk_gated_delta_rule", None)
        if original is not None:  # nested: replace() leaves the outer wrapper in place
            patcher.replace(module, "torch_chunk_gated_delta_rule", _ceil_chunks(original))


GATED_DELTA_CEIL_CHUNKS = register_patch(
    Patch(
        name="gated_delta_ceil_chunks",
        fixes="Constraints violated (seq_length)! ... Not all values of seq_length ... "
        "satisfy the generated guard",
        remove_when="transformers computes the padding with a ceil division, or the shape "
        "solver simplifies the modulo expression",
        install=_install_gated_delta,
    )
)


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

    return chunk_kimi_delta_attention


def _install_kda(patcher: Any, model: Any) -> None:
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
    for module in _modules_of(model):
        original = getattr(module, "chunk_kimi_delta_attention", None)
        if original is not None:  # nested: replace() leaves the outer wrapper in place
            patcher.replace(module, "chunk_kimi_delta_attention", _ceil_chunks_kda(original))


KDA_CEIL_CHUNKS = register_patch(
    Patch(
        name="kda_ceil_chunks",
        fixes="Constraints violated (seq_length)! ... Not all values of seq_length ... "
        "satisfy the generated guard",
        remove_when="transformers pads with a ceil division or the solver simplifies Mod",
        install=_install_kda,
    )
)
