"""ObservedCalls.check(): run an ExportedProgram on observed calls, compare with eager."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from ..compare import max_diff
from ._common import (
    _MISSING,
    _absence,
    _arrange,
    _cell,
    _first_line,
    _name,
    _snapshot,
    _structure,
)

if TYPE_CHECKING:
    from .infer import InferredInputs


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


def check_call(
    calls: Any,
    index: int,
    module: Any,
    inferred: InferredInputs,
    atol: float,
    recompute: bool,
) -> CallCheck:
    """Run the exported module on observed call ``index`` and compare with eager."""
    call = calls[index]
    if call.error is not None:
        return CallCheck(index, "skipped", reason=f"the call raised {call.error}")
    view = calls._view(call)
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
        expected = calls._forward(*_snapshot(call.args), **_snapshot(call.kwargs))
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
