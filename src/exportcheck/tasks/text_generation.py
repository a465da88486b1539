"""text-generation: a causal LM checked on decode steps with a filled cache.

The model is built with ``AutoModelForCausalLM`` from its config
(``MODEL_FOR_CAUSAL_LM_MAPPING_NAMES``). The cache of every input set comes from
running the model on a prompt, so it has the model's own cache class and layer kinds
(sliding-window, linear-attention, ...). Input sets: (batch, new tokens, cached tokens)
= (2, 3, 30) for the export, then (1, 3, 30), (2, 1, 30), (2, 3, 60), (3, 4, 17); one
new token per step for the model types of
:data:`exportcheck.families.ONE_TOKEN_DECODE`. Dynamic dimensions: ``batch``,
``seq_length`` and ``cache_length`` (bounds from :func:`exportcheck.dims.length_bounds`).
"""

from __future__ import annotations

import inspect
from typing import Any

from ..dims import length_bounds
from ..families import INPUT_BUILDERS, NO_CACHE, ONE_TOKEN_DECODE
from ..models import UntrainedModel, randomize_zero_weights
from . import Task, register

__all__ = ["TextGeneration"]


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


def _cache_argument(model: Any) -> str | None:
    params = inspect.signature(model.forward).parameters
    for name in ("cache", "past_key_values", "state"):
        if name in params:
            return name
    return None


def _vocab(config: Any) -> int:
    text = config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config
    return int(getattr(text, "vocab_size", None) or getattr(config, "vocab_size", 1024))


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
    pad: int = 0,
) -> tuple[dict[str, Any], Any, Any]:
    """One input set, the prompt whose prefill filled its cache and the prompt's mask
    (both None without cache). ``pad``: the first row is left-padded by that many tokens,
    as ``generate`` pads the shorter prompts of a batch."""
    import torch

    vocab = _vocab(config)
    feeds: dict[str, Any] = {}
    cache = prefill_ids = None
    prefill_mask = torch.ones((batch, cache_length), dtype=torch.int64)
    prefill_mask[0, :pad] = 0
    if cache_argument is not None:
        prefill_ids = torch.randint(0, vocab, (batch, cache_length), generator=generator)
        with torch.no_grad():
            out = model(input_ids=prefill_ids, attention_mask=prefill_mask, use_cache=True)
        cache = getattr(out, cache_argument, None)
        if cache is None:
            cache = getattr(out, "cache", None) or getattr(out, "past_key_values", None)
    if cache_argument is not None and cache is not None:
        feeds["input_ids"] = torch.randint(0, vocab, (batch, seq_length), generator=generator)
        # Attention masks cover cached and new tokens; a model without attention
        # layers (state-space, recurrent) masks only the new tokens.
        new = torch.ones((batch, seq_length), dtype=torch.int64)
        feeds["attention_mask"] = (
            torch.cat([prefill_mask, new], 1) if _has_attention(cache) else new
        )
        feeds[cache_argument] = cache
    else:
        feeds["input_ids"] = torch.randint(0, vocab, (batch, seq_length), generator=generator)
        feeds["attention_mask"] = torch.ones((batch, seq_length), dtype=torch.int64)
        feeds["attention_mask"][0, :pad] = 0
        if "use_cache" in inspect.signature(model.forward).parameters:
            # Without a cache in, no cache out: some models return one torch cannot flatten.
            feeds["use_cache"] = False
    if "attention_mask" not in inspect.signature(model.forward).parameters:
        del feeds["attention_mask"]  # the model takes no mask (xLSTM)
    with_cache = cache_argument is not None and cache is not None
    return feeds, prefill_ids if with_cache else None, prefill_mask if with_cache else None


TASK_NAME = "text-generation"


class TextGeneration(Task):
    """Causal LMs, checked on a decode step with the cache a prefill filled."""

    name = TASK_NAME
    mapping = "MODEL_FOR_CAUSAL_LM_MAPPING_NAMES"

    def build(self, config: Any, *, seed: int = 0) -> UntrainedModel:
        """The causal LM of ``config``, five decode-step input sets, their dynamic shapes."""
        return _build(config, seed)

    def label(self, m: UntrainedModel, feeds: dict[str, Any]) -> str:
        index = next((i for i, f in enumerate(m.input_sets) if f is feeds), None)
        masks = m.prompt_masks
        prompt_mask = masks[index] if index is not None and index < len(masks) else None
        return _label(feeds, m.cache_argument, prompt_mask)

    def check_eager(self, m: UntrainedModel, atol: float) -> list[dict[str, Any]]:
        """The decode step's last logits equal a forward over prompt + new tokens."""
        return _check_eager(m, atol)


