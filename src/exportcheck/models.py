"""Configs shipped with the package, so that models build without the Hugging Face hub.

A hub id ``org/name`` is stored as ``configs/org--name.json``, a copy of the
``config.json`` published on the hub.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import inspect
import json
from importlib import resources
from typing import Any

__all__ = ["UntrainedModel", "available_configs", "get_config", "untrained_model"]

_SEPARATOR = "--"


def available_configs() -> list[str]:
    """The hub ids whose config ships with exportcheck.

    >>> "arnir0/Tiny-LLM" in available_configs()
    True
    """
    folder = resources.files("exportcheck") / "configs"
    names = [
        entry.name[: -len(".json")].replace(_SEPARATOR, "/", 1)
        for entry in folder.iterdir()
        if entry.name.endswith(".json")
    ]
    return sorted(names)


def _config_dict(model_id: str) -> dict[str, Any]:
    if not isinstance(model_id, str) or "/" not in model_id:
        raise ValueError(
            f"get_config: expected a hub id such as 'arnir0/Tiny-LLM', got {model_id!r}."
        )
    known = available_configs()
    if model_id not in known:
        close = difflib.get_close_matches(model_id, known, n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ValueError(
            f"get_config: no config for {model_id!r} ships with exportcheck (the hub is not "
            f"used).{hint} Known ids: exportcheck.available_configs(); or pass a config."
        )
    path = (
        resources.files("exportcheck") / "configs" / (model_id.replace("/", _SEPARATOR) + ".json")
    )
    return json.loads(path.read_text(encoding="utf-8"))


def get_config(model_id: str, **overrides: Any) -> Any:
    """Return the transformers config of a hub id, read from the configs shipped here.

    Keyword arguments override config attributes (``num_hidden_layers=1``, ...).

    >>> config = get_config("arnir0/Tiny-LLM")
    >>> config.model_type, config.hidden_size, config.num_hidden_layers
    ('llama', 192, 1)
    """
    from transformers import AutoConfig

    data = _config_dict(model_id)
    data.update(overrides)
    model_type = data.pop("model_type")
    return AutoConfig.for_model(model_type, **data)


# --- untrained models -------------------------------------------------------------

_TASKS = ("text-generation",)

#: Model types whose decode step takes one new token at a time, and why: their input
#: sets all have one new token, and only batch and cache length are dynamic.
ONE_TOKEN_DECODE: dict[str, str] = {
    "mamba": "with a cache, several new tokens start from a zero state (wrong in eager); "
    "one token at a time is the decode step",
    "falcon_mamba": "with a cache, several new tokens start from a zero state (wrong in "
    "eager); one token at a time is the decode step",
    "rwkv": "the recurrence loops over the new tokens in Python: one token at a time is "
    "the decode step",
    "prophetnet": "with a cache, the n-gram decoder accepts exactly one new token",
    "jamba": "with a cache, several new tokens start its Mamba layers from a zero state "
    "(wrong in eager); one token at a time is the decode step",
    "zamba": "with a cache, several new tokens start its Mamba layers from a zero state "
    "(wrong in eager); one token at a time is the decode step",
}

#: Model types checked without a cache, and why: their forward takes a cache, but a
#: decode step with one cannot be expressed as inputs of the usual shape.
CACHELESS_INPUTS: dict[str, str] = {
    "cpmant": "with a cache, forward expects every token seen so far, not only the new ones",
}

#: Drafters for speculative decoding, and why: they take neither token ids nor a cache of
#: their own but, at each draft step, what the main model hands them. Their input sets
#: are that step: one new token, the main model's key-value states as the cache.
_GEMMA4_DRAFT_STEP = (
    "a drafter: one step of SinglePositionMultiTokenCandidateGenerator "
    "(transformers.generation.candidate_generator), fed the main model's embedding of the "
    "last token and last hidden state (inputs_embeds) and the key-value states of its last "
    "layer of each type (shared_kv_states), here random tensors of their shapes"
)
DRAFT_INPUTS: dict[str, str] = {
    "gemma4_assistant": _GEMMA4_DRAFT_STEP,
    "gemma4_unified_assistant": _GEMMA4_DRAFT_STEP,
}


@dataclasses.dataclass
class UntrainedModel:
    """A model with random weights, inputs for a decode step and their dynamic shapes.

    * ``model``: the model in eval mode
    * ``config``: its config
    * ``inputs``: keyword arguments of one decode step with a filled cache (batch 2,
      3 new tokens, 30 cached tokens), or of a plain forward when the model takes no
      cache
    * ``other_inputs``: input sets of shapes the export does not see: batch 1, one new
      token, a longer cache, another batch and length
    * ``dynamic_shapes``: for every input, its dynamic dimensions, named ``batch``,
      ``seq_length`` and ``cache_length``
    * ``cache_argument``: the forward argument that takes the cache (``cache``,
      ``past_key_values``, ``state`` for recurrent models, ``shared_kv_states`` for
      drafters, see :data:`DRAFT_INPUTS`), None when the inputs have none
    * ``shapes``: (batch, new tokens, cached tokens) of each input set
    * ``notes``: why the inputs differ from the usual decode step, if they do
    * ``prompts``: for each input set, the token ids whose prefill filled its cache
      (None for a set without cache): ``cat(prompt, input_ids)`` run without a cache
      gives the same last logits as the decode step
    """

    model: Any
    config: Any
    inputs: dict[str, Any]
    other_inputs: list[dict[str, Any]]
    dynamic_shapes: dict[str, Any]
    cache_argument: str | None
    shapes: list[tuple[int, int, int]]
    notes: list[str] = dataclasses.field(default_factory=list)
    prompts: list[Any] = dataclasses.field(default_factory=list)

    def describe(self) -> str:
        """One line per input set: its shapes."""
        from .describe import string_type

        lines = [f"inputs: {string_type(self.inputs, with_shape=True)}"]
        for i, feeds in enumerate(self.other_inputs):
            lines.append(f"other_inputs[{i}]: {string_type(feeds, with_shape=True)}")
        lines.append(f"dynamic_shapes: {string_type(self.dynamic_shapes)}")
        lines.extend(f"note: {note}" for note in self.notes)
        return "\n".join(lines)


def _resolve_config(source: Any, overrides: dict[str, Any], shrink: bool = False) -> Any:
    from transformers import AutoConfig, PretrainedConfig

    from .tiny import CONFIG_ARGUMENTS, set_attributes, tiny_config

    if shrink and not (isinstance(source, str) and "/" not in source):
        base = _resolve_config(source, {})
        return set_attributes(tiny_config(base), overrides)
    if isinstance(source, PretrainedConfig):
        return set_attributes(copy.deepcopy(source), overrides)
    if isinstance(source, dict):
        data = dict(source)
        if "model_type" not in data:
            raise ValueError("untrained_model: a config dict needs a 'model_type' key.")
        data.update(overrides)
        return AutoConfig.for_model(data.pop("model_type"), **data)
    if isinstance(source, str) and "/" in source:
        return get_config(source, **overrides)
    if isinstance(source, str):
        from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

        if source not in CONFIG_MAPPING_NAMES:
            close = difflib.get_close_matches(source, list(CONFIG_MAPPING_NAMES), n=3)
            hint = f" Did you mean {', '.join(close)}?" if close else ""
            raise ValueError(
                f"untrained_model: {source!r} is neither a hub id with a shipped config "
                f"(exportcheck.available_configs()) nor a transformers model_type.{hint}"
            )
        arguments = copy.deepcopy(CONFIG_ARGUMENTS.get(source, ({}, ""))[0])
        return set_attributes(tiny_config(AutoConfig.for_model(source, **arguments)), overrides)
    raise TypeError(
        "untrained_model: source must be a hub id, a model_type, a config or a dict, "
        f"got {type(source).__name__}."
    )


def _build_causal_lm(config: Any) -> Any:
    """``AutoModelForCausalLM.from_config``, or the class built from the sub-config it takes.

    transformers hands a sub-config to the model class only when it is called
    ``text_config``; a causal LM whose config class is another sub-config (musicgen's
    ``decoder``) is built from that sub-config here.
    """
    from transformers import AutoModelForCausalLM
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

    model_class = MODEL_FOR_CAUSAL_LM_MAPPING.get(type(config), None)
    wanted = getattr(model_class, "config_class", None)
    if wanted is not None and not isinstance(config, wanted):
        for name in getattr(config, "sub_configs", {}) or {}:
            sub = getattr(config, name, None)
            if isinstance(sub, wanted):
                return model_class._from_config(sub)
    return AutoModelForCausalLM.from_config(config)


def _randomize_zero_weights(model: Any, std: float) -> list[str]:
    """Give random values to linear weights that initialisation left at zero.

    Some models zero-initialise a layer (afmoe's router gate): untrained, every
    expert then scores the same and top-k breaks the tie one way in PyTorch and
    another in onnxruntime, and a zero projection hides any discrepancy behind it.
    Trained weights are not zero, so random ones stand in for them.
    """
    import torch

    changed = []
    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, torch.nn.Linear) and not bool(module.weight.any()):
                module.weight.normal_(0.0, std)
                changed.append(f"{name}.weight")
    return changed


def _cache_argument(model: Any) -> str | None:
    params = inspect.signature(model.forward).parameters
    for name in ("cache", "past_key_values", "state"):
        if name in params:
            return name
    return None


def _vocab(config: Any) -> int:
    text = config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config
    return int(getattr(text, "vocab_size", None) or getattr(config, "vocab_size", 1024))


def _smallest_window(config: Any) -> int | None:
    windows = []
    stack, seen = [config], set()
    while stack:
        current = stack.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        value = getattr(current, "sliding_window", None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            windows.append(value)
        for key in getattr(current, "sub_configs", {}) or {}:
            sub = getattr(current, key, None)
            if sub is not None:
                stack.append(sub)
    return min(windows) if windows else None


def _length_bounds(config: Any) -> tuple[int, int]:
    """Upper bounds of seq_length and cache_length.

    A sliding-window model behaves differently once the window is full, so the
    exported program is valid for caches and new tokens that fit in the window: the
    bounds keep ``cache_length + seq_length`` below it.
    """
    window = _smallest_window(config)
    limit = 8192 if window is None else window - 1
    # 64: chunked linear attention (qwen3_next, ...) exports one chunk of new tokens.
    seq_max = max(8, min(64, limit // 8))
    return seq_max, max(limit - seq_max, 64)


def _has_attention(cache: Any) -> bool:
    import torch

    if isinstance(cache, list | tuple):
        return False  # recurrent states as a list of tensors (rwkv)
    layers = getattr(cache, "layers", None)
    if layers is None:
        inner = getattr(cache, "self_attention_cache", None)
        return True if inner is None else _has_attention(inner)
    return any(isinstance(getattr(layer, "keys", None), torch.Tensor) for layer in layers)


def _decode_inputs(
    model: Any,
    config: Any,
    cache_argument: str | None,
    batch: int,
    seq_length: int,
    cache_length: int,
    generator: Any,
) -> tuple[dict[str, Any], Any]:
    """One input set, and the prompt whose prefill filled its cache (None without cache)."""
    import torch

    vocab = _vocab(config)
    feeds: dict[str, Any] = {}
    cache = prefill_ids = None
    if cache_argument is not None:
        prefill_ids = torch.randint(0, vocab, (batch, cache_length), generator=generator)
        with torch.no_grad():
            out = model(
                input_ids=prefill_ids,
                attention_mask=torch.ones((batch, cache_length), dtype=torch.int64),
                use_cache=True,
            )
        cache = getattr(out, cache_argument, None)
        if cache is None:
            cache = getattr(out, "cache", None) or getattr(out, "past_key_values", None)
    if cache_argument is not None and cache is not None:
        feeds["input_ids"] = torch.randint(0, vocab, (batch, seq_length), generator=generator)
        # Attention masks cover cached and new tokens; a model without attention
        # layers (state-space, recurrent) masks only the new tokens.
        mask_length = seq_length + (cache_length if _has_attention(cache) else 0)
        feeds["attention_mask"] = torch.ones((batch, mask_length), dtype=torch.int64)
        feeds[cache_argument] = cache
    else:
        feeds["input_ids"] = torch.randint(0, vocab, (batch, seq_length), generator=generator)
        feeds["attention_mask"] = torch.ones((batch, seq_length), dtype=torch.int64)
        if "use_cache" in inspect.signature(model.forward).parameters:
            # Without a cache in, no cache out: some models return one torch cannot flatten.
            feeds["use_cache"] = False
    if "attention_mask" not in inspect.signature(model.forward).parameters:
        del feeds["attention_mask"]  # the model takes no mask (xLSTM)
    feeds_prompt = prefill_ids if cache_argument is not None and cache is not None else None
    return feeds, feeds_prompt


def _draft_inputs(config: Any, batch: int, cache_length: int, generator: Any) -> dict[str, Any]:
    """One draft step of a Gemma 4 drafter, as ``SinglePositionMultiTokenCandidateGenerator``
    calls it after the main model has seen ``cache_length`` tokens.

    * ``inputs_embeds`` (batch, 1, 2 x backbone_hidden_size): the main model's scaled
      embedding of the last token next to its final-norm hidden state of that token
    * ``attention_mask`` (batch, cache_length): the main model's mask
    * ``position_ids`` (batch, 1): the last token's position, ``cache_length - 1``
      (generate passes shape (1, 1) with batch 1; one row per sequence is the same)
    * ``shared_kv_states``: layer type -> (keys, values) of the main model's last layer
      of that type, (batch, key-value heads, cache_length, head_dim) with the heads and
      head_dim of the drafter's layers of that type; below the sliding window, the
      sliding layer's states cover every token too

    The states are standard normal: RMS-normed keys and values, a scaled embedding
    and a final-norm hidden state all have entries of about unit size.
    """
    import torch

    text = config.get_text_config()
    feeds: dict[str, Any] = {
        "inputs_embeds": torch.randn(
            (batch, 1, 2 * config.backbone_hidden_size), generator=generator
        ),
        "attention_mask": torch.ones((batch, cache_length), dtype=torch.int64),
        "position_ids": torch.full((batch, 1), cache_length - 1, dtype=torch.int64),
    }
    states = {}
    for layer_type in dict.fromkeys(text.layer_types):
        layer = text.per_layer_config[text.layer_types.index(layer_type)]
        shape = (batch, layer.num_key_value_heads, cache_length, layer.head_dim)
        keys = torch.randn(shape, generator=generator)
        states[layer_type] = (keys, torch.randn(shape, generator=generator))
    feeds["shared_kv_states"] = states
    return feeds


def _untrained_draft(model: Any, config: Any, seed: int, notes: list[str]) -> UntrainedModel:
    import torch

    notes.append(f"draft step: {DRAFT_INPUTS[config.model_type]}")
    generator = torch.Generator().manual_seed(seed)
    shapes = [(2, 1, 30), (1, 1, 30), (3, 1, 30), (2, 1, 60), (3, 1, 17)]
    sets = [_draft_inputs(config, b, c, generator) for b, _, c in shapes]
    _, cache_max = _length_bounds(config)
    batch = torch.export.Dim("batch", min=1, max=1024)
    cache_length = torch.export.Dim("cache_length", min=1, max=cache_max)
    state = {0: batch, 2: cache_length}
    dynamic_shapes = {
        "inputs_embeds": {0: batch},
        "attention_mask": {0: batch, 1: cache_length},
        "position_ids": {0: batch},
        "shared_kv_states": {k: (state, state) for k in sets[0]["shared_kv_states"]},
    }
    return UntrainedModel(
        model=model,
        config=config,
        inputs=sets[0],
        other_inputs=sets[1:],
        dynamic_shapes=dynamic_shapes,
        cache_argument="shared_kv_states",
        shapes=shapes,
        notes=notes,
        prompts=[None] * len(shapes),
    )


def untrained_model(
    source: Any,
    task: str = "text-generation",
    *,
    seed: int = 0,
    shrink: bool = False,
    **config_overrides: Any,
) -> UntrainedModel:
    """Build a model with random weights, decode-step inputs and their dynamic shapes.

    :param source: a hub id whose config ships with exportcheck (``arnir0/Tiny-LLM``),
        a transformers ``model_type`` (``llama``: shrunk by
        :func:`exportcheck.tiny.tiny_config`), a config object or a config dict
    :param task: only ``text-generation`` for now
    :param seed: seeds the weights and the inputs
    :param shrink: shrink a hub config or a config object with the rules of
        :func:`exportcheck.tiny_config` (a model_type is always shrunk); the
        architecture (layer kinds, attention variants, experts) stays
    :param config_overrides: config attributes to set (``num_hidden_layers=1``, ...)
    :return: an :class:`UntrainedModel`

    The cache of every input set comes from running the model on a prompt, so it
    has the model's own cache class and layer kinds (sliding-window,
    linear-attention, ...).

    >>> from exportcheck import untrained_model
    >>> m = untrained_model("arnir0/Tiny-LLM")
    >>> print(m.describe().splitlines()[0])
    inputs: dict(input_ids:T7s2x3,attention_mask:T7s2x33,cache:DynamicCache(key_cache=#1[T1s2x1x30x96], value_cache=#1[T1s2x1x30x96]))
    """
    import torch

    from .pytrees import cache_dynamic_shapes

    if task not in _TASKS:
        raise ValueError(f"untrained_model: task {task!r} is not supported; use one of {_TASKS}.")
    config = _resolve_config(source, config_overrides, shrink=shrink)
    torch.manual_seed(seed)
    # float32 whatever dtype the config declares: exports are checked on CPU.
    model = _build_causal_lm(config).to(torch.float32).eval()
    _randomize_zero_weights(model, getattr(config, "initializer_range", None) or 0.02)
    notes: list[str] = []
    cache_argument = _cache_argument(model)
    model_type = getattr(config, "model_type", None)
    if model_type in DRAFT_INPUTS:
        return _untrained_draft(model, config, seed, notes)
    if cache_argument is not None and model_type in CACHELESS_INPUTS:
        notes.append(f"no cache: {CACHELESS_INPUTS[model_type]}")
        cache_argument = None
    generator = torch.Generator().manual_seed(seed)
    one_token = model_type in ONE_TOKEN_DECODE
    if one_token:
        notes.append(f"one new token: {ONE_TOKEN_DECODE[model_type]}")
        shapes = [(2, 1, 30), (1, 1, 30), (3, 1, 30), (2, 1, 60), (3, 1, 17)]
    else:
        shapes = [(2, 3, 30), (1, 3, 30), (2, 1, 30), (2, 3, 60), (3, 4, 17)]
    built = [
        _decode_inputs(model, config, cache_argument, b, s, c, generator) for b, s, c in shapes
    ]
    sets, prompts = [b[0] for b in built], [b[1] for b in built]
    if cache_argument is not None and cache_argument not in sets[0]:
        notes.append(f"no cache: {type(model).__name__} returned none after a prefill")
        cache_argument = None
    seq_max, cache_max = _length_bounds(config)
    batch = torch.export.Dim("batch", min=1, max=1024)
    seq_length = torch.export.Dim("seq_length", min=1, max=seq_max)
    cache_length = torch.export.Dim("cache_length", min=1, max=cache_max)
    if one_token:
        seq_length = None  # the decode step takes exactly one token: static
    dynamic_shapes: dict[str, Any] = {"input_ids": {0: batch, 1: seq_length}}
    cache_shapes = None
    if cache_argument is not None:
        try:
            cache = sets[0][cache_argument]
            if isinstance(cache, list | tuple) and all(isinstance(t, torch.Tensor) for t in cache):
                cache_shapes = type(cache)({0: batch} for _ in cache)  # states: only batch varies
            else:
                cache_shapes = cache_dynamic_shapes(cache, batch, cache_length)
        except (TypeError, ValueError) as e:
            # A cache class exportcheck cannot flatten: check the model without one.
            notes.append(f"no cache: {e}")
            cache_argument = None
            generator = torch.Generator().manual_seed(seed)
            built = [_decode_inputs(model, config, None, b, s, c, generator) for b, s, c in shapes]
            sets, prompts = [b[0] for b in built], [b[1] for b in built]
    if cache_argument is not None and _has_attention(sets[0][cache_argument]):
        # The mask covers cache and new tokens: its length is their sum, which a Dim
        # cannot express, so it gets a dimension of its own.
        dynamic_shapes["attention_mask"] = {0: batch, 1: torch.export.Dim.DYNAMIC}
        dynamic_shapes[cache_argument] = cache_shapes
    elif cache_argument is not None:
        dynamic_shapes["attention_mask"] = {0: batch, 1: seq_length}
        dynamic_shapes[cache_argument] = cache_shapes
    else:
        dynamic_shapes["attention_mask"] = {0: batch, 1: seq_length}
    if "attention_mask" not in sets[0]:
        del dynamic_shapes["attention_mask"]
    if "use_cache" in sets[0]:
        dynamic_shapes["use_cache"] = None
    return UntrainedModel(
        model=model,
        config=config,
        inputs=sets[0],
        other_inputs=sets[1:],
        dynamic_shapes=dynamic_shapes,
        cache_argument=cache_argument,
        shapes=shapes,
        notes=notes,
        prompts=prompts,
    )
