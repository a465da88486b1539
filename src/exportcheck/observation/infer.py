"""ObservedCalls.infer(): export inputs and dynamic shapes from observed calls."""

from __future__ import annotations

import dataclasses
import re
from typing import TYPE_CHECKING, Any

import torch
import torch.utils._pytree as pytree

from ..caches.pytrees import cache_dynamic_shapes
from ..describe import string_type
from ._common import (
    _DYNAMIC,
    _MAIN_INPUTS,
    _MASKS,
    _MAX,
    _MISSING,
    _SEQ_AXIS,
    _SUM,
    BATCH,
    CACHE,
    SEQ,
    Key,
    _absence,
    _arrange,
    _enumerate_names,
    _grow,
    _is_cache,
    _is_spec_leaf,
    _name,
    _snapshot,
    _structure,
    _values,
)

if TYPE_CHECKING:
    from .record import ObservedCalls


@dataclasses.dataclass
class InferredInputs:
    """Export inputs and dynamic shapes inferred from observed calls.

    * ``call_index``: the observed call the inputs come from
    * ``args``, ``kwargs``: the inputs to export with, a copy of that call, grown
      along the dimensions of size 0 or 1 that are dynamic (see ``notes``)
    * ``dynamic_shapes``: a dict keyed by the names of ``forward``'s parameters, to
      pass to ``torch.export.export`` with ``args`` and ``kwargs``
    * ``dims``: the named ``torch.export.Dim`` objects used, by name
    * ``dim_sizes``: for each name, its size in each call where it appears
    * ``absent``: inputs missing, None or empty in some calls, with those calls
    * ``notes``: what was assumed, chosen or changed, one sentence each
    """

    call_index: int
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    dynamic_shapes: dict[str, Any]
    dims: dict[str, Any]
    dim_sizes: dict[str, dict[int, int]]
    absent: dict[str, list[int]]
    notes: list[str]
    _positional: list[Key] = dataclasses.field(default_factory=list, repr=False)
    _values: dict[Key, Any] = dataclasses.field(default_factory=dict, repr=False)
    _dropped: dict[Key, Any] = dataclasses.field(default_factory=dict, repr=False)

    def describe(self) -> str:
        """The export call, the inputs, the dynamic shapes and the notes, one per line.

        >>> import torch
        >>> from exportcheck import observe
        >>> model = torch.nn.Linear(4, 2)
        >>> with observe(model) as calls:
        ...     _ = model(torch.rand(3, 4))
        ...     _ = model(torch.rand(3, 4))
        >>> print(calls.infer().describe())
        export call: 0
        args: (T1s3x4)
        kwargs: dict()
        dynamic_shapes: dict(input:{0:Dim(batch,min=1,max=1024)})
        note: call 0 is used for export: 1 other call has inputs of the same structure.
        note: batch was 3 in every call: dimension 0 of input is assumed dynamic as the batch; call the model with a batch of 4 to confirm.
        """
        lines = [
            f"export call: {self.call_index}",
            f"args: {string_type(self.args, with_shape=True)}",
            f"kwargs: {string_type(self.kwargs, with_shape=True)}",
            f"dynamic_shapes: {string_type(self.dynamic_shapes)}",
        ]
        lines.extend(f"note: {note}" for note in self.notes)
        return "\n".join(lines)


