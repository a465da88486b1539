"""Record the calls a model receives, and infer from them how to export it.

``generate`` calls the model's ``forward`` many times: a prefill with the prompt and
an empty cache, then one decode step per new token with a growing cache.
:func:`observe` records every call (deep copies of its arguments and of what it
returned); :meth:`ObservedCalls.infer` turns two or more calls into export inputs and
dynamic shapes; :meth:`ObservedCalls.check` runs an ExportedProgram on the calls the
export did not use and compares with what eager PyTorch returned::

    with observe(model) as calls:
        model.generate(input_ids, max_new_tokens=4, do_sample=False)
    print(calls.summary())
    inferred = calls.infer()
    with export_patches(model):
        ep = torch.export.export(
            model, inferred.args, inferred.kwargs, dynamic_shapes=inferred.dynamic_shapes
        )
    for result in calls.check(ep):
        print(result)

How :meth:`ObservedCalls.infer` decides:

==================  ==============================================================
what                rule
==================  ==============================================================
export call         a call whose cache is not empty (a decode step, not the
                    prefill), then the one with the most inputs, the one sharing
                    its input structure with the most calls, the one with the fewest
                    dimensions of size 0 or 1, the earliest
``batch``           dimension 0 of every input of rank 2 or more whose size is the
                    batch in every call (the batch is dimension 0 of ``input_ids``,
                    ``inputs_embeds``, or of the first input of rank 2 or more), and
                    of every tensor of the cache
``seq_length``      the last dimension of ``input_ids``, ``token_type_ids`` and
                    ``position_ids``, dimension 1 of ``inputs_embeds``, dimension 0
                    of ``cache_position``, and any dimension that varies as it does
``cache_length``    dimension 2 of the keys and values of every full-attention
                    layer of the cache (one dimension for all layers, laid out by
                    :func:`exportcheck.cache_dynamic_shapes`), and any dimension
                    that varies as it does
attention mask      its last dimension covers cached and new tokens:
                    ``seq_length`` without a cache, ``Dim.DYNAMIC`` with one (a
                    ``Dim`` cannot be the sum of two others)
other dimensions    dynamic if their size varies across calls: dimensions taking
                    the same sizes in every call share one ``Dim``, named after the
                    first of them (``args_0_dim1``); static otherwise
absent inputs       an input not passed, ``None`` or an empty cache in some calls
                    is reported in ``absent``; the export takes its value from the
                    export call
==================  ==============================================================

``batch``, ``seq_length`` and ``cache_length`` are dynamic even when they take one
size in every call: a note then says how to confirm it. ``torch.export`` specializes
a dimension whose example size is 0 or 1, and a decode step has one new token and
often a batch of 1: the export inputs repeat the last slice of the export call along
such dimensions until they reach 2 (a note says so). They are not an observed call;
:meth:`ObservedCalls.check` only compares observed calls.

Constants passed through the ``**kwargs`` of ``forward`` (``return_dict=True`` from
``generate``) are left out of the export inputs: ``torch.export`` reorders such
arguments when it matches them with ``dynamic_shapes`` and fails with "Must provide
a tree_name when there might be a mismatch". A cache passed through ``**kwargs``
under the deprecated name ``past_key_values`` is passed as ``cache`` when
``forward`` has that parameter.
"""

from __future__ import annotations

import collections.abc
import contextlib
import copy
import dataclasses
import functools
import inspect
import re
import sys
from collections.abc import Iterable, Iterator
from typing import Any

import torch
import torch.utils._pytree as pytree

from .describe import string_type
from .pytrees import cache_dynamic_shapes, cache_pytrees

__all__ = ["CallCheck", "InferredInputs", "ObservedCall", "ObservedCalls", "observe"]

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
class ObservedCall:
    """One call of ``forward``: deep copies of what it received and returned.

    * ``index``: its position among the observed calls
    * ``args``, ``kwargs``: the arguments as passed, copied before the call (eager
      forward appends to the cache it receives)
    * ``output``: a copy of what it returned, None if outputs were not recorded or
      the call raised
    * ``error``: the exception the call raised, as ``"Type: message"``, or None
    """

    index: int
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    output: Any = None
    error: str | None = None


@dataclasses.dataclass
class CallCheck:
    """The result of running an ExportedProgram on one observed call.

    * ``index``: the observed call
    * ``status``: ``ok``, ``fail`` (differs from eager beyond the tolerance),
      ``error`` (the ExportedProgram raised) or ``skipped`` (the call's inputs do
      not fit the exported program, ``reason`` says why)
    * ``abs``, ``rel``: max absolute and relative differences with eager (None when
      not compared)
    * ``reason``: why it failed, raised or was skipped; empty when ok
    """

    index: int
    status: str
    abs: float | None = None
    rel: float | None = None
    reason: str = ""

    @property
    def ok(self) -> bool:
        """True if the ExportedProgram matched eager on this call."""
        return self.status == "ok"

    def __str__(self) -> str:
        text = f"call {self.index}: {self.status}"
        if self.abs is not None:
            text += f", max abs diff {self.abs:.3g}"
        return f"{text} ({self.reason})" if self.reason else text


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
        >>> from exportcheck.observe import observe
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


