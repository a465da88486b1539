"""Build transformers caches from tensors.

A cache built here is filled by assigning tensors to its layers, never through
``update()``: ``update()`` lazily allocates ``torch.tensor([])`` which becomes a
lifted constant when it happens under ``torch.export`` (see :mod:`exportcheck.pytrees`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

__all__ = ["make_dynamic_cache"]


def _check_pairs(fname: str, pairs: Any) -> list[tuple[torch.Tensor, torch.Tensor]]:
    if isinstance(pairs, torch.Tensor) or not isinstance(pairs, Sequence):
        raise TypeError(
            f"{fname}: expected a list of (key, value) pairs of tensors, "
            f"got {type(pairs).__name__}."
        )
    checked = []
    ref: torch.Tensor | None = None
    for i, pair in enumerate(pairs):
        if not isinstance(pair, Sequence) or len(pair) != 2:
            raise TypeError(
                f"{fname}: layer {i} must be a (key, value) pair of tensors, "
                f"got {type(pair).__name__}"
                + (f" of length {len(pair)}" if isinstance(pair, Sequence) else "")
                + "."
            )
        key, value = pair
        for what, t in (("key", key), ("value", value)):
            if not isinstance(t, torch.Tensor):
                raise TypeError(
                    f"{fname}: the {what} of layer {i} must be a tensor, got {type(t).__name__}."
                )
            if t.dim() != 4:
                raise ValueError(
                    f"{fname}: the {what} of layer {i} must have 4 dimensions "
                    f"(batch, heads, length, head_dim), got shape {_shape(t)}."
                )
        if key.shape[:3] != value.shape[:3]:
            raise ValueError(
                f"{fname}: key and value of layer {i} differ in shape "
                f"({_shape(key)} vs {_shape(value)})."
            )
        if key.dtype != value.dtype:
            raise ValueError(
                f"{fname}: key and value of layer {i} differ in dtype ({key.dtype} vs {value.dtype})."
            )
        if ref is not None and key.dtype != ref.dtype:
            raise ValueError(
                f"{fname}: layer {i} has dtype {key.dtype} but layer 0 has {ref.dtype}; "
                "use one dtype for the whole cache."
            )
        if key.device != value.device or (ref is not None and key.device != ref.device):
            raise ValueError(
                f"{fname}: layer {i} is on {key.device}/{value.device} but layer 0 is on "
                f"{ref.device if ref is not None else key.device}; move every tensor to one device."
            )
        ref = key if ref is None else ref
        checked.append((key, value))
    return checked


def _shape(t: torch.Tensor) -> str:
    return "x".join(str(d) for d in t.shape)


def fill_layer(layer: Any, key: torch.Tensor, value: torch.Tensor) -> Any:
    """Assign key and value to a cache layer as if it had been updated once.

    Only plain attribute assignments happen here, so it is safe under tracing.
    """
    layer.keys = key
    layer.values = value
    layer.is_initialized = True
    layer.device = key.device
    if hasattr(layer, "cumulative_length"):
        layer.cumulative_length = key.shape[-2]
    return layer


def make_dynamic_cache(pairs: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> Any:
    """Build a ``transformers.DynamicCache`` holding one ``(key, value)`` pair per layer.

    Each tensor has shape ``(batch, kv_heads, cache_length, head_dim)``.

    >>> import torch
    >>> from exportcheck import make_dynamic_cache, string_type
    >>> cache = make_dynamic_cache([(torch.rand(2, 1, 30, 96), torch.rand(2, 1, 30, 96))])
    >>> string_type(cache, with_shape=True)
    'DynamicCache(key_cache=#1[T1s2x1x30x96], value_cache=#1[T1s2x1x30x96])'
    """
    from transformers.cache_utils import DynamicCache, DynamicLayer

    checked = _check_pairs("make_dynamic_cache", pairs)
    cache = DynamicCache()
    if not hasattr(cache, "layers"):
        raise RuntimeError(
            "make_dynamic_cache: this transformers stores caches without layer objects; "
            "exportcheck needs transformers >= 4.57."
        )
    cache.layers = [fill_layer(DynamicLayer(), k, v) for k, v in checked]
    # A cache built from data does not grow new layers by itself.
    cache.layer_class_to_replicate = None
    return cache
