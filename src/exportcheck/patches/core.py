"""The one patch mechanism: a :class:`Patch` says what it fixes; a :class:`Patcher` applies it.

A patch replaces attributes (methods, module functions, config fields) for the duration
of a ``with`` block and puts back exactly what was there on exit, also after an
exception. Every patch goes through :meth:`Patcher.replace`, so they all nest the same
way: entering a patch that is already active changes nothing and leaves the outer
replacement in place, and the replaced value stays reachable as ``original``.

A replacement function is wrapped to count its calls: :attr:`PatchRecord.changed`
says whether the patch took effect for the model that ran inside the block.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import functools
import sys
from collections.abc import Callable, Iterator
from typing import Any

__all__ = ["RUNTIMES", "Patch", "PatchRecord", "Patcher", "module_of", "passthrough"]

#: The runtimes a patch can be needed for: ``exported_program`` (torch.export and what
#: runs the ExportedProgram) and ``onnx`` (the conversion to ONNX and onnxruntime).
RUNTIMES = ("exported_program", "onnx")

_MARK = "__exportcheck_patch__"
# Set by passthrough() inside the replacement being called: the call changed nothing.
_PASSED: contextvars.ContextVar[list[bool] | None] = contextvars.ContextVar(
    "exportcheck_passed", default=None
)


def passthrough(original: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Call the replaced function unchanged, from a replacement's fallback branch.

    The call then does not count as a change in the :class:`PatchRecord` (a patch whose
    replacement only fell back to the original changed nothing for the model).
    """
    box = _PASSED.get()
    if box is not None:
        box[0] = True
    return original(*args, **kwargs)


_MISSING = object()


def module_of(name: str) -> Any:
    """The module ``name`` if it is imported, else None: a patch of a module nobody
    imported concerns no model in use."""
    return sys.modules.get(name)


@dataclasses.dataclass
class PatchRecord:
    """What one patch did inside one block.

    * ``replaced``: ``owner.attribute`` of every replacement installed
    * ``calls``: how many calls of the replacement functions did something else than
      fall back to the original (:func:`passthrough`)
    * ``entered``: context managers entered (registrations), which count as a change
    """

    name: str
    replaced: list[str] = dataclasses.field(default_factory=list)
    calls: int = 0
    entered: int = 0
    values: int = 0  # non-callable values replaced (config fields)

    @property
    def changed(self) -> bool:
        """True when the patch changed what ran: a replacement was called, a value was
        replaced, or a registration was entered."""
        return self.calls > 0 or self.values > 0 or self.entered > 0


class Patcher:
    """Installs the replacements of one patch and restores them in reverse order."""

    def __init__(self, record: PatchRecord, stack: contextlib.ExitStack) -> None:
        self.record = record
        self._stack = stack

    def replace(self, owner: Any, attribute: str, value: Any) -> bool:
        """Set ``owner.attribute`` to ``value`` until the block ends.

        :param owner: a class, a module, a module name (ignored when not imported), a
            config or any object; None is ignored
        :param attribute: the attribute to replace; ignored when ``owner`` lacks it
        :param value: a function (wrapped to count its calls; it finds the replaced
            value in its ``original`` attribute), a ``staticmethod``, or a plain value
        :return: True if something was replaced, False when there was nothing to
            replace or the same patch already replaced it (nested use)
        """
        if isinstance(owner, str):
            owner = module_of(owner)
        if owner is None or not hasattr(owner, attribute):
            return False
        current = vars(owner).get(attribute, _MISSING) if hasattr(owner, "__dict__") else _MISSING
        looked_up = getattr(owner, attribute)
        inner = current.__func__ if isinstance(current, staticmethod) else looked_up
        if getattr(inner, _MARK, None) == self.record.name:
            return False  # this patch is already active: the outer entry stays in place
        new = self._wrap(value, looked_up, current)
        setattr(owner, attribute, new)
        label = getattr(owner, "__name__", type(owner).__name__)
        self.record.replaced.append(f"{label}.{attribute}")

        def restore() -> None:
            if current is _MISSING:  # inherited (a base class's method): drop ours
                delattr(owner, attribute)
            else:
                setattr(owner, attribute, current)

        self._stack.callback(restore)
        return True

    def replace_in(self, module: str, owner: str | None, attribute: str, value: Any) -> bool:
        """:meth:`replace` on ``module.owner`` (or the module itself when ``owner`` is None);
        nothing happens when the module is not imported or has no such owner."""
        target = module_of(module)
        if target is not None and owner is not None:
            target = getattr(target, owner, None)
        return self.replace(target, attribute, value)

    def enter(self, manager: contextlib.AbstractContextManager[Any]) -> Any:
        """Enter a context manager (a registration) for the rest of the block."""
        self.record.entered += 1
        return self._stack.enter_context(manager)

    def _wrap(self, value: Any, looked_up: Any, current: Any) -> Any:
        record = self.record
        is_static = isinstance(value, staticmethod)
        function = value.__func__ if is_static else value
        if not callable(function) or isinstance(function, type):
            record.values += 1
            return value
        # The replaced function, as the replacement should call it.
        original = current.__func__ if isinstance(current, staticmethod) else looked_up

        @functools.wraps(function)
        def counted(*args: Any, **kwargs: Any) -> Any:
            box = [False]
            token = _PASSED.set(box)
            try:
                return function(*args, **kwargs)
            finally:
                _PASSED.reset(token)
                if not box[0]:
                    record.calls += 1

        counted.original = original  # type: ignore[attr-defined]
        function.original = original  # type: ignore[attr-defined]
        setattr(counted, _MARK, record.name)
        return staticmethod(counted) if is_static else counted


@dataclasses.dataclass(frozen=True)
class Patch:
    """A fix for one known breakage.

    * ``name``: how reports and ``export_patches(exclude=...)`` call it
    * ``fixes``: the exact error message (or wrong result) it fixes
    * ``remove_when``: the condition under which it can be deleted
    * ``install``: ``install(patcher, model)`` declares the replacements with
      :meth:`Patcher.replace`; ``model`` may be None
    * ``runtimes``: the runtimes that need it (see :data:`RUNTIMES`): a fix only the
      ONNX conversion needs lists ``("onnx",)``
    * ``model_types``: the model types it was written for (empty: any model)
    * ``corrects_eager``: it corrects a wrong result of eager transformers, so the
      eager reference of these models is computed with it
    * ``doc``: the full explanation (why the numbers are the same); by default the
      docstring of ``install``
    """

    name: str
    fixes: str
    remove_when: str
    install: Callable[[Patcher, Any], None]
    runtimes: tuple[str, ...] = RUNTIMES
    model_types: tuple[str, ...] = ()
    corrects_eager: bool = False
    doc: str = ""

    def __post_init__(self) -> None:
        unknown = set(self.runtimes) - set(RUNTIMES)
        if unknown or not self.runtimes:
            raise ValueError(
                f"Patch {self.name!r}: runtimes must be a non-empty subset of {RUNTIMES}, "
                f"got {self.runtimes!r}."
            )
        if not self.fixes or not self.remove_when:
            raise ValueError(f"Patch {self.name!r}: say what it fixes and when to remove it.")
        if not self.doc and getattr(self.install, "__doc__", None):
            object.__setattr__(self, "doc", self.install.__doc__)

    @contextlib.contextmanager
    def apply(self, model: Any = None) -> Iterator[PatchRecord]:
        """Apply the patch inside a ``with`` block; yields its :class:`PatchRecord`."""
        record = PatchRecord(self.name)
        with contextlib.ExitStack() as stack:
            self.install(Patcher(record, stack), model)
            yield record
