"""Dynamic dimensions: the length bounds exports declare, and refining them after an error."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from .describe import string_type

__all__ = [
    "BATCH_MAX",
    "CACHE_MAX",
    "ENCODER_SEQ_MAX",
    "describe_shapes",
    "length_bounds",
    "map_dims",
    "refine_dynamic_shapes",
    "smallest_window",
]


def smallest_window(config: Any) -> int | None:
    """The smallest sliding window of a config and its sub-configs, None without one."""
    return _smallest(config, "sliding_window")


#: the largest batch a checked export declares; one input set runs at it
BATCH_MAX = 16
#: the largest cache a checked export declares; one input set runs at it
CACHE_MAX = 256


def _smallest(config: Any, name: str) -> int | None:
    """The smallest positive integer ``name`` of a config or its sub-configs."""
    values = []
    stack, seen = [config], set()
    while stack:
        current = stack.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        value = getattr(current, name, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            values.append(value)
        for key in getattr(current, "sub_configs", {}) or {}:
            sub = getattr(current, key, None)
            if sub is not None:
                stack.append(sub)
    return min(values) if values else None


def length_bounds(config: Any) -> tuple[int, int]:
    """Upper bounds of seq_length and cache_length.

    The bounds an export declares are the ones it is checked at: one input set runs
    at ``(BATCH_MAX, seq_max, cache_max)``, so the cache stays at most
    :data:`CACHE_MAX` tokens. A sliding-window model behaves differently once the
    window is full, so the exported program is valid for caches and new tokens that
    fit in the window: the bounds keep ``cache_length + seq_length`` below it, and
    below ``max_position_embeddings`` for learned position tables.

    >>> length_bounds(type("Config", (), {})())
    (64, 256)
    """
    window = smallest_window(config)
    # cache_length + seq_length < window - 1: exports of sliding-window attention guard it
    limit = 8192 if window is None else window - 2
    positions = _smallest(config, "max_position_embeddings")
    if positions is not None:
        # learned position tables; 2 for the padding offset of RoBERTa-like tables
        limit = min(limit, positions - 2)
    # 64: chunked linear attention (qwen3_next, ...) exports one chunk of new tokens.
    seq_max = max(8, min(64, limit // 8))
    return seq_max, min(max(limit - seq_max, 64), CACHE_MAX)


REFINEMENTS = 2  # how many times validation refines the dynamic shapes
_SUGGESTION = re.compile(r"^\s*(\w+) = Dim\('(\w+)'(?:, min=(\d+))?(?:, max=(\d+))?\)\s*$")
#: ``audio_length = 384*_audio_length - 288``: a dimension on a lattice of a new one
_DERIVED = re.compile(r"^\s*(\w+) = \d+\*_\1(?: [+-] \d+)?\s*$")


#: the longest sequence a text encoder is declared and checked for, when its position
#: table allows it
ENCODER_SEQ_MAX = 512


def sequence_bound(config: Any) -> int:
    """Upper bound of seq_length for an encoder: :data:`ENCODER_SEQ_MAX`, or less where
    a learned position table is shorter (2 less for the padding offset of RoBERTa-like
    tables).

    >>> sequence_bound(type("Config", (), {"max_position_embeddings": 128})())
    126
    """
    positions = _smallest(config, "max_position_embeddings")
    if positions is None:
        return ENCODER_SEQ_MAX
    return max(8, min(ENCODER_SEQ_MAX, positions - 2))


def map_dims(spec: Any, fn: Callable[[Any], Any]) -> Any:
    if isinstance(spec, dict) and all(isinstance(k, int) for k in spec):
        return {k: fn(v) for k, v in spec.items()}
    if isinstance(spec, dict):
        return {k: map_dims(v, fn) for k, v in spec.items()}
    if isinstance(spec, list | tuple):
        return type(spec)(map_dims(v, fn) for v in spec)
    return spec


def describe_shapes(spec: Any) -> str:
    """A dynamic-shape spec as one line (Dim names and bounds)."""
    return string_type(spec, limit=1000)


def refine_dynamic_shapes(dynamic_shapes: Any, error: BaseException) -> tuple[Any, str] | None:
    """Narrow the bounds of named dimensions after a constraint violation.

    When ``torch.export`` reports that the model's code only supports part of a
    declared range (a learned position table of 512, a window), it suggests new
    bounds such as ``cache_length = Dim('cache_length', max=510)``. Those suggestions
    are applied. When it cannot suggest bounds (a guard its solver cannot prove),
    named dimensions become ``Dim.AUTO`` with the same bounds, so that export decides.
    Specializations to a constant are never applied: they are failures.

    :return: the new dynamic shapes and a note saying what changed, or None when the
        error is not a constraint violation or nothing can be refined
    """
    from torch.export import Dim
    from torch.export.dynamic_shapes import _DimHint

    text = str(error)
    if "Constraints violated" not in text:
        return None
    bounds: dict[str, tuple[int | None, int | None]] = {}
    if "Suggested fixes:" in text:
        for line in text.split("Suggested fixes:", 1)[1].splitlines():
            match = _SUGGESTION.match(line)
            if match and match.group(1) == match.group(2):
                low, high = match.group(3), match.group(4)
                if low and high and int(low) >= int(high):
                    return None  # a range of one value is a specialization
                bounds[match.group(1)] = (
                    int(low) if low else None,
                    int(high) if high else None,
                )
            elif _DERIVED.match(line) and "Not all values" in text:
                # ``length = 384*_length - 288``: a lattice the solver proposes for a
                # guard it cannot prove on the range (a floor division), not a
                # relation between two inputs: relaxed below, the runs check the rest.
                bounds.clear()
                break
            elif line.strip() and "=" in line and not line.startswith("The error"):
                return None  # a specialization or a relation between dimensions
    if bounds:
        declared: dict[str, Any] = {}
        map_dims(
            dynamic_shapes,
            lambda d: declared.setdefault(d.__name__, d) if isinstance(d, Dim) else d,
        )
        for name, (low, high) in list(bounds.items()):
            if name in declared:
                low = declared[name].min if low is None else low
                high = declared[name].max if high is None else high
                if low >= high:
                    return None  # max=1 on a Dim of min=1: one value, a specialization
                bounds[name] = (low, high)

        def narrow(dim: Any) -> Any:
            name = getattr(dim, "__name__", None)
            if name in bounds and not isinstance(dim, _DimHint):
                return Dim(name, min=bounds[name][0], max=bounds[name][1])
            return dim

        changes = ", ".join(f"{n} in [{lo or '.'}, {hi or '.'}]" for n, (lo, hi) in bounds.items())
        return map_dims(dynamic_shapes, narrow), f"export suggested narrower bounds: {changes}"

    def relax(dim: Any) -> Any:
        if isinstance(dim, Dim):
            return Dim.AUTO(min=dim.min, max=dim.max)
        return dim

    relaxed = map_dims(dynamic_shapes, relax)
    if describe_shapes(relaxed) == describe_shapes(dynamic_shapes):
        return None
    first = next((line.strip() for line in text.splitlines() if "Not all values" in line), "")
    return relaxed, f"named dimensions relaxed to Dim.AUTO after an unprovable guard: {first[:300]}"
