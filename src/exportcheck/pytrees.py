"""transformers caches as torch pytree nodes, inside a reversible context.

``torch.export`` only accepts inputs it can flatten into tensors. transformers does
not register its cache classes, so exporting a model called with a cache fails with
``Cannot associate shape ... to non-tensor type <class '...DynamicCache'>``.
:func:`cache_pytrees` registers them for the duration of a ``with`` block.

Flattened layout (stable: the key paths become input names of the exported graph)::

    DynamicCache         -> [key_cache: [k_0, ..., k_{L-1}], value_cache: [v_0, ..., v_{L-1}]]
                            key paths: cache.key_cache[i], cache.value_cache[i]
    EncoderDecoderCache  -> [self_attention_cache: DynamicCache, cross_attention_cache: DynamicCache]

The context keeps the class and parameters of every layer (for example the window
of a ``DynamicSlidingWindowLayer``), so unflattening rebuilds the same layer kinds.

Unflattening assigns tensors to the layers directly. Rebuilding through
``cache.update()`` would work for ``torch.export.export`` but break
``run_decompositions()`` and ``torch.onnx.export`` with
``Constant tensor lifted_tensor_N is not in the constants dictionary``: the layer's
lazy initialisation allocates ``torch.tensor([])`` while tracing.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from typing import Any

import torch.fx._pytree as fx_pytree
import torch.utils._pytree as pytree

from .caches import fill_layer

__all__ = ["cache_pytrees", "registered_cache_classes"]

# Layer classes the flatten functions know how to rebuild, with the constructor
# arguments to keep in the context.
_LAYER_PARAMETERS: dict[str, tuple[str, ...]] = {
    "DynamicLayer": (),
    "DynamicSlidingWindowLayer": ("sliding_window",),
}


def _layer_class(name: str) -> type:
    import transformers.cache_utils as cu

    cls = getattr(cu, name, None)
    if cls is None:
        raise ValueError(
            f"cache_pytrees: this transformers has no cache layer class {name!r}; the "
            "ExportedProgram was probably saved with another transformers version."
        )
    return cls


def _describe_layer(i: int, layer: Any) -> tuple[str, tuple[tuple[str, Any], ...]]:
    name = type(layer).__name__
    if name not in _LAYER_PARAMETERS:
        raise ValueError(
            f"cache_pytrees: layer {i} of the cache is a {name}, which exportcheck cannot "
            f"flatten yet (known layers: {', '.join(sorted(_LAYER_PARAMETERS))})."
        )
    if not getattr(layer, "is_initialized", False) or layer.keys is None:
        raise ValueError(
            f"cache_pytrees: layer {i} of the cache is empty; build the cache with "
            "exportcheck.make_dynamic_cache or run the model once to fill it."
        )
    return name, tuple((p, getattr(layer, p)) for p in _LAYER_PARAMETERS[name])


def _flatten_dynamic_cache(cache: Any) -> tuple[list[Any], Any]:
    layers = tuple(_describe_layer(i, layer) for i, layer in enumerate(cache.layers))
    replicate = cache.layer_class_to_replicate
    context = (layers, None if replicate is None else replicate.__name__)
    children = [[layer.keys for layer in cache.layers], [layer.values for layer in cache.layers]]
    return children, context


def _flatten_with_keys_dynamic_cache(cache: Any) -> tuple[list[tuple[Any, Any]], Any]:
    children, context = _flatten_dynamic_cache(cache)
    names = ("key_cache", "value_cache")
    return [(pytree.MappingKey(n), c) for n, c in zip(names, children, strict=True)], context


def _unflatten_dynamic_cache(children: Any, context: Any) -> Any:
    from transformers.cache_utils import DynamicCache

    keys, values = children
    layers_desc, replicate = context
    layers = []
    for (name, params), key, value in zip(layers_desc, keys, values, strict=True):
        layer = _layer_class(name)(**dict(params))
        layers.append(fill_layer(layer, key, value))
    cache = DynamicCache()
    cache.layers = layers
    cache.layer_class_to_replicate = None if replicate is None else _layer_class(replicate)
    return cache


def _dynamic_cache_to_json(context: Any) -> str:
    layers, replicate = context
    return json.dumps(
        {"layers": [[name, dict(params)] for name, params in layers], "replicate": replicate}
    )


def _dynamic_cache_from_json(text: str) -> Any:
    data = json.loads(text)
    layers = tuple((name, tuple(params.items())) for name, params in data["layers"])
    return layers, data["replicate"]


def _flatten_spec_dynamic_cache(cache: Any, spec: pytree.TreeSpec) -> list[Any]:
    children, _ = _flatten_dynamic_cache(cache)
    return children


def _flatten_encoder_decoder_cache(cache: Any) -> tuple[list[Any], Any]:
    return [cache.self_attention_cache, cache.cross_attention_cache], None


def _flatten_with_keys_encoder_decoder_cache(cache: Any) -> tuple[list[tuple[Any, Any]], Any]:
    children, context = _flatten_encoder_decoder_cache(cache)
    names = ("self_attention_cache", "cross_attention_cache")
    return [(pytree.MappingKey(n), c) for n, c in zip(names, children, strict=True)], context


def _unflatten_encoder_decoder_cache(children: Any, context: Any) -> Any:
    from transformers.cache_utils import EncoderDecoderCache

    return EncoderDecoderCache(*children)


def _flatten_spec_encoder_decoder_cache(cache: Any, spec: pytree.TreeSpec) -> list[Any]:
    children, _ = _flatten_encoder_decoder_cache(cache)
    return children


def _registrations() -> list[dict[str, Any]]:
    from transformers import cache_utils as cu

    return [
        dict(
            cls=cu.DynamicCache,
            flatten_fn=_flatten_dynamic_cache,
            unflatten_fn=_unflatten_dynamic_cache,
            flatten_with_keys_fn=_flatten_with_keys_dynamic_cache,
            serialized_type_name="transformers.cache_utils.DynamicCache",
            to_dumpable_context=_dynamic_cache_to_json,
            from_dumpable_context=_dynamic_cache_from_json,
            flatten_spec=_flatten_spec_dynamic_cache,
        ),
        dict(
            cls=cu.EncoderDecoderCache,
            flatten_fn=_flatten_encoder_decoder_cache,
            unflatten_fn=_unflatten_encoder_decoder_cache,
            flatten_with_keys_fn=_flatten_with_keys_encoder_decoder_cache,
            serialized_type_name="transformers.cache_utils.EncoderDecoderCache",
            to_dumpable_context=None,
            from_dumpable_context=None,
            flatten_spec=_flatten_spec_encoder_decoder_cache,
        ),
    ]


def registered_cache_classes() -> list[type]:
    """The cache classes that :func:`cache_pytrees` registers.

    >>> [c.__name__ for c in registered_cache_classes()]
    ['DynamicCache', 'EncoderDecoderCache']
    """
    return [r["cls"] for r in _registrations()]


# Every registry that a registration touches. They are saved on entry and restored
# on exit, so that the context leaves torch exactly as it found it, including a
# registration made beforehand by someone else.
def _registries() -> list[Any]:
    return [
        pytree.SUPPORTED_NODES,
        pytree.SUPPORTED_SERIALIZED_TYPES,
        pytree.SERIALIZED_TYPE_TO_PYTHON_TYPE,
        fx_pytree.SUPPORTED_NODES,
        fx_pytree.SUPPORTED_NODES_EXACT_MATCH,
    ]


@contextlib.contextmanager
def cache_pytrees() -> Iterator[None]:
    """Register transformers cache classes as torch pytree nodes inside a ``with`` block.

    On exit the pytree registries are restored to what they were on entry. Nesting is
    allowed.

    >>> import torch
    >>> import torch.utils._pytree as pytree
    >>> from exportcheck import cache_pytrees, make_dynamic_cache
    >>> cache = make_dynamic_cache([(torch.rand(2, 1, 3, 4), torch.rand(2, 1, 3, 4))])
    >>> with cache_pytrees():
    ...     leaves, spec = pytree.tree_flatten(cache)
    >>> len(leaves)
    2
    """
    saved = [dict(r) for r in _registries()]
    try:
        for reg in _registrations():
            cls = reg["cls"]
            # Replace any earlier registration of the class (ours when nested, or
            # someone else's); the saved registries bring it back on exit.
            for r in _registries():
                if r is pytree.SERIALIZED_TYPE_TO_PYTHON_TYPE:
                    continue
                r.pop(cls, None)
            pytree.SERIALIZED_TYPE_TO_PYTHON_TYPE.pop(reg["serialized_type_name"], None)
            pytree._private_register_pytree_node(
                cls,
                reg["flatten_fn"],
                reg["unflatten_fn"],
                serialized_type_name=reg["serialized_type_name"],
                to_dumpable_context=reg["to_dumpable_context"],
                from_dumpable_context=reg["from_dumpable_context"],
                flatten_with_keys_fn=reg["flatten_with_keys_fn"],
            )
            fx_pytree.register_pytree_flatten_spec(cls, reg["flatten_spec"])
        yield
    finally:
        for registry, content in zip(_registries(), saved, strict=True):
            registry.clear()
            registry.update(content)
