"""transformers caches as torch pytree nodes, inside a reversible context.

``torch.export`` only accepts inputs it can flatten into tensors. transformers does
not register its cache classes, so exporting a model called with a cache fails with
``Cannot associate shape ... to non-tensor type <class '...DynamicCache'>``.
:func:`cache_pytrees` registers every cache class for the duration of a ``with``
block and restores the registries on exit.

**Flattened layout.** A cache made of layers (``DynamicCache``, ``StaticCache`` and any
other subclass of ``transformers.Cache`` that keeps a ``layers`` list) flattens into
one list per *slot*, each list holding one entry per layer::

    [key_cache:   [layer 0 keys,   layer 1 keys,   ...],
     value_cache: [layer 0 values, layer 1 values, ...],
     <other slots, sorted by name>: [...]]

* ``key_cache`` and ``value_cache`` are always first. A cache of plain attention
  layers has only these two, so its dynamic shapes are
  ``[[{0: batch, 2: length}] * L, [{0: batch, 2: length}] * L]``.
* Other slots are the tensor attributes of layers that have them, under the
  attribute's name: ``conv_states`` and ``recurrent_states`` (linear attention; one
  list per layer, one entry per state index), ``indexer_keys``, ``cumulative_length``
  (static layers), ``prefill_keys`` and ``prefill_values`` (a reference sliding-window
  layer's prompt, beside its window: :func:`register_length_slot`), ...
* A layer without a tensor in a slot (a linear-attention layer has no keys, a
  shared-KV layer is empty) has ``()`` there: an empty tuple flattens to no leaf (unlike
  ``None``, which is a leaf for torch pytrees), so the index in every list is the
  layer index and every leaf is a tensor.

Leaves come in that order: all ``key_cache`` entries, then all ``value_cache``
entries, then the other slots. Their key paths, which ``torch.export`` turns into input
names, are ``cache['key_cache'][i]`` (input ``cache_key_cache_i``),
``cache['value_cache'][i]``, ``cache['conv_states'][i][j]``...

``EncoderDecoderCache`` flattens into ``[self_attention_cache, cross_attention_cache]``.

**Context.** The context keeps the class of the cache and of every layer and their
plain attributes (window sizes, maximum lengths, flags such as ``has_previous_state``).
Counters that change at every step (``cumulative_length`` of sliding-window layers)
are not kept: they are recomputed from the tensors, so that the exported program
accepts caches of any length; so are those declared with a slot
(:func:`register_length_slot`: the length of a reference sliding-window layer's prompt).

**Unflattening never calls** ``update()`` **nor a layer's constructor**. Both allocate
tensors (``torch.tensor([])`` in the lazy initialisation), and a tensor allocated
while tracing becomes a lifted constant that breaks ``run_decompositions()`` and
``torch.onnx.export`` with ``Constant tensor lifted_tensor_N is not in the constants
dictionary``. Layers are rebuilt with ``__new__`` and attribute assignments.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
import torch.fx._pytree as fx_pytree
import torch.utils._pytree as pytree

__all__ = [
    "cache_dynamic_shapes",
    "cache_pytrees",
    "register_derived_counter",
    "register_length_slot",
    "register_state_class",
    "register_token_axis_slot",
    "registered_cache_classes",
]


def register_derived_counter(counter: str, source: str) -> None:
    """Declare that a layer attribute ``counter`` (a dict of ints) holds, for each key,
    dimension 1 of the tensor under the same key in the dict attribute ``source``:
    it is then recomputed on unflatten instead of frozen into the context."""
    _DICT_COUNTERS[counter] = source


def register_length_slot(slot: str, beside: str, counters: tuple[str, ...] = ()) -> None:
    """Declare that a layer's tensor attribute ``slot`` holds states ``(batch, heads,
    length, head_dim)`` kept apart from its ``keys`` or ``values`` (``beside``), such as the
    prompt's states a reference sliding-window layer keeps out of its window.

    Dimension 2 of ``slot`` then gets ``length`` in :func:`cache_dynamic_shapes`; the int
    attributes ``counters`` are recomputed from that dimension on unflatten when they
    equal it (else they stay in the context); and ``beside``, while it is still the
    empty 1-D tensor of the lazy initialization (no token outside ``slot`` yet), flattens
    as ``slot[:, :, :0]``, ``(batch, heads, 0, head_dim)``, the rank it has once filled."""
    _LENGTH_SLOTS[slot] = (beside, tuple(counters))
    for counter in counters:
        _LENGTH_COUNTERS[counter] = slot


def register_token_axis_slot(slot: str) -> None:
    """Declare that dimension 1 of the tensors of a dict slot grows with the tokens seen,
    but not as a linear function of the cache length: it gets a ``Dim.AUTO`` of its own
    in :func:`cache_dynamic_shapes`."""
    _TOKEN_AXIS_SLOTS.add(slot)


@dataclasses.dataclass(frozen=True)
class StateRule:
    """How to flatten a model's own state class, one that is not a ``transformers.Cache``
    (see :func:`register_state_class`)."""

    module: str
    name: str
    flatten: Callable[[Any], tuple[list[tuple[str, Any]], Any]]
    unflatten: Callable[[list[Any], Any], Any]
    dynamic_shapes: Callable[[Any, Any, Any], Any]


def register_state_class(
    module: str,
    name: str,
    *,
    flatten: Callable[[Any], tuple[list[tuple[str, Any]], Any]],
    unflatten: Callable[[list[Any], Any], Any],
    dynamic_shapes: Callable[[Any, Any, Any], Any],
) -> None:
    """Declare a state class that is not a ``transformers.Cache`` (a model's own recurrent
    state): :func:`cache_pytrees` then registers it as well, and
    :func:`cache_dynamic_shapes` asks ``dynamic_shapes(state, batch, length)`` for its spec.

    :param module: the module that defines the class; it is looked up in ``sys.modules``
        when :func:`cache_pytrees` is entered, so registering never imports the model
    :param name: the class name in that module
    :param flatten: ``state -> ([(child name, child), ...], context)``; the context must be
        hashable and comparable, the children nested lists or tuples of tensors
    :param unflatten: ``(children, context) -> state``; it must not allocate tensors (see
        the module documentation)
    :param dynamic_shapes: ``(state, batch, length) -> spec`` in the layout of the children
    """
    _STATE_RULES[(module, name)] = StateRule(module, name, flatten, unflatten, dynamic_shapes)


#: (module, class name) -> StateRule, filled by the model families that have such a state
_STATE_RULES: dict[tuple[str, str], StateRule] = {}


def _state_classes() -> list[tuple[type, StateRule]]:
    """The registered state classes whose module is imported."""
    import sys

    found = []
    for (module, name), rule in sorted(_STATE_RULES.items()):
        cls = getattr(sys.modules.get(module), name, None)
        if isinstance(cls, type):
            found.append((cls, rule))
    return found


def _state_rule(value: Any) -> StateRule | None:
    cls = type(value)
    return _STATE_RULES.get((cls.__module__, cls.__name__))


def _state_registration(rule: StateRule) -> dict[str, Any]:
    def flatten(state: Any) -> tuple[list[Any], Any]:
        named, context = rule.flatten(state)
        return [child for _, child in named], (tuple(n for n, _ in named), context)

    def flatten_with_keys(state: Any) -> tuple[list[tuple[Any, Any]], Any]:
        named, context = rule.flatten(state)
        keyed = [(pytree.MappingKey(n), child) for n, child in named]
        return keyed, (tuple(n for n, _ in named), context)

    def unflatten(children: Any, context: Any) -> Any:
        return rule.unflatten(list(children), context[1])

    def flatten_spec(state: Any, spec: pytree.TreeSpec) -> list[Any]:
        return flatten(state)[0]

    return dict(
        flatten_fn=flatten,
        unflatten_fn=unflatten,
        flatten_with_keys_fn=flatten_with_keys,
        to_dumpable_context=None,
        from_dumpable_context=None,
        flatten_spec=flatten_spec,
    )


_FIRST_SLOTS = ("keys", "values")
_SLOT_NAMES = {"keys": "key_cache", "values": "value_cache"}
_ATTRIBUTE_OF_SLOT = {v: k for k, v in _SLOT_NAMES.items()}
# Counters recomputed on unflatten instead of being frozen into the context.
_COUNTERS = ("cumulative_length", "cumulative_length_int")
# Per-name counters derived from a dict of tensors (``counter[name] ==
# source[name].shape[1]``), recomputed on unflatten; and dict slots whose dimension 1
# grows with the tokens seen but is not a linear function of the cache length. Both
# are filled by the model families that have them (register_derived_counter,
# register_token_axis_slot).
_DICT_COUNTERS: dict[str, str] = {}
_TOKEN_AXIS_SLOTS: set[str] = set()
# Slots of states kept apart from the keys and values, their dimension 2 counted in the
# cache length: slot -> (the keys or values beside it, its counters); and counter -> slot
# (register_length_slot).
_LENGTH_SLOTS: dict[str, tuple[str, tuple[str, ...]]] = {}
_LENGTH_COUNTERS: dict[str, str] = {}
_PLAIN = (bool, int, float, str, type(None))
_ABSENT = ()  # the entry of a layer that has no tensor in a slot


def _is_absent(value: Any) -> bool:
    return isinstance(value, tuple) and len(value) == 0


def _is_plain(value: Any) -> bool:
    if isinstance(value, _PLAIN):
        return True
    if isinstance(value, tuple | list):
        return all(_is_plain(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, _PLAIN) and _is_plain(v) for k, v in value.items())
    return False


def _freeze(value: Any) -> Any:
    """Plain value -> hashable, JSON-friendly value."""
    if isinstance(value, dict):
        return ("__dict__", tuple((k, _freeze(v)) for k, v in value.items()))
    if isinstance(value, list | tuple):
        return ("__list__", tuple(_freeze(v) for v in value))
    return value


def _thaw(value: Any) -> Any:
    if isinstance(value, tuple | list) and len(value) == 2 and value[0] == "__dict__":
        return {k: _thaw(v) for k, v in value[1]}
    if isinstance(value, tuple | list) and len(value) == 2 and value[0] == "__list__":
        return [_thaw(v) for v in value[1]]
    return value


def _is_tensor_dict(value: Any) -> bool:
    return (
        isinstance(value, dict)
        and len(value) > 0
        and (all(isinstance(k, int) for k in value) or all(isinstance(k, str) for k in value))
        and all(v is None or isinstance(v, torch.Tensor) for v in value.values())
        and any(isinstance(v, torch.Tensor) for v in value.values())
    )


def _is_batch_size(layer: Any, name: str, value: Any) -> bool:
    """Static layers remember the batch size: it is read back from the keys on unflatten."""
    return (
        name == "batch_size"
        and isinstance(value, int | torch.SymInt)
        and isinstance(getattr(layer, "keys", None), torch.Tensor)
    )


def _is_step_counter(layer: Any, name: str, value: Any) -> bool:
    """Python-int counters of dynamic layers, recomputed from the tensors on unflatten."""
    return (
        name in _COUNTERS
        and isinstance(value, int | torch.SymInt)
        and not isinstance(value, bool)
        and not hasattr(layer, "max_cache_len")
    )


def _is_dict_counter(layer: Any, name: str, value: Any) -> bool:
    """``entry_count``: one count per name, equal to the length of a dict of tensors."""
    source = getattr(layer, _DICT_COUNTERS.get(name, ""), None)
    if not (isinstance(value, dict) and isinstance(source, dict) and set(value) == set(source)):
        return False
    for key, count in value.items():
        tensor = source[key]
        length = tensor.shape[1] if isinstance(tensor, torch.Tensor) and tensor.dim() > 1 else 0
        if type(count) is int and type(length) is int and count != length:
            return False  # not derivable: kept in the context (a SymInt under tracing is)
        if not isinstance(count, int | torch.SymInt) or isinstance(count, bool):
            return False
    return True


def _is_length_counter(layer: Any, name: str, value: Any) -> bool:
    """An int counter of the length of a slot declared by :func:`register_length_slot`."""
    source = getattr(layer, _LENGTH_COUNTERS.get(name, ""), None)
    return (
        isinstance(source, torch.Tensor)
        and source.dim() >= 3
        and isinstance(value, int | torch.SymInt)
        and not isinstance(value, bool)
    )


def _length(tensor: Any) -> Any:
    """Dimension -2 of keys or values; 0 for the empty 1-D tensor of a lazy initialization."""
    return tensor.shape[-2] if tensor.dim() >= 2 else 0


def _dict_counter(layer: Any, name: str) -> dict[Any, Any]:
    source = getattr(layer, _DICT_COUNTERS[name])
    return {
        k: v.shape[1] if isinstance(v, torch.Tensor) and v.dim() > 1 else 0
        for k, v in source.items()
    }


def _split_layer(i: int, layer: Any) -> tuple[dict[str, Any], tuple[Any, ...]]:
    """Returns the data slots of a layer and the description kept in the context."""
    slots: dict[str, Any] = {}
    plain: list[tuple[str, Any]] = []
    counters: list[str] = []
    for name, value in vars(layer).items():
        if (
            _is_step_counter(layer, name, value)
            or _is_batch_size(layer, name, value)
            or _is_dict_counter(layer, name, value)
            or _is_length_counter(layer, name, value)
        ):
            counters.append(name)
        elif isinstance(value, torch.Tensor):
            if name.startswith("_"):
                continue  # derived constants such as _sliding_window_tensor
            slots[name] = value
        elif _is_tensor_dict(value):
            slots[name] = value
        elif isinstance(value, torch.device):
            plain.append((name, ("__device__", str(value))))
        elif isinstance(value, torch.dtype):
            plain.append((name, ("__dtype__", str(value).replace("torch.", ""))))
        elif _is_plain(value):
            plain.append((name, _freeze(value)))
        else:
            raise ValueError(
                f"cache_pytrees: layer {i} ({type(layer).__name__}) has an attribute "
                f"{name!r} of type {type(value).__name__} that cannot be flattened; "
                "please report this layer class."
            )
    for slot, (beside, _) in _LENGTH_SLOTS.items():
        held, empty = slots.get(slot), slots.get(beside)
        if (
            isinstance(held, torch.Tensor)
            and held.dim() == 4
            and isinstance(empty, torch.Tensor)
            and empty.dim() == 1
            and empty.numel() == 0
        ):
            # nothing beside the slot yet: a leaf of the rank it has once filled, so that
            # the exported program takes the same leaves before and after
            slots[beside] = held[:, :, :0]
    dict_slots = tuple(
        sorted((n, tuple(sorted(v))) for n, v in slots.items() if isinstance(v, dict))
    )
    desc = (type(layer).__name__, type(layer).__module__, tuple(plain), dict_slots, tuple(counters))
    return slots, desc


def _rebuild_plain(value: Any) -> Any:
    if isinstance(value, tuple) and len(value) == 2 and value[0] == "__device__":
        return torch.device(value[1])
    if isinstance(value, tuple) and len(value) == 2 and value[0] == "__dtype__":
        return getattr(torch, value[1])
    return _thaw(value)


def _find_class(name: str, module: str) -> type:
    import importlib

    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise ValueError(
            f"cache_pytrees: cannot find class {name} in {module} ({e}); the program was "
            "probably saved with another transformers version."
        ) from e
    return cls


def _slot_order(all_slots: Iterable[str]) -> list[str]:
    names = set(all_slots)
    first = [s for s in _FIRST_SLOTS if s in names]
    # key_cache and value_cache are always present so that the layout never changes
    # for plain attention caches, even if every layer is empty.
    return list(_FIRST_SLOTS) + sorted(names - set(first) - set(_FIRST_SLOTS))


def _flatten_layered_cache(cache: Any) -> tuple[list[Any], Any]:
    split = [_split_layer(i, layer) for i, layer in enumerate(cache.layers)]
    reference = _reference_length(cache.layers)
    for i, (layer, (slots, desc)) in enumerate(zip(cache.layers, split, strict=True)):
        # A counter is dropped only if unflatten can recompute it. An all-sliding cache
        # longer than its window cannot: its counter stays in the context, and the
        # exported program then only accepts caches that saw as many tokens.
        keep = [
            c
            for c in desc[4]
            if c != "batch_size"
            and c not in _DICT_COUNTERS
            and type(getattr(layer, c)) is int  # a SymInt under tracing is derived
            and type(_derived(layer, c, reference)) is int
            and getattr(layer, c) != _derived(layer, c, reference)
        ]
        if keep:
            plain = desc[2] + tuple((c, getattr(layer, c)) for c in keep)
            counters = tuple(c for c in desc[4] if c not in keep)
            split[i] = (slots, (*desc[:2], plain, desc[3], counters))
    order = _slot_order(name for slots, _ in split for name in slots)
    children = []
    for attr in order:
        entries = []
        for slots, _ in split:
            value = slots.get(attr)
            if isinstance(value, dict):
                value = [() if value[k] is None else value[k] for k in sorted(value)]
            # None is a leaf for torch pytrees; () has no leaf at all.
            entries.append(_ABSENT if value is None else value)
        children.append(entries)
    cache_plain = []
    cache_slots = []
    for name, value in vars(cache).items():
        if name == "layers":
            continue
        if _is_tensor_list(value):
            # A list per layer kept by the cache itself (MiniMaxCache.linear_cache).
            cache_slots.append(name)
            children.append([v if isinstance(v, torch.Tensor) else _ABSENT for v in value])
        elif isinstance(value, type):
            cache_plain.append((name, ("__class__", value.__name__, value.__module__)))
        elif _is_plain(value):
            cache_plain.append((name, _freeze(value)))
        else:
            raise ValueError(
                f"cache_pytrees: {type(cache).__name__} has an attribute {name!r} of type "
                f"{type(value).__name__} that cannot be flattened (offloading caches cannot "
                "be exported)."
            )
    context = (
        type(cache).__name__,
        type(cache).__module__,
        tuple(cache_plain),
        tuple(_SLOT_NAMES.get(a, a) for a in order) + tuple(cache_slots),
        tuple(desc for _, desc in split),
        len(cache_slots),
    )
    return children, context


def _is_tensor_list(value: Any) -> bool:
    """A list of tensors where missing entries are empty lists."""
    return (
        isinstance(value, list)
        and any(isinstance(v, torch.Tensor) for v in value)
        and all(isinstance(v, torch.Tensor) or (isinstance(v, list) and not v) for v in value)
    )


def _flatten_with_keys_layered_cache(cache: Any) -> tuple[list[tuple[Any, Any]], Any]:
    children, context = _flatten_layered_cache(cache)
    return [(pytree.MappingKey(n), c) for n, c in zip(context[3], children, strict=True)], context


def _reference_length(layers: list[Any]) -> Any:
    """Tokens seen so far: the length of the first full-attention layer, if any."""
    for layer in layers:
        keys = getattr(layer, "keys", None)
        if isinstance(keys, torch.Tensor) and not getattr(layer, "is_sliding", False):
            return _length(keys)
    return None


def _expected_count(layer: Any, reference: Any) -> Any:
    """The value unflatten gives to a step counter of ``layer``."""
    if reference is not None:
        return reference
    keys = getattr(layer, "keys", None)
    return _length(keys) if isinstance(keys, torch.Tensor) else 0


def _derived(layer: Any, counter: str, reference: Any) -> Any:
    """The value unflatten gives to ``counter``, a step counter or a length counter."""
    if counter in _LENGTH_COUNTERS:
        return _length(getattr(layer, _LENGTH_COUNTERS[counter]))
    return _expected_count(layer, reference)


def _unflatten_layered_cache(children: Any, context: Any) -> Any:
    cls_name, cls_module, cache_plain, slot_names, layer_descs, n_cache_slots = context
    n_layer_slots = len(slot_names) - n_cache_slots
    layers = []
    for i, (name, module, plain, dict_slots, _) in enumerate(layer_descs):
        layer_cls = _find_class(name, module)
        layer = layer_cls.__new__(layer_cls)
        for attr, value in plain:
            setattr(layer, attr, _rebuild_plain(value))
        dict_keys = dict(dict_slots)
        for slot, entries in zip(
            slot_names[:n_layer_slots], list(children)[:n_layer_slots], strict=True
        ):
            attr = _ATTRIBUTE_OF_SLOT.get(slot, slot)
            value = None if _is_absent(entries[i]) else entries[i]
            if attr in dict_keys and value is not None:
                value = {
                    k: None if _is_absent(v) else v
                    for k, v in zip(dict_keys[attr], value, strict=True)
                }
            if value is not None:
                setattr(layer, attr, value)
        layers.append(layer)
    # Sliding-window layers keep at most window - 1 tokens: the number of tokens seen
    # comes from a full-attention layer when the cache has one.
    reference = _reference_length(layers)
    for layer, desc in zip(layers, layer_descs, strict=True):
        for counter in desc[4]:
            if counter == "batch_size":
                layer.batch_size = layer.keys.shape[0]
            elif counter in _DICT_COUNTERS:
                setattr(layer, counter, _dict_counter(layer, counter))
            else:
                setattr(layer, counter, _derived(layer, counter, reference))
    cls = _find_class(cls_name, cls_module)
    cache = cls.__new__(cls)
    if n_cache_slots:
        for name, entries in zip(
            slot_names[-n_cache_slots:], children[-n_cache_slots:], strict=True
        ):
            setattr(cache, name, [[] if _is_absent(v) else v for v in entries])
    for attr, value in cache_plain:
        if isinstance(value, tuple) and len(value) == 3 and value[0] == "__class__":
            value = _find_class(value[1], value[2])
        else:
            value = _thaw(value)
        setattr(cache, attr, value)
    cache.layers = layers
    return cache


def _layered_to_json(context: Any) -> str:
    return json.dumps(context)


def _layered_from_json(text: str) -> Any:
    def tuplify(x: Any) -> Any:
        return tuple(tuplify(v) for v in x) if isinstance(x, list) else x

    return tuplify(json.loads(text))


def _flatten_spec_layered_cache(cache: Any, spec: pytree.TreeSpec) -> list[Any]:
    children, _ = _flatten_layered_cache(cache)
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


def _all_subclasses(cls: type) -> list[type]:
    seen: list[type] = []
    stack = [cls]
    while stack:
        for sub in stack.pop().__subclasses__():
            if sub not in seen:
                seen.append(sub)
                stack.append(sub)
    return seen


def registered_cache_classes() -> list[type]:
    """The cache classes that :func:`cache_pytrees` registers when entered now.

    Every subclass of ``transformers.Cache`` imported so far: model files that define
    their own cache class register it when the model is imported.

    >>> names = [c.__name__ for c in registered_cache_classes()]
    >>> "DynamicCache" in names and "EncoderDecoderCache" in names
    True
    """
    from transformers.cache_utils import Cache

    return sorted(_all_subclasses(Cache), key=lambda c: (c.__module__, c.__name__))


def _registration(cls: type) -> dict[str, Any]:
    from transformers.cache_utils import EncoderDecoderCache

    if issubclass(cls, EncoderDecoderCache):
        return dict(
            flatten_fn=_flatten_encoder_decoder_cache,
            unflatten_fn=_unflatten_encoder_decoder_cache,
            flatten_with_keys_fn=_flatten_with_keys_encoder_decoder_cache,
            to_dumpable_context=None,
            from_dumpable_context=None,
            flatten_spec=_flatten_spec_encoder_decoder_cache,
        )
    return dict(
        flatten_fn=_flatten_layered_cache,
        unflatten_fn=_unflatten_layered_cache,
        flatten_with_keys_fn=_flatten_with_keys_layered_cache,
        to_dumpable_context=_layered_to_json,
        from_dumpable_context=_layered_from_json,
        flatten_spec=_flatten_spec_layered_cache,
    )


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

    Every subclass of ``transformers.Cache`` imported when the block starts is
    registered (see :func:`registered_cache_classes`), and so is every state class a model
    family declared with :func:`register_state_class`. On exit the pytree registries
    are restored to what they were on entry, even after an exception. Nesting is
    allowed. Only the Python pytree registry is used, the one ``torch.export`` reads.

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
        classes = [(cls, _registration(cls)) for cls in registered_cache_classes()]
        classes += [(cls, _state_registration(rule)) for cls, rule in _state_classes()]
        for cls, reg in classes:
            serialized_name = f"{cls.__module__}.{cls.__qualname__}"
            # Replace any earlier registration of the class (ours when nested, or
            # someone else's); the saved registries bring it back on exit.
            for r in _registries():
                if r is not pytree.SERIALIZED_TYPE_TO_PYTHON_TYPE:
                    r.pop(cls, None)
            pytree.SERIALIZED_TYPE_TO_PYTHON_TYPE.pop(serialized_name, None)
            pytree._private_register_pytree_node(
                cls,
                reg["flatten_fn"],
                reg["unflatten_fn"],
                serialized_type_name=serialized_name,
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


def _check_dim(name: str, value: Any) -> None:
    from torch.export.dynamic_shapes import Dim, _DimHint

    if value is None or isinstance(value, int | Dim | _DimHint):
        return
    raise TypeError(
        f"cache_dynamic_shapes: {name} must be a torch.export.Dim, Dim.DYNAMIC, Dim.AUTO, "
        f"Dim.STATIC, an int or None, got {type(value).__name__}."
    )


def cache_dynamic_shapes(
    cache: Any,
    batch: Any = torch.export.Dim.DYNAMIC,
    length: Any = torch.export.Dim.DYNAMIC,
    sliding_length: Any = torch.export.Dim.AUTO,
) -> Any:
    """The dynamic-shape spec of a cache, in the layout :func:`cache_pytrees` flattens it to.

    :param cache: the cache passed to the model at export time
    :param batch: dimension 0 of every tensor of the cache
    :param length: dimension 2 of the keys and values of full-attention layers
    :param sliding_length: the same for sliding-window layers, which stop growing at
        the window size, so they get their own dimension; ``Dim.AUTO`` by default,
        since the model's code behaves differently below and at the window size and
        export then restricts the range to one side of it
    :return: nested lists matching the flattened cache; pass it as the cache's entry in
        ``dynamic_shapes``

    Linear-attention states (``conv_states``, ``recurrent_states``) have a fixed size:
    only their batch dimension is dynamic.

    >>> import torch
    >>> from exportcheck import cache_dynamic_shapes, make_dynamic_cache
    >>> cache = make_dynamic_cache([(torch.rand(2, 1, 3, 4), torch.rand(2, 1, 3, 4))])
    >>> batch, length = torch.export.Dim("batch"), torch.export.Dim("length")
    >>> cache_dynamic_shapes(cache, batch, length)
    [[{0: Dim('batch', min=0), 2: Dim('length', min=0)}], [{0: Dim('batch', min=0), 2: Dim('length', min=0)}]]
    """
    from transformers.cache_utils import Cache, EncoderDecoderCache

    for name, value in (("batch", batch), ("length", length), ("sliding_length", sliding_length)):
        _check_dim(name, value)
    if isinstance(cache, EncoderDecoderCache):
        return [
            cache_dynamic_shapes(cache.self_attention_cache, batch, length, sliding_length),
            # The encoder's length is not the decoder's.
            cache_dynamic_shapes(
                cache.cross_attention_cache,
                batch,
                torch.export.Dim.DYNAMIC,
                torch.export.Dim.DYNAMIC,
            ),
        ]
    rule = _state_rule(cache)
    if rule is not None:  # a model's own state class (register_state_class)
        return rule.dynamic_shapes(cache, batch, length)
    if not isinstance(cache, Cache) or not isinstance(getattr(cache, "layers", None), list):
        raise TypeError(
            "cache_dynamic_shapes: expected a transformers cache with layers (DynamicCache, "
            f"StaticCache, EncoderDecoderCache, ...), got {type(cache).__name__}."
        )
    children, context = _flatten_layered_cache(cache)
    slot_names = context[3]

    def spec_of(slot: str, layer: Any, value: Any) -> Any:
        if _is_absent(value):
            return _ABSENT
        if isinstance(value, list):  # states of a linear-attention layer
            return [spec_of(slot, layer, v) for v in value]
        if value.dim() == 0:
            return None
        if slot == "indexer_keys" and value.dim() == 3:  # (batch, length, dim)
            return {0: batch, 1: length}
        if slot == "indexer_position_ids" and value.dim() == 3:  # (dims, batch, length)
            return {1: batch, 2: length}
        if slot in _LENGTH_SLOTS and value.dim() == 4:  # (batch, heads, length, head_dim)
            return {0: batch, 2: length}
        if slot in _TOKEN_AXIS_SLOTS and value.dim() == 3:  # (batch, tokens or windows, dim)
            # a dimension of their own, AUTO since export restricts it to what the
            # model allows
            return {0: batch, 1: torch.export.Dim.AUTO}
        if slot in ("key_cache", "value_cache") and value.dim() >= 3:
            if hasattr(layer, "max_cache_len"):  # static layers do not grow
                return {0: batch}
            window = sliding_length if getattr(layer, "is_sliding", False) else length
            return {0: batch, 2: window}
        return {0: batch}

    n_layer_slots = len(slot_names) - context[5]
    layer_specs = [
        [spec_of(slot, layer, value) for layer, value in zip(cache.layers, entries, strict=True)]
        for slot, entries in zip(slot_names[:n_layer_slots], children[:n_layer_slots], strict=True)
    ]
    cache_specs = [[spec_of("", None, v) for v in entries] for entries in children[n_layer_slots:]]
    return layer_specs + cache_specs