@dataclasses.dataclass
class _View:
    """The inputs of one call by key, in the order of the signature."""

    inputs: dict[Key, Any]
    positional: list[Key]
    renamed: dict[str, str]


class ObservedCalls(collections.abc.Sequence):
    """The calls recorded by :func:`observe`: a sequence of :class:`ObservedCall`.

    * :meth:`summary`: a table of the calls and their input shapes
    * :meth:`infer`: export inputs and dynamic shapes, from two calls or more
    * :meth:`check`: run an ExportedProgram on the calls and compare with eager
    """

    def __init__(self, model: torch.nn.Module, forward: Any) -> None:
        self.model = model
        #: calls made after ``max_calls`` was reached, run but not recorded
        self.unrecorded = 0
        self._forward = forward
        try:
            self._signature: inspect.Signature | None = inspect.signature(forward)
        except (TypeError, ValueError):
            self._signature = None
        self._calls: list[ObservedCall] = []
        self._last: InferredInputs | None = None

    def __len__(self) -> int:
        return len(self._calls)

    def __getitem__(self, index: Any) -> Any:
        return self._calls[index]

    def __repr__(self) -> str:
        return f"ObservedCalls({len(self)} calls of {type(self.model).__name__})"

    # --- views -------------------------------------------------------------------

    def _view(self, call: ObservedCall, rename: bool = True) -> _View:
        sig = self._signature
        bound = None
        if sig is not None:
            with contextlib.suppress(TypeError):
                bound = sig.bind(*call.args, **call.kwargs)
        if bound is None or sig is None:
            inputs = {("args", i): a for i, a in enumerate(call.args)}
            positional = list(inputs)
            inputs.update({("kwargs", k): v for k, v in call.kwargs.items()})
            return _View(inputs, positional, {})
        params = sig.parameters
        inputs = {}
        var_positional: list[Key] = []
        for name, value in bound.arguments.items():
            kind = params[name].kind
            if kind is inspect.Parameter.VAR_POSITIONAL:
                for i, v in enumerate(value):
                    inputs[(name, i)] = v
                    var_positional.append((name, i))
            elif kind is inspect.Parameter.VAR_KEYWORD:
                for k, v in value.items():
                    inputs[(name, k)] = v
            else:
                inputs[(name,)] = value
        positional_params = [
            p.name
            for p in params.values()
            if p.kind
            in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
        ]
        n = min(len(call.args), len(positional_params))
        positional = [(p,) for p in positional_params[:n]] + var_positional
        # A cache passed through **kwargs under another name (past_key_values when
        # forward takes cache) goes to the parameter forward declares for it.
        renamed = {}
        for key in list(inputs) if rename else []:
            if len(key) == 2 and isinstance(key[1], str) and _is_cache(inputs[key]):
                target = next(
                    (
                        p
                        for p in _CACHE_PARAMETERS
                        if p in params
                        and (p,) not in inputs
                        and params[p].kind
                        in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
                    ),
                    None,
                )
                if target is not None:
                    inputs[(target,)] = inputs.pop(key)
                    renamed[key[1]] = target
        order = {name: i for i, name in enumerate(params)}
        inputs = dict(sorted(inputs.items(), key=lambda kv: order.get(kv[0][0], len(order))))
        return _View(inputs, positional, renamed)

    # --- summary -----------------------------------------------------------------

    def summary(self) -> str:
        """A table with one row per call and one column per input: its shapes.

        ``-`` marks an input the call did not receive; a call that raised is marked
        ``(raised)``.

        >>> import torch
        >>> from exportcheck.observe import observe
        >>> model = torch.nn.Linear(4, 2)
        >>> with observe(model) as calls:
        ...     _ = model(torch.rand(3, 4))
        ...     _ = model(torch.rand(5, 4))
        >>> print(calls.summary())
        call  input
        0     T1s3x4
        1     T1s5x4
        """
        if not self._calls:
            return "no call was observed"
        views = [self._view(c, rename=False) for c in self._calls]
        names = list(dict.fromkeys(_name(k) for v in views for k in v.inputs))
        rows = [["call", *names]]
        for call, view in zip(self._calls, views, strict=True):
            by_name = {_name(k): v for k, v in view.inputs.items()}
            label = str(call.index) + (" (raised)" if call.error else "")
            rows.append([label] + [_cell(by_name[n]) if n in by_name else "-" for n in names])
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        return "\n".join(
            "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
            for row in rows
        )

    # --- infer -------------------------------------------------------------------

    def infer(self, *, call: int | None = None) -> InferredInputs:
        """Export inputs and dynamic shapes inferred from the observed calls.

        :param call: the index of the call to export with; chosen by the rules of
            this module's documentation when None
        :return: an :class:`InferredInputs`; :meth:`check` uses the last one
        :raises ValueError: with fewer than two calls that returned, or if ``call``
            is not one of them

        >>> import torch
        >>> from exportcheck.observe import observe
        >>> model = torch.nn.Linear(4, 2)
        >>> with observe(model) as calls:
        ...     _ = model(torch.rand(3, 4))
        ...     _ = model(torch.rand(5, 4))
        >>> inferred = calls.infer()
        >>> inferred.call_index, inferred.dynamic_shapes
        (0, {'input': {0: Dim('batch', min=1, max=1024)}})
        """
        usable = [c.index for c in self._calls if c.error is None]
        if len(usable) < 2:
            raise ValueError(
                f"infer: {len(usable)} call{'s' if len(usable) != 1 else ''} returned "
                f"(out of {len(self._calls)} observed); at least 2 are needed to tell dynamic "
                "dimensions from static ones. Call the model twice inside observe(model), for "
                "example generate with max_new_tokens=2 or more."
            )
        if call is not None and call not in usable:
            raise ValueError(
                f"infer: call must be the index of an observed call that returned, one of "
                f"{usable}, got {call!r}."
            )
        with cache_pytrees():
            inferred = _Inference(self, usable).run(call)
        self._last = inferred
        return inferred

    # --- check -------------------------------------------------------------------

    def check(
        self,
        exported_program: Any,
        *,
        inferred: InferredInputs | None = None,
        calls: Iterable[int] | None = None,
        atol: float = 1e-5,
        recompute: bool = False,
    ) -> list[CallCheck]:
        """Run an ExportedProgram on observed calls and compare with eager.

        :param exported_program: what ``torch.export.export`` returned for
            ``inferred.args``, ``inferred.kwargs``
        :param inferred: the :class:`InferredInputs` it was exported with; the last
            one :meth:`infer` returned by default
        :param calls: indices of the calls to run; every call except the export call
            by default
        :param atol: largest max-abs difference that counts as ok
        :param recompute: compare with a new eager run of each call instead of the
            output recorded during observation
        :return: one :class:`CallCheck` per call; calls whose inputs do not fit the
            exported program (a prefill without cache, other constants) are
            ``skipped``, with the reason

        >>> import torch
        >>> from exportcheck.observe import observe
        >>> model = torch.nn.Linear(4, 2)
        >>> with observe(model) as calls:
        ...     _ = model(torch.rand(3, 4))
        ...     _ = model(torch.rand(5, 4))
        >>> inferred = calls.infer()
        >>> ep = torch.export.export(
        ...     model, inferred.args, inferred.kwargs, dynamic_shapes=inferred.dynamic_shapes
        ... )
        >>> [str(r) for r in calls.check(ep)]
        ['call 1: ok, max abs diff 0']
        """
        if not isinstance(exported_program, torch.export.ExportedProgram):
            raise TypeError(
                "check: expected the torch.export.ExportedProgram returned by "
                f"torch.export.export, got {type(exported_program).__name__}."
            )
        inferred = inferred if inferred is not None else self._last
        if inferred is None:
            raise ValueError(
                "check: no inputs were inferred; call infer() and export with its args, "
                "kwargs and dynamic_shapes first, or pass inferred=."
            )
        if not isinstance(inferred, InferredInputs):
            raise TypeError(
                f"check: inferred must be what infer() returned, got {type(inferred).__name__}."
            )
        if isinstance(atol, bool) or not isinstance(atol, int | float) or not atol >= 0:
            raise ValueError(f"check: atol must be a non-negative number, got {atol!r}.")
        if calls is None:
            indices = [c.index for c in self._calls if c.index != inferred.call_index]
        else:
            indices = list(calls)
            bad = [i for i in indices if not isinstance(i, int) or not 0 <= i < len(self)]
            if bad:
                raise ValueError(
                    f"check: calls must be indices of observed calls (0 to {len(self) - 1}), "
                    f"got {bad}."
                )
        from .validate import max_diff

        results = []
        with cache_pytrees(), torch.no_grad():
            module = exported_program.module()
            for i in indices:
                results.append(self._check_one(i, module, inferred, atol, recompute, max_diff))
        return results

    def _check_one(
        self,
        index: int,
        module: Any,
        inferred: InferredInputs,
        atol: float,
        recompute: bool,
        max_diff: Any,
    ) -> CallCheck:
        call = self._calls[index]
        if call.error is not None:
            return CallCheck(index, "skipped", reason=f"the call raised {call.error}")
        view = self._view(call)
        values = {}
        for key, exported in inferred._values.items():
            value = view.inputs.get(key, _MISSING)
            why = _absence(value)
            if why is not None and _absence(exported) is None:
                return CallCheck(
                    index,
                    "skipped",
                    reason=f"{_name(key)} is {why} in this call, the exported program takes "
                    + ("a filled one" if why == "empty" else "one"),
                )
            values[key] = exported if value is _MISSING else value
        for key, value in view.inputs.items():
            if key in inferred._values:
                continue
            if key in inferred._dropped:
                if _structure({key: value}) != _structure({key: inferred._dropped[key]}):
                    return CallCheck(
                        index,
                        "skipped",
                        reason=f"{_name(key)} is {_cell(value)} here and "
                        f"{_cell(inferred._dropped[key])} in the export call",
                    )
                continue
            if _absence(value) is None:
                return CallCheck(
                    index,
                    "skipped",
                    reason=f"{_name(key)} is passed here but is not an input of the exported program",
                )
        for key, value in values.items():
            if _structure({key: value}) != _structure({key: inferred._values[key]}):
                return CallCheck(
                    index,
                    "skipped",
                    reason=f"{_name(key)} differs in structure, dtype or value from the export "
                    f"inputs: {_cell(value)} vs {_cell(inferred._values[key])}",
                )
        args, kwargs = _arrange(values, inferred._positional)
        if recompute or call.output is None:
            expected = self._forward(*_snapshot(call.args), **_snapshot(call.kwargs))
        else:
            expected = call.output
        try:
            got = module(*_snapshot(args), **_snapshot(kwargs))
        except Exception as e:  # a failure of the exported program is a result
            return CallCheck(index, "error", reason=_first_line(e))
        diff = max_diff(expected, got)
        if diff["mismatch"] is not None:
            return CallCheck(index, "fail", diff["abs"], diff["rel"], diff["mismatch"])
        if diff["abs"] > atol:
            return CallCheck(
                index, "fail", diff["abs"], diff["rel"], f"max abs diff {diff['abs']:.3g} > {atol}"
            )
        return CallCheck(index, "ok", diff["abs"], diff["rel"])


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


