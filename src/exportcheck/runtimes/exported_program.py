"""exported_program: the ExportedProgram itself, run as a module (``program.module()``)."""

from __future__ import annotations

import copy
from typing import Any

from . import Runtime, register

__all__ = ["ExportedProgramRuntime"]


class ExportedProgramRuntime(Runtime):
    """Runs ``ExportedProgram.module()`` on each input set (deep-copied: a cache is mutated)."""

    name = "exported_program"
    runner = "exported"
    title = "ExportedProgram"
    stages = (("exported_run", "ExportedProgram correct on every input set", ("load", "run")),)

    def load(self, artifact: Any) -> Any:
        # Built while the caches are pytree nodes: its input flattening code is
        # generated from the registrations.
        return artifact.module()

    def run(self, loaded: Any, feeds: dict[str, Any]) -> Any:
        return loaded(**copy.deepcopy(feeds))


register(ExportedProgramRuntime(), exporter="export")
