"""Text encoders: one graph from token ids and attention mask, as a tokenizer pads them.

Shared by the fill-mask and feature-extraction tasks. Input sets: (batch, sequence
length) = (2, 8) for the export, then (1, 5), (3, 12), (4, 7), (2, 16) with its first row
padded by 6 and (3, 9) with its first two rows padded by 3 and 5 (tokenizers pad on the
right: pad token ids, mask 0), and one at the declared upper bounds (``BATCH_MAX``,
:func:`exportcheck.dims.sequence_bound`). Dynamic dimensions: ``batch`` and
``seq_length``, shared by the ids and the mask.
"""

from __future__ import annotations

import inspect
from typing import Any

from ..dims import BATCH_MAX, sequence_bound
from ..families import TASK_CONFIG_FIXES
from ..models import UntrainedModel, prepare_weights, set_attributes
from . import Task
from ._tokens import pad_token, random_ids

#: (batch, sequence length, padding of each row) of each input set but the last, which
#: is at the declared upper bounds
SHAPES = [
    (2, 8, ()),
    (1, 5, ()),
    (3, 12, ()),
    (4, 7, ()),
    (2, 16, (6,)),
    (3, 9, (3, 5)),
]


def token_inputs(
    config: Any, batch: int, length: int, padding: tuple[int, ...], generator: Any
) -> dict[str, Any]:
    """``input_ids`` and ``attention_mask`` of one batch, rows right-padded by
    ``padding`` (row i by ``padding[i]`` tokens) with the padding token."""
    import torch

    ids = random_ids(config, (batch, length), generator, encoder=True)
    mask = torch.ones((batch, length), dtype=torch.int64)
    pad = pad_token(config, encoder=True)
    for row, count in enumerate(padding):
        if count:
            mask[row, -count:] = 0
            if pad is not None:
                ids[row, -count:] = pad
    return {"input_ids": ids, "attention_mask": mask}


def task_config(config: Any, task: str) -> tuple[Any, list[str]]:
    """``config`` with the ``task_config_fixes`` of its model type for ``task``
    (:data:`exportcheck.families.TASK_CONFIG_FIXES`) set on a copy, and a note saying
    which attributes they changed and why (none when they changed nothing)."""
    import copy

    overrides, reason = TASK_CONFIG_FIXES.get(task, {}).get(
        getattr(config, "model_type", None), ({}, "")
    )
    missing = object()
    changed = {k: v for k, v in overrides.items() if "." in k or getattr(config, k, missing) != v}
    if not changed:
        return config, []
    config = set_attributes(copy.deepcopy(config), changed)
    listed = ", ".join(f"{k}={v!r}" for k, v in changed.items())
    return config, [f"{task} config: {listed}: {reason}"]


class TextEncoder(Task):
    """The base of one-graph text tasks; a subclass names its auto class."""

    #: the transformers auto class that builds the model (``AutoModelForMaskedLM``)
    auto_class: str = ""
    #: what the graph returns, for the docs (``logits``, ``last_hidden_state``)
    output: str = ""
    columns = ("distinct_shapes", "padded")

    @property
    def status_intro(self) -> str:  # type: ignore[override]
        return (
            f"Every model type of the installed transformers' ``{self.mapping}``, built "
            f"untrained from a tiny config with ``{self.auto_class}``, exported with "
            "``torch.export`` (token ids and attention mask in, dynamic batch and sequence "
            f"length; ``{self.output}`` out) and converted to ONNX, then run on seven input "
            "sets of distinct shapes (six the export did not see: two right-padded as a "
            "tokenizer pads a batch, one at the upper bounds the export declares) and "
            "compared with eager PyTorch."
        )

    def build(self, config: Any, *, seed: int = 0) -> UntrainedModel:
        import copy

        import torch
        import transformers

        notes = []
        if getattr(config, "is_decoder", False):
            # An encoder attends both ways; the tiny config of a model type that also
            # has a causal LM makes it a decoder (causal attention, a cache).
            config = copy.deepcopy(config)
            config.is_decoder = False
            notes.append("is_decoder set to False: an encoder attends both ways")
        torch.manual_seed(seed)
        config, fixed = task_config(config, self.name)
        auto = getattr(transformers, self.auto_class)
        # float32 whatever dtype the config declares: exports are checked on CPU.
        model = auto.from_config(config).to(torch.float32).eval()
        prepare_weights(model, config)
        params = inspect.signature(model.forward).parameters
        if "input_ids" not in params:
            raise ValueError(
                f"{type(model).__name__}.forward takes no input_ids "
                f"(it takes {', '.join(list(params)[:4])}, ...): not a text encoder"
            )
        generator = torch.Generator().manual_seed(seed)
        seq_max = sequence_bound(config)
        shapes = [*SHAPES, (BATCH_MAX, seq_max, ())]
        sets = [token_inputs(config, b, s, p, generator) for b, s, p in shapes]
        if "attention_mask" not in params:
            for feeds in sets:
                del feeds["attention_mask"]
            notes.append(f"no attention mask: {type(model).__name__}.forward takes none")
        batch = torch.export.Dim("batch", min=1, max=BATCH_MAX)
        seq_length = torch.export.Dim("seq_length", min=1, max=seq_max)
        dynamic_shapes = {name: {0: batch, 1: seq_length} for name in sets[0]}
        return UntrainedModel(
            model=model,
            config=config,
            inputs=sets[0],
            other_inputs=sets[1:],
            dynamic_shapes=dynamic_shapes,
            cache_argument=None,
            shapes=[(b, s) for b, s, _ in shapes],
            notes=[*fixed, *notes],
            task=self.name,
        )

    def label(self, m: UntrainedModel, feeds: dict[str, Any]) -> str:
        batch, length = feeds["input_ids"].shape
        mask = feeds.get("attention_mask")
        padded = mask is not None and bool((mask == 0).any())
        at_bounds = batch == BATCH_MAX and feeds is m.input_sets[-1]
        return (
            f"batch={batch} seq={length}"
            + (" padded" if padded else "")
            + (" at bounds" if at_bounds else "")
        )
