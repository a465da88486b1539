"""Build transformers caches from tensors (the generic cache classes).

A cache built here is filled by assigning tensors to its layers, never through
``update()``: ``update()`` lazily allocates ``torch.tensor([])`` which becomes a
lifted constant when it happens under ``torch.export`` (see :mod:`exportcheck.caches.pytrees`).
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import torch

__all__ = [
    "make_dynamic_cache",
    "make_encoder_decoder_cache",
    "make_static_cache",
]


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
    """Assign key and value to an attention layer as if it had been updated once.

    Only attribute assignments happen here, so it is safe under tracing.
    """
    layer.keys = key
    layer.values = value
    layer.is_initialized = True
    layer.device = key.device
    if "cumulative_length" in vars(layer) and not isinstance(layer.cumulative_length, torch.Tensor):
        layer.cumulative_length = key.shape[-2]
    return layer


_LAYER_KINDS = ("full_attention", "sliding_attention", "linear_attention")


def _check_layer_types(fname: str, layer_types: Any, n: int, sliding_window: Any) -> list[str]:
    if layer_types is None:
        return ["full_attention"] * n
    if isinstance(layer_types, str) or not isinstance(layer_types, Sequence):
        raise TypeError(
            f"{fname}: layer_types must be a list with one entry per layer, "
            f"got {type(layer_types).__name__}."
        )
    if len(layer_types) != n:
        raise ValueError(
            f"{fname}: layer_types has {len(layer_types)} entries but there are {n} layers."
        )
    for i, kind in enumerate(layer_types):
        if kind not in _LAYER_KINDS:
            raise ValueError(
                f"{fname}: layer {i} has type {kind!r}; expected one of {', '.join(_LAYER_KINDS)}."
            )
    if "sliding_attention" in layer_types and (
        not isinstance(sliding_window, int)
        or isinstance(sliding_window, bool)
        or sliding_window < 1
    ):
        raise ValueError(
            f"{fname}: sliding_attention layers need sliding_window, a positive int, "
            f"got {sliding_window!r}."
        )
    return list(layer_types)


def _layer_class(what: str, name: str, advice: str) -> type:
    """A class of transformers.cache_utils, or a NotImplementedError saying it is missing."""
    import transformers.cache_utils

    cls = getattr(transformers.cache_utils, name, None)
    if cls is None:
        raise NotImplementedError(
            f"{what} need transformers.cache_utils.{name}, which transformers "
            f"{transformers.__version__} does not have{advice}."
        )
    return cls


def _linear_layer(i: int, conv: Any, recurrent: Any) -> Any:
    states = [t for t in (conv, recurrent) if t is not None]
    if not states:
        raise ValueError(
            f"make_dynamic_cache: linear_attention layer {i} needs a conv state, a recurrent "
            "state or both, got (None, None)."
        )
    for what, t in (("conv state", conv), ("recurrent state", recurrent)):
        if t is not None and not isinstance(t, torch.Tensor):
            raise TypeError(
                f"make_dynamic_cache: the {what} of layer {i} must be a tensor or None, "
                f"got {type(t).__name__}."
            )
    layer_class = _layer_class(
        "make_dynamic_cache: linear_attention layers",
        "LinearAttentionLayer",
        " (its models keep these states in a cache class of their own); use full_attention "
        "or sliding_attention layers",
    )
    layer = layer_class()
    layer.device, layer.dtype = states[0].device, states[0].dtype
    if conv is not None:
        layer.conv_states[0] = conv
        layer.conv_kernel_size[0] = conv.shape[-1]
        layer.is_conv_states_initialized[0] = True
    if recurrent is not None:
        layer.recurrent_states[0] = recurrent
        layer.is_recurrent_states_initialized[0] = True
    layer.has_previous_state[0] = True
    return layer


def make_dynamic_cache(
    pairs: Sequence[tuple[Any, Any]],
    layer_types: Sequence[str] | None = None,
    sliding_window: int | None = None,
    *,
    indexer_keys: Sequence[torch.Tensor] | None = None,
    cache_class: type | None = None,
) -> Any:
    """Build a ``transformers.DynamicCache`` holding one pair of tensors per layer.

    :param pairs: for attention layers ``(key, value)``, each of shape
        ``(batch, kv_heads, cache_length, head_dim)``; for ``linear_attention`` layers
        ``(conv_state, recurrent_state)``, either of which may be None
    :param layer_types: one of ``full_attention`` (default), ``sliding_attention``,
        ``linear_attention`` per layer, as in a config's ``layer_types``
    :param sliding_window: the window of ``sliding_attention`` layers
    :param indexer_keys: for sparse-attention models with an indexer (deepseek_v32,
        glm_moe_dsa, ...), one tensor ``(batch, cache_length, index_head_dim)`` per
        layer: the layers become ``DynamicIndexedLayer``
    :param cache_class: a subclass of ``DynamicCache`` to build instead
        (``MtpCache``, ``DFlashCache``, or one of your own), created without arguments

    >>> import torch
    >>> from exportcheck import make_dynamic_cache, string_type
    >>> cache = make_dynamic_cache([(torch.rand(2, 1, 30, 96), torch.rand(2, 1, 30, 96))])
    >>> string_type(cache, with_shape=True)
    'DynamicCache(key_cache=#1[T1s2x1x30x96], value_cache=#1[T1s2x1x30x96])'
    """
    from transformers.cache_utils import DynamicCache, DynamicLayer, DynamicSlidingWindowLayer

    fname = "make_dynamic_cache"
    if isinstance(pairs, torch.Tensor) or not isinstance(pairs, Sequence):
        raise TypeError(
            f"{fname}: expected a list of (key, value) pairs of tensors, got {type(pairs).__name__}."
        )
    kinds = _check_layer_types(fname, layer_types, len(pairs), sliding_window)
    if cache_class is None:
        cache_class = DynamicCache
    elif not (isinstance(cache_class, type) and issubclass(cache_class, DynamicCache)):
        raise TypeError(
            f"{fname}: cache_class must be DynamicCache or a subclass of it, got {cache_class!r}."
        )
    indexed = _check_indexer_keys(fname, indexer_keys, pairs, kinds)
    attention = [
        (i, p) for i, (p, k) in enumerate(zip(pairs, kinds, strict=True)) if k != "linear_attention"
    ]
    checked = dict(
        zip([i for i, _ in attention], _check_pairs(fname, [p for _, p in attention]), strict=True)
    )
    cache = cache_class()
    if not hasattr(cache, "layers"):
        raise RuntimeError(
            f"{fname}: this transformers stores caches without layer objects; "
            "exportcheck needs transformers >= 4.57."
        )
    layers = []
    for i, kind in enumerate(kinds):
        if kind == "linear_attention":
            pair = pairs[i]
            if not isinstance(pair, Sequence) or len(pair) != 2:
                raise TypeError(
                    f"{fname}: layer {i} must be a (conv_state, recurrent_state) pair, "
                    f"got {type(pair).__name__}."
                )
            layers.append(_linear_layer(i, *pair))
            continue
        key, value = checked[i]
        if kind == "sliding_attention":
            layer = DynamicSlidingWindowLayer(sliding_window=sliding_window)
            if key.shape[-2] >= sliding_window:
                raise ValueError(
                    f"{fname}: sliding layer {i} holds {key.shape[-2]} tokens but a window of "
                    f"{sliding_window} keeps at most {sliding_window - 1}."
                )
        elif indexed is not None:
            layer = indexed[0]()
            layer.indexer_keys = indexed[1][i]
            layer.is_indexer_initialized = True
            layer.indexer_dtype, layer.indexer_device = key.dtype, key.device
        else:
            layer = DynamicLayer()
        layers.append(fill_layer(layer, key, value))
    cache.layers = layers
    # A cache built from data does not grow new layers by itself.
    cache.layer_class_to_replicate = None
    return cache


def _check_indexer_keys(fname: str, indexer_keys: Any, pairs: Any, kinds: list[str]) -> Any:
    """(DynamicIndexedLayer, the checked keys) or None when there are no indexer keys."""
    if indexer_keys is None:
        return None
    if isinstance(indexer_keys, torch.Tensor) or not isinstance(indexer_keys, Sequence):
        raise TypeError(
            f"{fname}: indexer_keys must be a list with one tensor per layer, "
            f"got {type(indexer_keys).__name__}."
        )
    if len(indexer_keys) != len(pairs):
        raise ValueError(
            f"{fname}: indexer_keys has {len(indexer_keys)} entries but there are "
            f"{len(pairs)} layers."
        )
    for i, (t, kind) in enumerate(zip(indexer_keys, kinds, strict=True)):
        if kind != "full_attention":
            raise ValueError(
                f"{fname}: indexer keys need full_attention layers, layer {i} is {kind}."
            )
        if not isinstance(t, torch.Tensor) or t.dim() != 3:
            raise ValueError(
                f"{fname}: the indexer keys of layer {i} must be a tensor "
                "(batch, cache_length, index_head_dim), got "
                + (f"shape {_shape(t)}." if isinstance(t, torch.Tensor) else f"{type(t).__name__}.")
            )
        key = pairs[i][0] if isinstance(pairs[i], Sequence) and len(pairs[i]) == 2 else None
        if (
            isinstance(key, torch.Tensor)
            and key.dim() == 4
            and (t.shape[0] != key.shape[0] or t.shape[1] != key.shape[2])
        ):
            raise ValueError(
                f"{fname}: the indexer keys of layer {i} ({_shape(t)}) must have the batch and "
                f"cache length of its keys ({_shape(key)})."
            )
    layer_class = _layer_class(f"{fname}: indexer_keys", "DynamicIndexedLayer", "")
    return layer_class, list(indexer_keys)


def make_static_cache(
    pairs: Sequence[tuple[torch.Tensor, torch.Tensor]], max_cache_len: int
) -> Any:
    """Build a ``transformers.StaticCache`` of ``max_cache_len`` positions per layer.

    The first ``cache_length`` positions hold the given keys and values, the rest
    are zeros, and the cache knows that ``cache_length`` tokens were seen.

    >>> import torch
    >>> from exportcheck import make_static_cache, string_type
    >>> cache = make_static_cache([(torch.rand(1, 2, 3, 8), torch.rand(1, 2, 3, 8))], 16)
    >>> string_type(cache, with_shape=True), int(cache.get_seq_length())
    ('StaticCache(key_cache=#1[T1s1x2x16x8], value_cache=#1[T1s1x2x16x8])', 3)
    """
    from transformers.cache_utils import Cache, StaticCache, StaticLayer

    fname = "make_static_cache"
    if not isinstance(max_cache_len, int) or isinstance(max_cache_len, bool) or max_cache_len < 1:
        raise ValueError(f"{fname}: max_cache_len must be a positive int, got {max_cache_len!r}.")
    checked = _check_pairs(fname, pairs)
    layers = []
    for i, (key, value) in enumerate(checked):
        length = key.shape[-2]
        if length > max_cache_len:
            raise ValueError(
                f"{fname}: layer {i} holds {length} tokens, more than max_cache_len={max_cache_len}."
            )
        layer = StaticLayer(max_cache_len=max_cache_len)
        # transformers 4.57 allocates from the keys alone, 5.x from keys and values.
        n_args = len(inspect.signature(layer.lazy_initialization).parameters)
        layer.lazy_initialization(*(key, value)[:n_args])
        layer.keys[:, :, :length] = key
        layer.values[:, :, :length] = value
        if isinstance(getattr(layer, "cumulative_length", None), torch.Tensor):
            layer.cumulative_length.fill_(length)  # transformers 4.57 has no counter
        layers.append(layer)
    cache = StaticCache.__new__(StaticCache)
    Cache.__init__(cache, layers=layers)
    return cache


def make_encoder_decoder_cache(self_attention: Any, cross_attention: Any) -> Any:
    """Build a ``transformers.EncoderDecoderCache`` from two caches or two lists of pairs.

    >>> import torch
    >>> from exportcheck import make_encoder_decoder_cache, string_type
    >>> pair = (torch.rand(1, 2, 3, 8), torch.rand(1, 2, 3, 8))
    >>> cross = (torch.rand(1, 2, 7, 8), torch.rand(1, 2, 7, 8))
    >>> string_type(make_encoder_decoder_cache([pair], [cross]), with_shape=True)
    'EncoderDecoderCache(self_attention_cache=DynamicCache(key_cache=#1[T1s1x2x3x8], value_cache=#1[T1s1x2x3x8]), cross_attention_cache=DynamicCache(key_cache=#1[T1s1x2x7x8], value_cache=#1[T1s1x2x7x8]))'
    """
    from transformers.cache_utils import Cache, EncoderDecoderCache

    caches = []
    for name, part in (("self_attention", self_attention), ("cross_attention", cross_attention)):
        if isinstance(part, Cache):
            caches.append(part)
        elif isinstance(part, Sequence) and not isinstance(part, str | torch.Tensor):
            caches.append(make_dynamic_cache(part))
        else:
            raise TypeError(
                f"make_encoder_decoder_cache: {name} must be a Cache or a list of (key, value) "
                f"pairs, got {type(part).__name__}."
            )
    return EncoderDecoderCache(*caches)
