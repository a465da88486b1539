"""What is special about model families, one file each, registered into the generic code.

A family file (``families/<family>.py``) describes what the generic rules of
exportcheck get wrong for its model types, and nothing else does:

* ``config_arguments``: constructor arguments without which the default config of a
  model type is invalid (``untrained_model(model_type)`` builds the default with them);
* ``config_fixes``: attributes set after the generic shrinking of
  :func:`exportcheck.tiny_config` (a dotted key reaches a sub-config);
* ``known_failures``: model types that cannot be built or run here, with a regular
  expression of the error they must still raise (the tests check it, so a fix upstream
  shows up);
* ``task_config_fixes``: like ``config_fixes``, for one task only, keyed by task then
  model type: what the model class of that task needs and another task's must not have
  (``is_decoder=False`` for a masked LM whose causal LM needs ``True``); the task applies
  them to the config before it builds the model;
* ``task_known_failures``: like ``known_failures``, for one task only, keyed by task then
  model type: the regular expression of the error its validation still ends with;
* ``one_token_decode`` / ``no_cache``: decode steps that take one new token, or that
  cannot be checked with a cache, and why;
* ``no_generation``: model types whose ``generate`` is not a loop of plain decode
  steps (a placeholder token appended and predicted, codebooks offset by a delay
  pattern), with the reason: the generation stage is not run and the row says why;
* ``generation_inputs``: model types whose ``generate`` rewrites the ids before each step
  (codebooks offset by a delay pattern), with ``(prompt_tokens, settings, feed,
  reason)``: the length of the prompt its ``generate`` handles (None: the task's),
  ``settings(model)`` the generation settings its ``generate`` needs, and
  ``feed(model, prompt ids, new tokens, settings)`` the ``(prompt ids, new tokens)`` as
  ``generate`` feeds them to the decode steps (for an encoder-decoder: the decoder
  prompt as ``generate`` is given it and the new tokens, each as it is fed to the
  decoder steps);
* ``decoder_prompts``: encoder-decoder model types whose ``generate`` is given a decoder
  prompt built by their processor (Dia's delay pattern), with ``(prompt(model, batch),
  reason)``: the decoder keyword arguments the processor returns for ``batch`` rows;
* ``logits_processors``: model types whose ``generate`` applies logits processors that no
  generation setting turns off, with ``(processors(model, settings, max_length),
  reason)``: a fresh callable ``(ids fed so far, logits) -> scores``, whose argmax is the
  token ``generate`` picks (the compared logits stay the model's own);
* ``input_builders``: a function that builds the input sets of a model type that does not
  take the task's usual inputs (a drafter fed by its main model);
* ``input_layouts``: how a model type's inputs differ from what the task derives from
  its config (an audio channel dimension, several values per mel bin, several ids per
  decoder position: ``decoder_channels``), and why;
* ``patches``: the :class:`exportcheck.patches.Patch` objects the family needs, next to
  their rewrite code;
* ``setup``: a function called once at registration, to hook into a leaf module
  (cache slots of :mod:`exportcheck.caches.pytrees`).

Every value is keyed by model type, with a reason. :func:`register` merges a family into
the tables below and refuses a model type claimed twice for the same table. Family files
are discovered: adding one is adding a file that calls :func:`register`.
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from collections.abc import Callable
from typing import Any

from ..patches import register_patch
from ..patches.core import Patch

__all__ = [
    "CONFIG_ARGUMENTS",
    "CONFIG_FIXES",
    "DECODER_PROMPTS",
    "FAMILIES",
    "GENERATION_INPUTS",
    "INPUT_BUILDERS",
    "INPUT_LAYOUTS",
    "KNOWN_FAILURES",
    "LOGITS_PROCESSORS",
    "NO_CACHE",
    "NO_GENERATION",
    "ONE_TOKEN_DECODE",
    "TASK_CONFIG_FIXES",
    "TASK_KNOWN_FAILURES",
    "Family",
    "family_of",
    "register",
]


@dataclasses.dataclass(frozen=True)
class Family:
    """The special needs of one model family (see the module documentation)."""

    name: str
    model_types: tuple[str, ...]
    config_arguments: dict[str, tuple[dict[str, Any], str]] = dataclasses.field(
        default_factory=dict
    )
    config_fixes: dict[str, tuple[dict[str, Any], str]] = dataclasses.field(default_factory=dict)
    known_failures: dict[str, tuple[str, str]] = dataclasses.field(default_factory=dict)
    task_config_fixes: dict[str, dict[str, tuple[dict[str, Any], str]]] = dataclasses.field(
        default_factory=dict
    )
    task_known_failures: dict[str, dict[str, tuple[str, str]]] = dataclasses.field(
        default_factory=dict
    )
    one_token_decode: dict[str, str] = dataclasses.field(default_factory=dict)
    no_cache: dict[str, str] = dataclasses.field(default_factory=dict)
    no_generation: dict[str, str] = dataclasses.field(default_factory=dict)
    generation_inputs: dict[str, tuple[int | None, Callable[..., Any], Callable[..., Any], str]] = (
        dataclasses.field(default_factory=dict)
    )
    decoder_prompts: dict[str, tuple[Callable[..., Any], str]] = dataclasses.field(
        default_factory=dict
    )
    logits_processors: dict[str, tuple[Callable[..., Any], str]] = dataclasses.field(
        default_factory=dict
    )
    input_builders: dict[str, Callable[..., Any]] = dataclasses.field(default_factory=dict)
    input_layouts: dict[str, tuple[dict[str, Any], str]] = dataclasses.field(default_factory=dict)
    patches: tuple[Patch, ...] = ()
    setup: Callable[[], None] | None = None


#: family name -> Family
FAMILIES: dict[str, Family] = {}
#: model_type -> (constructor arguments, reason)
CONFIG_ARGUMENTS: dict[str, tuple[dict[str, Any], str]] = {}
#: model_type -> (overrides applied after shrinking, reason)
CONFIG_FIXES: dict[str, tuple[dict[str, Any], str]] = {}
#: model_type -> (regular expression of the error, reason)
KNOWN_FAILURES: dict[str, tuple[str, str]] = {}
#: model_type -> why its decode step takes one new token
ONE_TOKEN_DECODE: dict[str, str] = {}
#: model_type -> why it is checked without a cache
NO_CACHE: dict[str, str] = {}
#: model_type -> why its generate is not a loop of the exported step
NO_GENERATION: dict[str, str] = {}
#: model_type -> (prompt length, generate's settings, the ids its steps are fed, reason)
GENERATION_INPUTS: dict[str, tuple[int | None, Callable[..., Any], Callable[..., Any], str]] = {}
#: model_type -> (the decoder inputs its processor gives generate, reason)
DECODER_PROMPTS: dict[str, tuple[Callable[..., Any], str]] = {}
#: model_type -> (the logits processors its generate always applies, reason)
LOGITS_PROCESSORS: dict[str, tuple[Callable[..., Any], str]] = {}
#: model_type -> a function building its input sets instead of the task's
INPUT_BUILDERS: dict[str, Callable[..., Any]] = {}
#: model_type -> (how its inputs differ from what a task derives from the config, reason)
INPUT_LAYOUTS: dict[str, tuple[dict[str, Any], str]] = {}
#: task -> model_type -> (overrides the task applies before building the model, reason)
TASK_CONFIG_FIXES: dict[str, dict[str, tuple[dict[str, Any], str]]] = {}
#: task -> model_type -> (regular expression of the error, reason)
TASK_KNOWN_FAILURES: dict[str, dict[str, tuple[str, str]]] = {}

_TABLES = {
    "config_arguments": CONFIG_ARGUMENTS,
    "config_fixes": CONFIG_FIXES,
    "known_failures": KNOWN_FAILURES,
    "one_token_decode": ONE_TOKEN_DECODE,
    "no_cache": NO_CACHE,
    "no_generation": NO_GENERATION,
    "generation_inputs": GENERATION_INPUTS,
    "decoder_prompts": DECODER_PROMPTS,
    "logits_processors": LOGITS_PROCESSORS,
    "input_builders": INPUT_BUILDERS,
    "input_layouts": INPUT_LAYOUTS,
}
#: the tables keyed by task, then by model type
_TASK_TABLES = {
    "task_config_fixes": TASK_CONFIG_FIXES,
    "task_known_failures": TASK_KNOWN_FAILURES,
}
_OWNER: dict[str, str] = {}


def register(family: Family) -> Family:
    """Merge ``family`` into the tables and its patches into :mod:`exportcheck.patches`."""
    if family.name in FAMILIES:
        raise ValueError(f"register: a family named {family.name!r} is already registered.")
    merges = [(name, table, getattr(family, name)) for name, table in _TABLES.items()]
    for name, by_task in _TASK_TABLES.items():
        for task, entries in getattr(family, name).items():
            merges.append((f"{name}[{task!r}]", by_task.setdefault(task, {}), entries))
    for table_name, table, entries in merges:
        for model_type in entries:
            if model_type not in family.model_types:
                raise ValueError(
                    f"register: family {family.name!r} has a {table_name} entry for "
                    f"{model_type!r}, which is not in its model_types."
                )
            if model_type in table:
                raise ValueError(
                    f"register: {table_name} of {model_type!r} is given by both "
                    f"{_OWNER[f'{table_name}:{model_type}']!r} and {family.name!r}."
                )
    for table_name, table, entries in merges:
        for model_type, value in entries.items():
            table[model_type] = value
            _OWNER[f"{table_name}:{model_type}"] = family.name
    for patch in family.patches:
        register_patch(patch, family=family.name)
    if family.setup is not None:
        family.setup()
    FAMILIES[family.name] = family
    return family


def family_of(model_type: str) -> Family | None:
    """The registered family that lists ``model_type``, None if none does."""
    return next((f for f in FAMILIES.values() if model_type in f.model_types), None)


def _discover() -> None:
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
        if not info.name.startswith("_"):
            importlib.import_module(f"{__name__}.{info.name}")


_discover()
