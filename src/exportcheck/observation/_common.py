"""What recording, inference and checking share: input keys, absence, copies, cells."""

from __future__ import annotations

import copy
import dataclasses
import sys
from collections.abc import Iterable
from typing import Any

import torch
import torch.utils._pytree as pytree

from ..caches.pytrees import cache_pytrees
from ..describe import string_type

BATCH, SEQ, CACHE = "batch", "seq_length", "cache_length"


# Inputs whose dimension 0 is the batch and whose given axis is the sequence.
_SEQ_AXIS = {
    "input_ids": -1,
    "decoder_input_ids": -1,
    "token_type_ids": -1,
    "position_ids": -1,
    "inputs_embeds": 1,
    "decoder_inputs_embeds": 1,
}


_MAIN_INPUTS = ("input_ids", "inputs_embeds", "decoder_input_ids", "decoder_inputs_embeds")


_MASKS = ("attention_mask", "decoder_attention_mask")


_CACHE_PARAMETERS = ("cache", "past_key_values")


_MAX = {BATCH: 1024, SEQ: 4096, CACHE: 4096}


# The label of a dimension that covers cached and new tokens.
_SUM = "seq_length + cache_length"


_DYNAMIC = "dynamic"


_MISSING = object()


# An input is a key: (parameter,), (var-positional parameter, index) or
# (var-keyword parameter, name).
Key = tuple


def _name(key: Key) -> str:
    if len(key) == 1:
        return key[0]
    if isinstance(key[1], int):
        return f"{key[0]}[{key[1]}]"
    return key[1]


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"


def _is_cache(value: Any) -> bool:
    # No transformers cache can exist before transformers.cache_utils is imported.
    module = sys.modules.get("transformers.cache_utils")
    return module is not None and isinstance(value, module.Cache)


def _has_tensor(cache: Any) -> bool:
    try:
        with cache_pytrees():
            leaves = pytree.tree_leaves(cache)
    except (TypeError, ValueError):  # a cache that cannot be flattened: assume it holds some
        return True
    return any(isinstance(t, torch.Tensor) for t in leaves)


def _absence(value: Any) -> str | None:
    """Why an input counts as absent (``None``, an empty cache), or None if present."""
    if value is _MISSING:
        return "not passed"
    if value is None:
        return "None"
    if _is_cache(value) and not _has_tensor(value):
        return "empty"
    return None


def _collect_grad_tensors(obj: Any, memo: dict[int, Any], seen: set[int], depth: int) -> None:
    if isinstance(obj, torch.Tensor):
        if obj.requires_grad and id(obj) not in memo:
            memo[id(obj)] = obj.detach().clone()
        return
    if depth > 20 or id(obj) in seen:
        return
    seen.add(id(obj))
    if isinstance(obj, dict):
        children: Iterable[Any] = list(obj.values())
    elif isinstance(obj, list | tuple | set | frozenset):
        children = list(obj)
    elif hasattr(obj, "__dict__") and not isinstance(obj, type | torch.nn.Module):
        children = list(vars(obj).values())
    else:
        return
    for child in children:
        _collect_grad_tensors(child, memo, seen, depth + 1)


def _snapshot(obj: Any) -> Any:
    """A deep copy; tensors that require grad are detached (deepcopy refuses non-leaves)."""
    memo: dict[int, Any] = {}
    _collect_grad_tensors(obj, memo, set(), 0)
    return copy.deepcopy(obj, memo)


def _grow(t: torch.Tensor, axis: int, size: int) -> torch.Tensor:
    """``t`` with ``size`` entries along ``axis``, repeating its last slice."""
    old = t.shape[axis]
    if size <= old:
        return t
    if old == 0:
        shape = list(t.shape)
        shape[axis] = size
        return t.new_zeros(shape)
    index = torch.cat([torch.arange(old), torch.full((size - old,), old - 1, dtype=torch.long)]).to(
        t.device
    )
    return t.index_select(axis, index)


def _is_spec_leaf(x: Any) -> bool:
    return x is None or isinstance(x, dict)


def _cell(value: Any) -> str:
    if isinstance(value, bool | int | float | str) or value is None:
        return string_type(value, with_min_max=True)
    return string_type(value, with_shape=True)


def _values(values: Iterable[int]) -> str:
    return ", ".join(str(v) for v in sorted(set(values)))


def _enumerate_names(names: list[str]) -> str:
    unique = list(dict.fromkeys(names))
    if len(unique) <= 1:
        return "".join(unique)
    return ", ".join(unique[:-1]) + " and " + unique[-1]


@dataclasses.dataclass
class _View:
    """The inputs of one call by key, in the order of the signature."""

    inputs: dict[Key, Any]
    positional: list[Key]
    renamed: dict[str, str]


def _arrange(values: dict[Key, Any], positional: list[Key]) -> tuple[tuple[Any, ...], dict]:
    args = tuple(values[k] for k in positional if k in values)
    kwargs = {(k[1] if len(k) == 2 else k[0]): v for k, v in values.items() if k not in positional}
    return args, kwargs


def _structure(values: dict[Key, Any]) -> tuple[Any, ...]:
    """What must match between two calls for one exported program to take both."""
    flat, spec = pytree.tree_flatten({_name(k): v for k, v in values.items()})
    leaves = tuple(
        ("tensor", t.dtype, t.dim()) if isinstance(t, torch.Tensor) else ("constant", repr(t))
        for t in flat
    )
    return spec, leaves
