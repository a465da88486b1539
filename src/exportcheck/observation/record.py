"""observe(): record deep copies of every call of a model's forward."""

from __future__ import annotations

import collections.abc
import contextlib
import dataclasses
import functools
import inspect
from collections.abc import Iterable, Iterator
from typing import Any

import torch

from ..caches.pytrees import cache_pytrees
from ._common import (
    _CACHE_PARAMETERS,
    _MISSING,
    Key,
    _cell,
    _first_line,
    _is_cache,
    _name,
    _snapshot,
    _View,
)
from .check import CallCheck, check_call
from .infer import Inference, InferredInputs


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
        >>> from exportcheck import observe
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
        >>> from exportcheck import observe
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
            inferred = Inference(self, usable).run(call)
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
        >>> from exportcheck import observe
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
        results = []
        with cache_pytrees(), torch.no_grad():
            module = exported_program.module()
            for i in indices:
                results.append(check_call(self, i, module, inferred, atol, recompute))
        return results


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
    >>> from exportcheck import observe
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