class _Inference:
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


@contextlib.contextmanager
def observe(
    model: torch.nn.Module, *, record_outputs: bool = True, max_calls: int | None = None
) -> Iterator[ObservedCalls]:
    """Record every call of ``model.forward`` inside a ``with`` block.

    :param model: the model; its ``forward`` is replaced inside the block by a
        function with the same signature (``generate`` reads it) and restored on
        exit, also after an exception
    :param record_outputs: keep a copy of what each call returned, which
        :meth:`ObservedCalls.check` compares with; without it, check runs eager again
    :param max_calls: record at most this many calls; later ones run unrecorded
        (each call copies the whole cache)
    :return: an :class:`ObservedCalls`, filled as the model is called
    :raises TypeError: if ``model`` is not a ``torch.nn.Module``

    Arguments and outputs are deep-copied when the call happens: the cache that
    ``generate`` keeps appending to does not rewrite what was recorded.

    >>> import torch
    >>> from exportcheck.observe import observe
    >>> model = torch.nn.Linear(4, 2)
    >>> with observe(model) as calls:
    ...     _ = model(torch.rand(3, 4))
    >>> len(calls), tuple(calls[0].args[0].shape), "forward" in vars(model)
    (1, (3, 4), False)
    """
    if not isinstance(model, torch.nn.Module):
        raise TypeError(
            f"observe: expected a torch.nn.Module, got {type(model).__name__}; pass the "
            "model itself (for a pipeline, pipeline.model)."
        )
    if max_calls is not None and (
        isinstance(max_calls, bool) or not isinstance(max_calls, int) or max_calls < 0
    ):
        raise ValueError(
            f"observe: max_calls must be a non-negative int or None, got {max_calls!r}."
        )
    saved = vars(model).get("forward", _MISSING)
    original = model.forward
    calls = ObservedCalls(model, original)

    @functools.wraps(original)
    def recording_forward(*args: Any, **kwargs: Any) -> Any:
        if torch.compiler.is_compiling():  # traced by torch.export or torch.compile
            return original(*args, **kwargs)
        if max_calls is not None and len(calls._calls) >= max_calls:
            calls.unrecorded += 1
            return original(*args, **kwargs)
        entry = ObservedCall(len(calls._calls), _snapshot(args), _snapshot(kwargs))
        calls._calls.append(entry)
        try:
            output = original(*args, **kwargs)
        except Exception as e:
            entry.error = _first_line(e)
            raise
        if record_outputs:
            entry.output = _snapshot(output)
        return output

    model.forward = recording_forward
    try:
        yield calls
    finally:
        if saved is _MISSING:
            vars(model).pop("forward", None)
        else:
            vars(model)["forward"] = saved
