"""What a task builds for a model: the model with random weights, its input sets, its shapes."""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import os
from collections.abc import Iterator
from typing import Any

__all__ = ["UntrainedModel", "prepare_weights", "pretrained_weights", "randomize_zero_weights"]

#: the model folder whose weights the model being built loads (``untrained_model(...,
#: pretrained=True)``), None for random weights
_WEIGHTS: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "exportcheck_weights", default=None
)
_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")


@dataclasses.dataclass
class UntrainedModel:
    """A model with random weights, input sets of one task and their dynamic shapes.

    * ``model``: the model in eval mode
    * ``config``: its config
    * ``task``: the task the inputs are for (``text-generation``, ...)
    * ``inputs``: keyword arguments of the call the export traces (for text
      generation: one decode step with a filled cache, batch 2, 3 new tokens, 30 cached
      tokens, or a plain forward when the model takes no cache)
    * ``other_inputs``: input sets of shapes the export does not see
    * ``dynamic_shapes``: for every input, its dynamic dimensions, named (``batch``,
      ``seq_length``, ``cache_length``, ...)
    * ``cache_argument``: the forward argument that takes the cache or state (``cache``,
      ``past_key_values``, ``state``, ...), None when the inputs have none
    * ``shapes``: the sizes of each input set, (batch, new tokens, cached tokens) for
      text generation
    * ``notes``: why the inputs differ from the task's usual ones, if they do
    * ``prompts``: for each input set, the token ids whose prefill filled its cache
      (None for a set without cache): ``cat(prompt, input_ids)`` run without a cache
      gives the same last logits as the decode step
    * ``prompt_masks``: the attention mask of each prompt (zeros where a row is
      left-padded), None for a set without cache
    * ``components``: for a task that exports several graphs (an encoder and decoder
      steps), each graph with its own input sets (:class:`exportcheck.tasks.Component`);
      ``inputs`` are then the main graph's (the decoder step). Empty for one graph.
    """

    model: Any
    config: Any
    inputs: dict[str, Any]
    other_inputs: list[dict[str, Any]]
    dynamic_shapes: dict[str, Any]
    cache_argument: str | None
    shapes: list[tuple[int, ...]]
    notes: list[str] = dataclasses.field(default_factory=list)
    prompts: list[Any] = dataclasses.field(default_factory=list)
    prompt_masks: list[Any] = dataclasses.field(default_factory=list)
    task: str = "text-generation"
    components: list[Any] = dataclasses.field(default_factory=list)

    @property
    def input_sets(self) -> list[dict[str, Any]]:
        """``[inputs, *other_inputs]``: every input set, the export's first."""
        return [self.inputs, *self.other_inputs]

    def describe(self) -> str:
        """One line per input set: its shapes (per graph for a task that exports several)."""
        from ..describe import string_type

        if self.components:
            lines = []
            for c in self.components:
                for label, feeds in zip(c.labels, c.input_sets, strict=True):
                    lines.append(f"{c.name} {label}: {string_type(feeds, with_shape=True)}")
                lines.append(f"{c.name} dynamic_shapes: {string_type(c.dynamic_shapes)}")
        else:
            lines = [f"inputs: {string_type(self.inputs, with_shape=True)}"]
            for i, feeds in enumerate(self.other_inputs):
                lines.append(f"other_inputs[{i}]: {string_type(feeds, with_shape=True)}")
            lines.append(f"dynamic_shapes: {string_type(self.dynamic_shapes)}")
        lines.extend(f"note: {note}" for note in self.notes)
        return "\n".join(lines)


def randomize_zero_weights(model: Any, std: float) -> list[str]:
    """Give random values to linear weights that initialisation left at zero, to
    projection matrices a module holds as bare parameters (``*projection_weight``,
    Gemma 3's multimodal projector multiplies by its ``mm_input_projection_weight``), to
    a Q-Former's learned queries (``query_tokens``: zero, every query reads the image
    alike and returns the same row) and to the centroids of an audio codec's vector
    quantizer, kept as buffers (Mimi's ``embed_sum``: zero, every frame is nearest to
    centroid 0 and the codes do not depend on the audio). The centroids get unit normal
    values: trained ones have the scale of the latents they quantize, not of a weight;
    drawn at 0.02 beside latents of norm 76 (Kyutai's tiny codec), the two nearest to a
    frame are so near that float rounding picks either.

    Some models zero-initialise a layer (a router gate): untrained, every expert then
    scores the same and top-k breaks the tie one way in PyTorch and another in
    onnxruntime, and a zero projection hides any discrepancy behind it (a zero image
    projection gives every image the same features). Trained weights are not zero, so
    random ones stand in for them.
    """
    import torch

    changed = []
    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, torch.nn.Linear) and not bool(module.weight.any()):
                module.weight.normal_(0.0, std)
                changed.append(f"{name}.weight")
            for own, param in module.named_parameters(recurse=False):
                bare = (own.endswith("projection_weight") and param.dim() == 2) or (
                    own == "query_tokens" and param.dim() >= 2
                )
                if bare and not bool(param.any()):
                    param.normal_(0.0, std)
                    changed.append(f"{name}.{own}" if name else own)
            centroids = getattr(module, "embed_sum", None)
            codebook = isinstance(centroids, torch.Tensor) and centroids.dim() == 2
            if codebook and not bool(centroids.any()):
                centroids.normal_(0.0, 1.0)
                changed.append(f"{name}.embed_sum")
    return changed


def weight_files(folder: str) -> list[str]:
    """The weight files transformers reads in ``folder`` (empty when there are none)."""
    return [name for name in _WEIGHT_FILES if os.path.isfile(os.path.join(folder, name))]


@contextlib.contextmanager
def pretrained_weights(folder: str) -> Iterator[None]:
    """Inside, :func:`prepare_weights` loads the weights of ``folder`` into the model a
    task builds instead of keeping random ones."""
    token = _WEIGHTS.set(os.fspath(folder))
    try:
        yield
    finally:
        _WEIGHTS.reset(token)


def prepare_weights(model: Any, config: Any) -> Any:
    """The weights of a model a task has just built: those of the folder given to
    :func:`pretrained_weights` (every parameter must be in it), else the random ones of
    its initialisation with zero linear weights randomized (:func:`randomize_zero_weights`).

    :raises ValueError: when the folder's weights leave parameters of the model unset
        (a folder of a base model asked for a task with a head it does not hold)
    """
    folder = _WEIGHTS.get()
    if folder is None:
        randomize_zero_weights(model, getattr(config, "initializer_range", None) or 0.02)
        return model
    import torch

    loaded, info = type(model).from_pretrained(
        folder, config=model.config, output_loading_info=True
    )
    missing = sorted(info.get("missing_keys") or [])
    if missing:
        shown = ", ".join(missing[:4]) + (", ..." if len(missing) > 4 else "")
        raise ValueError(
            f"the weights in {folder} leave {len(missing)} parameters of "
            f"{type(model).__name__} unset ({shown}): the folder holds another model or "
            "head; ask for the task whose model it holds (--task), or drop --pretrained"
        )
    with torch.no_grad():
        model.load_state_dict(loaded.state_dict())
    return model
