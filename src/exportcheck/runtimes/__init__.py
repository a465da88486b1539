"""Runtimes: what runs an exported program, one file each, discovered.

A runtime (``runtimes/<runtime>.py``) turns an ExportedProgram into what it runs
(:meth:`Runtime.convert`), loads that (:meth:`Runtime.load`) and runs one input set
(:meth:`Runtime.run`). It groups these steps into the stages a validation reports
(:attr:`Runtime.stages`), with their titles. Validation derives its stages from the
task's components and the runtimes asked for; the status report and the command line
read the runtimes from here.

Adding a runtime is adding one file that defines a :class:`Runtime` subclass and calls
:func:`register` with an instance.
"""

from __future__ import annotations

import difflib
import importlib
import pkgutil
from typing import Any

__all__ = ["EXPORTERS", "RUNTIMES", "Runtime", "get_runtime", "register", "runtimes_of"]


class Runtime:
    """The base class of runtimes.

    * ``name``: how reports and ``validate(runtimes=...)`` call it
    * ``runner``: the short label of its runs in reports (``exported``, ``ort``)
    * ``title``: a readable name (``onnxruntime``)
    * ``stages``: ``(stage name, title, steps)`` in order, where steps are among
      ``convert``, ``load`` and ``run``; ``run`` compares every input set with eager
    * ``patched_as``: the runtime whose patches it needs (see
      :data:`exportcheck.patches.RUNTIMES`), when not its own name: a graph rewritten
      after the ONNX conversion needs the conversion's
    """

    name: str = ""
    runner: str = ""
    title: str = ""
    patched_as: str = ""
    stages: tuple[tuple[str, str, tuple[str, ...]], ...] = ()

    def convert(self, program: Any, component: Any, folder: str) -> Any:
        """The artifact this runtime runs, made from an ExportedProgram."""
        return program

    def load(self, artifact: Any) -> Any:
        """What :meth:`run` calls, loaded from the artifact."""
        return artifact

    def run(self, loaded: Any, feeds: dict[str, Any]) -> Any:
        """The outputs of one input set."""
        raise NotImplementedError

    def step(self, loaded: Any, feeds: dict[str, Any], program: Any) -> Any:
        """The outputs of one call structured as the model returns them (a transformers
        output with its cache), so that a generation loop can feed the state back.
        ``program`` is the ExportedProgram the artifact was made from (its output spec)."""
        return self.run(loaded, feeds)

    def details(self, artifact: Any) -> dict[str, Any]:
        """What a report keeps of the artifact (size, operators, ...)."""
        return {}

    def describe(self, details: dict[str, Any]) -> str:
        """One line about :meth:`details`, for the report's table."""
        return ""


#: runtime name -> Runtime, in registration order
RUNTIMES: dict[str, Runtime] = {}

#: What ``--exporter`` names: the runtimes each choice validates.
EXPORTERS: dict[str, tuple[str, ...]] = {}


def register(runtime: Runtime, exporter: str | None = None) -> Runtime:
    """Add ``runtime`` to :data:`RUNTIMES`; ``exporter`` names the ``--exporter`` choice
    that validates it, with every runtime registered before it."""
    if not runtime.name or runtime.name in RUNTIMES:
        raise ValueError(f"register: runtime name {runtime.name!r} is empty or already taken.")
    RUNTIMES[runtime.name] = runtime
    if exporter is not None:
        EXPORTERS[exporter] = tuple(RUNTIMES)
    return runtime


def get_runtime(name: str) -> Runtime:
    """The registered runtime called ``name``, or a ValueError listing the runtimes there are."""
    if name not in RUNTIMES:
        close = difflib.get_close_matches(str(name), list(RUNTIMES), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"runtime {name!r} does not exist.{hint} Runtimes: {', '.join(RUNTIMES)}.")
    return RUNTIMES[name]


def runtimes_of(exporter: str) -> tuple[str, ...]:
    """The runtimes an ``--exporter`` choice validates."""
    if exporter not in EXPORTERS:
        raise ValueError(f"exporter must be one of {tuple(EXPORTERS)}, got {exporter!r}.")
    return EXPORTERS[exporter]


def _discover() -> None:
    # exported_program first: every other runtime starts from its ExportedProgram.
    names = sorted(
        (i.name for i in pkgutil.iter_modules(__path__) if not i.name.startswith("_")),
        key=lambda n: (n != "exported_program", n),
    )
    for name in names:
        importlib.import_module(f"{__name__}.{name}")


_discover()
