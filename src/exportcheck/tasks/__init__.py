"""Tasks: what a model is exported for, one file each, discovered.

A task (``tasks/<task>.py``) names the transformers auto mapping it covers, builds the
input sets of a model and their dynamic shapes (:meth:`Task.build`), lists the
**components** it exports (:meth:`Task.components`: one graph, or several such as an
encoder and a decoder step) and labels an input set for reports. :func:`untrained_model`
resolves a source into a config and hands it to the task.

Adding a task is adding one file that defines a :class:`Task` subclass and calls
:func:`register` with an instance.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import pkgutil
from typing import Any

from ..models import UntrainedModel, pretrained_weights, resolve_config

__all__ = [
    "TASKS",
    "Component",
    "Generation",
    "Task",
    "get_task",
    "register",
    "tasks_of",
    "untrained_model",
]


@dataclasses.dataclass
class Component:
    """One graph a task exports: the module, its input sets and their dynamic shapes.

    * ``name``: ``model`` for a task that exports one graph, else the part
      (``encoder``, ``decoder``, ...)
    * ``module``: what ``torch.export.export`` traces
    * ``input_sets``: keyword arguments of each call; the first is traced
    * ``dynamic_shapes``: for every keyword argument, its dynamic dimensions
    * ``labels``: one short description per input set (``batch=2 seq=3 cache=30``)
    """

    name: str
    module: Any
    input_sets: list[dict[str, Any]]
    dynamic_shapes: dict[str, Any]
    labels: list[str]


@dataclasses.dataclass
class Generation:
    """A greedy generation: what was chosen at each step and from which logits.

    * ``tokens``: ``(batch, new_tokens)`` int64, the argmax of each step's logits
    * ``logits``: one ``(batch, vocab)`` tensor per generated token
    * ``calls``: how many times the components were called
    * ``prefill``: how the prompt went in (through the components, or partly eager)
    * ``note``: what the reference found out about the model, if anything (how its
      ``generate`` calls it differently from a plain forward)
    """

    tokens: Any
    logits: list[Any]
    calls: int = 0
    prefill: str = ""
    note: str = ""


class Task:
    """The base class of tasks; a subclass sets ``name`` and ``mapping``.

    A task that generates sets ``new_tokens`` and implements :meth:`generate_eager`
    (the reference: transformers' ``generate(do_sample=False)``) and :meth:`generate`
    (the same greedy loop, step by step, through any runtime's components).
    """

    #: the task name, as ``pipeline()`` spells it (``text-generation``)
    name: str = ""
    #: the name of the transformers auto mapping of model types to model classes
    mapping: str = ""
    #: which task a model type gets when none is asked for: the lowest rank whose
    #: mapping has it (a model type with a causal LM is validated as one by default)
    rank: int = 100
    #: the columns of :func:`exportcheck.compare.depth` that apply to this task
    columns: tuple[str, ...] = (
        "state",
        "distinct_shapes",
        "padded",
        "eager_consistent",
        "generation",
    )

    #: what a sweep of this task checks, one paragraph for its status page
    status_intro: str = ""

    def model_types(self) -> list[str]:
        """The model types of the installed transformers' mapping of this task."""
        from transformers.models.auto import modeling_auto

        return sorted(getattr(modeling_auto, self.mapping, {}))

    def build(self, config: Any, *, seed: int = 0) -> UntrainedModel:
        """The model of ``config`` with random weights, its input sets and dynamic shapes."""
        raise NotImplementedError

    def components(self, m: UntrainedModel) -> list[Component]:
        """The graphs this task exports for ``m``; one by default: the whole model."""
        return [
            Component(
                name="model",
                module=m.model,
                input_sets=m.input_sets,
                dynamic_shapes=m.dynamic_shapes,
                labels=[self.label(m, feeds) for feeds in m.input_sets],
            )
        ]

    def label(self, m: UntrainedModel, feeds: dict[str, Any]) -> str:
        """A short description of one input set, for reports."""
        return ", ".join(f"{k}" for k in feeds)

    def check_eager(self, m: UntrainedModel, atol: float) -> list[dict[str, Any]]:
        """Checks of eager against itself before it serves as the reference: one dict per
        input set checked (``input_set`` index, ``abs`` difference, ``ok``); none by
        default. Text generation compares each decode step with a full forward."""
        return []

    #: tokens the generation stage generates; 0 for a task that does not generate
    new_tokens: int = 0

    def cannot_generate(self, m: UntrainedModel) -> str | None:
        """Why ``m`` cannot be driven through a generation loop, None when it can."""
        return None if self.new_tokens else f"the {self.name} task does not generate"

    def generate_eager(self, m: UntrainedModel) -> Generation:
        """The reference: transformers' greedy ``generate`` on the task's prompt."""
        raise NotImplementedError

    def generate(self, m: UntrainedModel, call: Any, forced: Any) -> Generation:
        """The greedy loop through ``call(component_name, feeds) -> outputs``, each step's
        state fed back as the next step's input.

        ``forced`` holds the reference's tokens: each step feeds ``forced[:, t]`` and
        records the argmax of its own logits in :attr:`Generation.tokens`, so that one
        token decided by a tie of two logits does not make every later step differ.
        """
        raise NotImplementedError


#: task name -> Task
TASKS: dict[str, Task] = {}


def register(task: Task) -> Task:
    """Add ``task`` to :data:`TASKS`."""
    if not task.name or task.name in TASKS:
        raise ValueError(f"register: task name {task.name!r} is empty or already registered.")
    TASKS[task.name] = task
    return task


def get_task(name: str) -> Task:
    """The registered task called ``name``, or a ValueError listing the tasks there are."""
    if name not in TASKS:
        close = difflib.get_close_matches(str(name), list(TASKS), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(
            f"task {name!r} does not exist.{hint} exportcheck supports: {', '.join(sorted(TASKS))}."
        )
    return TASKS[name]


def tasks_of(model_type: str) -> list[str]:
    """The registered tasks whose mapping has ``model_type``, the default one first."""
    having = [task for task in TASKS.values() if model_type in task.model_types()]
    return [task.name for task in sorted(having, key=lambda t: t.rank)]


def untrained_model(
    source: Any,
    task: str | None = None,
    *,
    seed: int = 0,
    shrink: bool = False,
    pretrained: bool = False,
    **config_overrides: Any,
) -> UntrainedModel:
    """Build a model with random weights, the input sets of a task and their dynamic shapes.

    :param source: what :func:`exportcheck.models.resolve_config` reads: a transformers
        ``model_type`` (``llama``: shrunk by :func:`exportcheck.tiny_config`), a hub id
        whose config ships with exportcheck (``arnir0/Tiny-LLM``), a ``config.json``
        path, a model folder, any other hub id (its ``config.json`` is downloaded when
        the hub is reachable), a config object or a config dict
    :param task: a registered task (:data:`TASKS`); by default the first one whose
        transformers mapping has the model type
    :param seed: seeds the weights and the inputs
    :param shrink: shrink a hub config or a config object with the rules of
        :func:`exportcheck.tiny_config` (a model_type is always shrunk); the
        architecture (layer kinds, attention variants, experts) stays
    :param pretrained: load the weights of the model folder ``source`` (safetensors or
        ``pytorch_model.bin``, as ``save_pretrained`` writes them) instead of random ones;
        the folder must hold every parameter of the task's model
    :param config_overrides: config attributes to set (``num_hidden_layers=1``, ...)
    :return: an :class:`UntrainedModel`

    >>> from exportcheck import untrained_model
    >>> m = untrained_model("arnir0/Tiny-LLM")
    >>> print(m.describe().splitlines()[0])
    inputs: dict(input_ids:T7s2x3,attention_mask:T7s2x33,cache:DynamicCache(key_cache=#1[T1s2x1x30x96], value_cache=#1[T1s2x1x30x96]))
    """
    if task is not None:
        chosen = get_task(task)
    folder = _weights_folder(source, shrink, config_overrides) if pretrained else None
    config = resolve_config(source, config_overrides, shrink=shrink)
    model_type = getattr(config, "model_type", None)
    if task is None:
        names = tasks_of(model_type)
        if not names:
            raise ValueError(
                f"untrained_model: model type {model_type!r} is in none of the transformers "
                f"mappings of the tasks exportcheck supports ({', '.join(sorted(TASKS))})."
            )
        chosen = TASKS[names[0]]
    elif model_type not in chosen.model_types():
        has = tasks_of(model_type)
        raise ValueError(
            f"untrained_model: model type {model_type!r} has no {chosen.name} model in "
            f"transformers ({chosen.mapping}); "
            + (
                f"it has: {', '.join(has)}."
                if has
                else f"exportcheck supports {', '.join(sorted(TASKS))}, and it has none of them."
            )
        )
    if folder is None:
        return chosen.build(config, seed=seed)
    with pretrained_weights(folder):
        m = chosen.build(config, seed=seed)
    m.notes.append(f"pretrained weights from {folder}")
    return m


def _weights_folder(source: Any, shrink: bool, overrides: dict[str, Any]) -> str:
    """The model folder whose weights ``untrained_model(source, pretrained=True)`` loads,
    or a ValueError saying what to pass instead."""
    import os

    from ..models.sources import _classify
    from ..models.untrained import weight_files

    if shrink or overrides:
        raise ValueError(
            "untrained_model: pretrained weights fit the folder's own config only: drop "
            f"shrink and the config overrides ({', '.join(overrides) or 'shrink'})."
        )
    kind, value = _classify(source)
    if kind != "path":
        raise ValueError(
            f"untrained_model: pretrained=True reads the weights of a model folder, and "
            f"{source!r} is a {kind.replace('_', ' ')}; download the model first "
            "(huggingface-cli download ORG/NAME --local-dir DIR) and pass DIR."
        )
    folder = value if os.path.isdir(value) else os.path.dirname(value) or "."
    if not weight_files(folder):
        raise ValueError(
            f"untrained_model: {folder} holds no weights (model.safetensors, its index, or "
            "pytorch_model.bin): pass the folder save_pretrained wrote, or drop pretrained."
        )
    return folder


def _discover() -> None:
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
        if not info.name.startswith("_"):
            importlib.import_module(f"{__name__}.{info.name}")


_discover()