class Inference:
    """One run of ObservedCalls.infer (inside cache_pytrees)."""

    def __init__(self, calls: ObservedCalls, usable: list[int]) -> None:
        self.calls = calls
        self.usable = usable
        self.views = {i: calls._view(calls[i]) for i in usable}
        self.notes: list[str] = []
        self.cache_key = next(
            (k for i in usable for k, v in self.views[i].inputs.items() if _is_cache(v)), None
        )
        # Sizes of the named dimensions in each call.
        self.sizes: dict[str, dict[int, int]] = {BATCH: {}, SEQ: {}, CACHE: {}}
        self._leaves: dict[tuple[int, Key], dict[str, torch.Tensor]] = {}
        for i in usable:
            self._named_sizes(i)

    # sizes ------------------------------------------------------------------------

    def _tensor_leaves(self, value: Any) -> list[tuple[str, torch.Tensor]]:
        flat, _ = pytree.tree_flatten_with_path(value)
        return [(pytree.keystr(p), t) for p, t in flat if isinstance(t, torch.Tensor)]

    def _cache_length(self, cache: Any) -> int | None:
        probe = torch.export.Dim("cache_length_probe")
        spec = cache_dynamic_shapes(cache, None, probe, probe)
        specs = pytree.tree_leaves(spec, is_leaf=_is_spec_leaf)
        tensors = pytree.tree_leaves(cache)
        for s, t in zip(specs, tensors, strict=False):
            if isinstance(s, dict) and s.get(2) is probe and isinstance(t, torch.Tensor):
                return int(t.shape[2])
        return None

    def _named_sizes(self, i: int) -> None:
        inputs = self.views[i].inputs
        for key, value in inputs.items():
            if _name(key) in _MAIN_INPUTS and isinstance(value, torch.Tensor) and value.dim() >= 2:
                axis = _SEQ_AXIS[_name(key)] % value.dim()
                self.sizes[BATCH][i] = int(value.shape[0])
                self.sizes[SEQ][i] = int(value.shape[axis])
                break
        else:
            for key, value in inputs.items():
                if key == self.cache_key or _is_cache(value):
                    continue
                ranked = [t for _, t in self._tensor_leaves(value) if t.dim() >= 2]
                if ranked:
                    self.sizes[BATCH][i] = int(ranked[0].shape[0])
                    break
        if self.cache_key is not None:
            cache = inputs.get(self.cache_key)
            if _absence(cache if self.cache_key in inputs else _MISSING) is not None:
                self.sizes[CACHE][i] = 0
            elif _is_cache(cache):
                length = self._cache_length(cache)
                if length is not None:
                    self.sizes[CACHE][i] = length
                if i not in self.sizes[BATCH]:
                    tensors = [t for _, t in self._tensor_leaves(cache) if t.dim() >= 1]
                    if tensors:
                        self.sizes[BATCH][i] = int(tensors[0].shape[0])

    # choice -----------------------------------------------------------------------

    def _present(self, i: int) -> list[Key]:
        return [k for k, v in self.views[i].inputs.items() if _absence(v) is None]

    def _choose(self) -> int:
        structures = {
            i: _structure({k: self.views[i].inputs[k] for k in self._present(i)})
            for i in self.usable
        }

        def score(i: int) -> tuple[Any, ...]:
            has_cache = self.cache_key is not None and self.cache_key in self._present(i)
            shared = sum(1 for j in self.usable if j != i and structures[j] == structures[i])
            small = sum(1 for name in (BATCH, SEQ, CACHE) if self.sizes[name].get(i) in (0, 1))
            return (has_cache, len(self._present(i)), shared, -small, -i)

        chosen = max(self.usable, key=score)
        shared = [j for j in self.usable if j != chosen and structures[j] == structures[chosen]]
        why = []
        if self.cache_key is not None and self.cache_key in self._present(chosen):
            why.append("its cache is not empty (a decode step)")
        why.append(
            f"{len(shared)} other call{'s' if len(shared) != 1 else ''} "
            f"{'have' if len(shared) != 1 else 'has'} inputs of the same structure"
        )
        self.notes.append(f"call {chosen} is used for export: {', and '.join(why)}.")
        return chosen

    # labels -----------------------------------------------------------------------

    def _follows(self, sizes: dict[int, int], named: dict[int, int]) -> bool:
        return bool(sizes) and all(named.get(i) == s for i, s in sizes.items())

    def _label(self, name: str, rank: int, axis: int, sizes: dict[int, int]) -> Any:
        # Cached and new tokens; a call without cache counts 0 cached tokens.
        total = {i: s + self.sizes[CACHE].get(i, 0) for i, s in self.sizes[SEQ].items()}
        if self.cache_key is None:
            total = {}
        if axis == 0 and rank >= 2 and self._follows(sizes, self.sizes[BATCH]):
            return BATCH
        if (
            name in _SEQ_AXIS
            and rank >= 2
            and axis == _SEQ_AXIS[name] % rank
            and self._follows(sizes, self.sizes[SEQ])
        ):
            return SEQ
        if name == "cache_position" and rank == 1 and self._follows(sizes, self.sizes[SEQ]):
            return SEQ
        if name in _MASKS and rank >= 2 and axis == rank - 1:
            if not any(self.sizes[CACHE].values()) and self._follows(sizes, self.sizes[SEQ]):
                return SEQ
            if self._follows(sizes, total):
                return _SUM
            return _DYNAMIC
        if name in _MASKS and rank == 4 and axis == 2 and self._follows(sizes, self.sizes[SEQ]):
            return SEQ
        if len(set(sizes.values())) < 2:
            return None
        for dim in (SEQ, CACHE, BATCH):
            if self._follows(sizes, self.sizes[dim]):
                return dim
        if self._follows(sizes, total):
            return _SUM
        return ("group", tuple(sorted(sizes.items())))

    # run --------------------------------------------------------------------------

    def run(self, call: int | None) -> InferredInputs:
        chosen = self._choose() if call is None else call
        if call is not None:
            self.notes.append(f"call {chosen} is used for export, as asked.")
        view = self.views[chosen]
        values = _snapshot(view.inputs)
        absent = self._absent(chosen)

        # Constants passed through **kwargs break torch.export's dynamic shapes.
        later: list[str] = []
        dropped: dict[Key, Any] = {}
        sig = self.calls._signature
        var_keyword = {
            p.name for p in (sig.parameters.values() if sig else []) if p.kind is p.VAR_KEYWORD
        }
        if sig is None:
            var_keyword = {"kwargs"}
        for key in list(values):
            if len(key) == 2 and key[0] in var_keyword:
                if not self._tensor_leaves(values[key]):
                    dropped[key] = values.pop(key)
                else:
                    later.append(
                        f"{_name(key)} goes through **{key[0]} and holds tensors: torch.export "
                        "fails to match such arguments with dynamic_shapes; pass it as a named "
                        "parameter of forward if you can."
                    )
        for old, new in view.renamed.items():
            later.append(
                f"{old} was passed through **kwargs, forward names it {new}: it is passed as {new}."
            )
        if dropped:
            text = ", ".join(f"{_name(k)}={v!r}" for k, v in dropped.items())
            later.append(
                f"{text} went through **kwargs: left out of the export inputs, since "
                "torch.export cannot match such arguments with dynamic_shapes (the model's "
                "default applies); check() skips calls that pass another value."
            )

        # Labels of the dimensions of every tensor outside the cache.
        labels: dict[tuple[Key, str], dict[int, Any]] = {}
        for key, value in values.items():
            if key == self.cache_key and _is_cache(value):
                continue
            for path, tensor in self._tensor_leaves(value):
                per_axis = {}
                for axis in range(tensor.dim()):
                    sizes = self._sizes_of(key, path, tensor.dim(), axis)
                    label = self._label(_name(key), tensor.dim(), axis, sizes)
                    if label is not None:
                        per_axis[axis] = label
                labels[(key, path)] = per_axis

        # Groups of other varying dimensions become named Dims.
        group_names: dict[Any, str] = {}
        for (key, _path), per_axis in labels.items():
            for axis, label in per_axis.items():
                if isinstance(label, tuple) and label not in group_names:
                    base = re.sub(r"\W+", "_", _name(key)).strip("_") or "input"
                    group_names[label] = f"{base}_dim{axis}"
                    self.sizes[group_names[label]] = dict(label[1])
        for per_axis in labels.values():
            for axis, label in per_axis.items():
                if isinstance(label, tuple):
                    per_axis[axis] = group_names[label]

        used = {label for per_axis in labels.values() for label in per_axis.values()}
        has_cache = self.cache_key in values and _absence(values[self.cache_key]) is None
        has_cache = has_cache and _is_cache(values[self.cache_key])
        if has_cache:
            used.update({BATCH, CACHE})
        self._describe_dims(labels, has_cache)
        dims = self._dims(used, values.get(self.cache_key) if has_cache else None, chosen)
        batch = dims.get(BATCH, torch.export.Dim.DYNAMIC)
        length = dims.get(CACHE, torch.export.Dim.DYNAMIC)

        # Grow dimensions of size 0 or 1: torch.export would specialize them.
        targets = {name: 2 for name in dims if self.sizes.get(name, {}).get(chosen, 2) < 2}
        delta = {name: 2 - self.sizes[name][chosen] for name in targets}
        if targets:
            values = self._grow(values, labels, (batch, length), targets, delta, chosen)
            grown = ", ".join(f"{n} ({self.sizes[n][chosen]} -> 2)" for n in targets)
            self.notes.append(
                f"torch.export specializes dimensions of size 0 or 1: the export inputs repeat "
                f"the last slice of call {chosen} along {grown}; they are not an observed call, "
                "check() compares observed calls only."
            )

        # Dynamic shapes, keyed like torch.export expects: forward's parameter names.
        specs: dict[Key, Any] = {}
        for key, value in values.items():
            if key == self.cache_key and _is_cache(value):
                specs[key] = cache_dynamic_shapes(value, batch, length)
                continue
            flat, treespec = pytree.tree_flatten(value)
            leaf_specs = []
            tensors = dict(self._tensor_leaves(value))
            flat_paths = [pytree.keystr(p) for p, _ in pytree.tree_flatten_with_path(value)[0]]
            for path, leaf in zip(flat_paths, flat, strict=True):
                if not isinstance(leaf, torch.Tensor) or path not in tensors:
                    leaf_specs.append(None)
                    continue
                per_axis = labels.get((key, path), {})
                spec = {
                    axis: torch.export.Dim.DYNAMIC if label in (_SUM, _DYNAMIC) else dims[label]
                    for axis, label in per_axis.items()
                }
                leaf_specs.append(spec or None)
            specs[key] = pytree.tree_unflatten(leaf_specs, treespec)
        dynamic_shapes = _by_parameter(specs)
        self.notes.extend(later)

        positional = view.positional
        args, kwargs = _arrange(values, positional)
        return InferredInputs(
            call_index=chosen,
            args=args,
            kwargs=kwargs,
            dynamic_shapes=dynamic_shapes,
            dims=dims,
            # A call without cache has no cache_length (0 only serves the mask's sum).
            dim_sizes={
                n: {i: s for i, s in self.sizes[n].items() if n != CACHE or s > 0} for n in dims
            },
            absent=absent,
            notes=self.notes,
            _positional=positional,
            _values=values,
            _dropped=dropped,
        )

    def _sizes_of(self, key: Key, path: str, rank: int, axis: int) -> dict[int, int]:
        sizes = {}
        for i in self.usable:
            value = self.views[i].inputs.get(key, _MISSING)
            if _absence(value) is not None:
                continue
            if (i, key) not in self._leaves:
                self._leaves[(i, key)] = dict(self._tensor_leaves(value))
            tensor = self._leaves[(i, key)].get(path)
            if tensor is not None and tensor.dim() == rank:
                sizes[i] = int(tensor.shape[axis])
        return sizes

    def _absent(self, chosen: int) -> dict[str, list[int]]:
        keys = list(dict.fromkeys(k for i in self.usable for k in self.views[i].inputs))
        absent: dict[str, list[int]] = {}
        for key in keys:
            reasons = {}
            for i in self.usable:
                why = _absence(self.views[i].inputs.get(key, _MISSING))
                if why is not None:
                    reasons[i] = why
            if not reasons or len(reasons) == len(self.usable):
                continue  # the same in every call: nothing to report
            absent[_name(key)] = sorted(reasons)
            detail = "; ".join(
                f"{why} in call{'s' if len(calls) > 1 else ''} {_values(calls)}"
                for why, calls in _group_by_value(reasons).items()
            )
            if chosen in reasons:
                where = "it is not in the export inputs; check() skips the calls that pass it"
            else:
                where = (
                    f"the export takes its value from call {chosen}; check() skips the calls "
                    "without it"
                )
            self.notes.append(f"{_name(key)} is absent in some calls ({detail}): {where}.")
        return absent

    def _dims(self, used: set[Any], cache: Any, chosen: int) -> dict[str, Any]:
        window = None
        if cache is not None:
            windows = [
                getattr(layer, "sliding_window", None) for layer in getattr(cache, "layers", [])
            ]
            windows = [w for w in windows if isinstance(w, int) and not isinstance(w, bool)]
            window = min(windows) if windows else None
        maxes = dict(_MAX)
        if window is not None:
            # Same bounds as exportcheck.untrained_model: the model behaves differently
            # once the window is full, so cache and new tokens stay below it.
            limit = window - 1
            maxes[SEQ] = max(8, min(64, limit // 8))
            maxes[CACHE] = max(limit - maxes[SEQ], 64)
            self.notes.append(
                f"the cache has sliding-window layers (window {window}): their length gets "
                f"Dim.AUTO, and seq_length <= {maxes[SEQ]}, cache_length <= {maxes[CACHE]} "
                "keep the export below the window."
            )
        elif used & {BATCH, SEQ, CACHE}:
            for name in (BATCH, SEQ, CACHE):
                observed = self.sizes[name].values()
                maxes[name] = max([maxes[name], *observed])
        dims = {}
        for name in [BATCH, SEQ, CACHE, *sorted(n for n in used if isinstance(n, str))]:
            if name in used and name not in (_SUM, _DYNAMIC) and name not in dims:
                dims[name] = torch.export.Dim(name, min=1, max=maxes.get(name))
        return dims

    def _grow(
        self,
        values: dict[Key, Any],
        labels: dict[tuple[Key, str], dict[int, Any]],
        cache_dims: tuple[Any, Any],
        targets: dict[str, int],
        delta: dict[str, int],
        chosen: int,
    ) -> dict[Key, Any]:
        grown = {}
        for key, value in values.items():
            flat, treespec = pytree.tree_flatten_with_path(value)
            leaves = [t for _, t in flat]
            if key == self.cache_key and _is_cache(value):
                specs = pytree.tree_leaves(
                    cache_dynamic_shapes(value, *cache_dims), is_leaf=_is_spec_leaf
                )
                if len(specs) != len(leaves):
                    grown[key] = value
                    continue
                cache_size = self.sizes[CACHE].get(chosen)
                for n, (spec, leaf) in enumerate(zip(specs, leaves, strict=True)):
                    if not isinstance(spec, dict) or not isinstance(leaf, torch.Tensor):
                        continue
                    for axis, dim in spec.items():
                        if dim is cache_dims[0] and BATCH in targets:
                            leaf = _grow(leaf, axis, targets[BATCH])
                        elif CACHE in targets and axis == 2 and leaf.shape[2] == cache_size:
                            leaf = _grow(leaf, axis, targets[CACHE])
                    leaves[n] = leaf
            else:
                for n, (path, leaf) in enumerate(flat):
                    per_axis = labels.get((key, pytree.keystr(path)), {})
                    for axis, label in per_axis.items():
                        if label in targets:
                            leaf = _grow(leaf, axis, targets[label])
                        elif label == _SUM:
                            extra = delta.get(SEQ, 0) + delta.get(CACHE, 0)
                            leaf = _grow(leaf, axis, leaf.shape[axis] + extra)
                    leaves[n] = leaf
            grown[key] = pytree.tree_unflatten(leaves, treespec)
        return grown

    def _describe_dims(
        self, labels: dict[tuple[Key, str], dict[int, Any]], has_cache: bool
    ) -> None:
        where: dict[Any, list[tuple[str, int]]] = {}
        for (key, path), per_axis in labels.items():
            for axis, label in per_axis.items():
                where.setdefault(label, []).append((f"{_name(key)}{path}", axis))
        if has_cache:
            where.setdefault(BATCH, []).append((f"the {_name(self.cache_key)}", 0))
        for name in (BATCH, SEQ, CACHE):
            sizes = self.sizes[name]
            if name == CACHE:
                sizes = {i: s for i, s in sizes.items() if s > 0}
                if not has_cache or not sizes:
                    continue
                places = (
                    f"dimension 2 of the keys and values of every layer of {self.cache_key[-1]}"
                )
            elif name not in where:
                continue
            else:
                places = _places(where[name])
            values = set(sizes.values())
            if len(values) > 1:
                self.notes.append(f"{name} varies across calls ({_values(values)}): {places}.")
                continue
            (size,) = values
            if name == BATCH:
                how = "run generate" if hasattr(self.calls.model, "generate") else "call the model"
                self.notes.append(
                    f"batch was {size} in every call: {places} is assumed dynamic as the "
                    f"batch; {how} with a batch of {size + 1} to confirm."
                )
            elif name == SEQ:
                self.notes.append(
                    f"seq_length was {size} in every call: {places} is assumed dynamic as the "
                    "sequence length; observe a call with another number of new tokens (a "
                    "prefill) to confirm."
                )
            else:
                self.notes.append(
                    f"cache_length was {size} in every call with a cache: {places} is assumed "
                    "dynamic; observe more decode steps (max_new_tokens of 3 or more) to confirm."
                )
        if _SUM in where:
            self.notes.append(
                f"{_places(where[_SUM])} is seq_length + cache_length in every call: "
                "Dim.DYNAMIC, since a Dim cannot be the sum of two others."
            )
        if _DYNAMIC in where:
            self.notes.append(
                f"{_places(where[_DYNAMIC])} covers cached and new tokens: Dim.DYNAMIC."
            )
        for label, places in where.items():
            if label not in (BATCH, SEQ, CACHE, _SUM, _DYNAMIC):
                self.notes.append(
                    f"{_places(places)} varies across calls "
                    f"({_values(self.sizes[label].values())}): one dimension, {label}."
                )


def _places(places: list[tuple[str, int]]) -> str:
    """``dimension 0 of input_ids and x; dimension 2 of y``."""
    by_axis: dict[int, list[str]] = {}
    for name, axis in places:
        by_axis.setdefault(axis, []).append(name)
    return "; ".join(
        f"dimension {axis} of {_enumerate_names(names)}" for axis, names in by_axis.items()
    )


def _group_by_value(mapping: dict[int, str]) -> dict[str, list[int]]:
    groups: dict[str, list[int]] = {}
    for i, value in mapping.items():
        groups.setdefault(value, []).append(i)
    return groups


def _by_parameter(specs: dict[Key, Any]) -> dict[str, Any]:
    """Dynamic shapes keyed by parameter: a tuple for *args, a dict for **kwargs."""
    out: dict[str, Any] = {}
    for key, spec in specs.items():
        if len(key) == 1:
            out[key[0]] = spec
        elif isinstance(key[1], int):
            out[key[0]] = (*out.get(key[0], ()), spec)
        else:
            out.setdefault(key[0], {})[key[1]] = spec
    return out