def _build(config: Any, seed: int) -> UntrainedModel:
    import torch

    from ..caches import cache_dynamic_shapes

    torch.manual_seed(seed)
    # float32 whatever dtype the config declares: exports are checked on CPU.
    model = _build_causal_lm(config).to(torch.float32).eval()
    randomize_zero_weights(model, getattr(config, "initializer_range", None) or 0.02)
    notes: list[str] = []
    cache_argument = _cache_argument(model)
    model_type = getattr(config, "model_type", None)
    if model_type in INPUT_BUILDERS:
        built = INPUT_BUILDERS[model_type](model, config, seed)
        return UntrainedModel(
            model=model,
            config=config,
            inputs=built["sets"][0],
            other_inputs=built["sets"][1:],
            dynamic_shapes=built["dynamic_shapes"],
            cache_argument=built["cache_argument"],
            shapes=built["shapes"],
            notes=notes + list(built["notes"]),
            prompts=built["prompts"],
            task=TASK_NAME,
        )
    if cache_argument is not None and model_type in NO_CACHE:
        notes.append(f"no cache: {NO_CACHE[model_type]}")
        cache_argument = None
    generator = torch.Generator().manual_seed(seed)
    one_token = model_type in ONE_TOKEN_DECODE
    if one_token:
        notes.append(f"one new token: {ONE_TOKEN_DECODE[model_type]}")
    shapes = _shapes(one_token, cache_argument is not None)
    built = _input_sets(model, config, cache_argument, shapes, generator)
    sets, prompts, prompt_masks = built
    if cache_argument is not None and cache_argument not in sets[0]:
        notes.append(f"no cache: {type(model).__name__} returned none after a prefill")
        cache_argument = None
        generator = torch.Generator().manual_seed(seed)
        shapes = _shapes(one_token, False)
        sets, prompts, prompt_masks = _input_sets(model, config, None, shapes, generator)
    seq_max, cache_max = length_bounds(config)
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
            shapes = _shapes(one_token, False)
            sets, prompts, prompt_masks = _input_sets(model, config, None, shapes, generator)
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
        shapes=[shape[:3] for shape in shapes],
        notes=notes,
        prompts=prompts,
        prompt_masks=prompt_masks,
        task=TASK_NAME,
    )


#: (batch, new tokens, cached tokens, left padding of the first row) of each input set:
#: the export's first, every set a distinct shape, the last one left-padded.
SHAPES = [(2, 3, 30, 0), (1, 3, 30, 0), (2, 1, 30, 0), (2, 3, 60, 0), (3, 4, 17, 0), (2, 2, 24, 5)]
#: the same with one new token per step (ONE_TOKEN_DECODE)
ONE_TOKEN_SHAPES = [
    (2, 1, 30, 0),
    (1, 1, 30, 0),
    (3, 1, 30, 0),
    (2, 1, 60, 0),
    (3, 1, 17, 0),
    (2, 1, 24, 5),
]
#: without a cache the tokens are the whole sequence: distinct lengths instead
NO_CACHE_SHAPES = [
    (2, 3, 0, 0),
    (1, 5, 0, 0),
    (2, 1, 0, 0),
    (2, 8, 0, 0),
    (3, 4, 0, 0),
    (2, 6, 0, 3),
]


def _shapes(one_token: bool, with_cache: bool) -> list[tuple[int, int, int, int]]:
    if not with_cache:
        return NO_CACHE_SHAPES
    return ONE_TOKEN_SHAPES if one_token else SHAPES


def _input_sets(
    model: Any, config: Any, cache_argument: str | None, shapes: list[Any], generator: Any
) -> tuple[list[Any], list[Any], list[Any]]:
    built = [
        _decode_inputs(model, config, cache_argument, b, s, c, generator, pad=p)
        for b, s, c, p in shapes
    ]
    return [b[0] for b in built], [b[1] for b in built], [b[2] for b in built]


def _check_eager(m: UntrainedModel, atol: float) -> list[dict[str, Any]]:
    """The decode step's logits against one forward over prompt + new tokens, per set."""
    import copy

    import torch

    takes_use_cache = "use_cache" in inspect.signature(m.model.forward).parameters
    out = []
    for i, feeds in enumerate(m.input_sets):
        prompt = m.prompts[i] if i < len(m.prompts) else None
        if prompt is None:
            continue
        new = feeds["input_ids"]
        full: dict[str, Any] = {"input_ids": torch.cat([prompt, new], 1)}
        if "attention_mask" in feeds:
            mask = feeds["attention_mask"]
            if mask.shape[1] != full["input_ids"].shape[1]:  # the mask covers new tokens only
                mask = torch.cat([m.prompt_masks[i], mask], 1)
            full["attention_mask"] = mask
        if takes_use_cache:
            full["use_cache"] = False
        with torch.no_grad():
            step = m.model(**copy.deepcopy(feeds)).logits
            whole = m.model(**full).logits[:, -new.shape[1] :]
        diff = float((step.double() - whole.double()).abs().max())
        out.append({"input_set": i, "abs": diff, "ok": diff <= atol})
    return out


def _label(feeds: dict[str, Any], cache_argument: str | None, prompt_mask: Any = None) -> str:
    ids = feeds.get("input_ids", feeds.get("inputs_embeds"))
    batch, seq = tuple(ids.shape[:2]) if ids is not None else ("?", "?")
    cache = feeds.get(cache_argument) if cache_argument else None
    length = None
    if isinstance(cache, dict) and cache:  # states per layer type: (keys, values)
        length = int(next(iter(cache.values()))[0].shape[2])
    elif isinstance(cache, list | tuple):
        length = None  # recurrent states have no length
    elif cache is not None:
        try:
            length = int(cache.get_seq_length())
        except Exception:  # some caches hold only linear-attention layers
            length = None
    mask = feeds.get("attention_mask")
    padded = any(m is not None and bool((m == 0).any()) for m in (mask, prompt_mask))
    return (
        f"batch={batch} seq={seq}"
        + (f" cache={length}" if length is not None else "")
        + (" left-padded" if padded else "")
    )


register(TextGeneration())
