"""text-generation: a causal LM checked on decode steps with a filled cache.

The model is built with ``AutoModelForCausalLM`` from its config
(``MODEL_FOR_CAUSAL_LM_MAPPING_NAMES``). The cache of every input set comes from
running the model on a prompt, so it has the model's own cache class and layer kinds
(sliding-window, linear-attention, ...). Input sets: (batch, new tokens, cached tokens)
= (2, 3, 30) for the export, then (1, 3, 30), (2, 1, 30), (2, 5, 60), (3, 4, 17), a
left-padded (2, 2, 24) and one at the declared upper bounds (``BATCH_MAX``, ``seq_max``,
``cache_max``); one new token per step for the model types of
:data:`exportcheck.families.ONE_TOKEN_DECODE`. Dynamic dimensions: ``batch``,
``seq_length`` and ``cache_length`` (bounds from :func:`exportcheck.dims.length_bounds`).

The generation stage starts from a prompt of :data:`GENERATION_PROMPT` tokens and
generates 8 greedily, through eager ``generate`` and through each runtime.
"""

from __future__ import annotations

import inspect
from typing import Any

from ..dims import BATCH_MAX, length_bounds
from ..families import (
    GENERATION_INPUTS,
    INPUT_BUILDERS,
    NO_CACHE,
    NO_GENERATION,
    ONE_TOKEN_DECODE,
)
from ..models import UntrainedModel, prepare_weights
from ..patches import eager_fixes
from . import Generation, Task, register
from ._tokens import random_ids as _random_ids

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
    # past_buckets_states and mems: older names of a model's state
    for name in ("cache", "past_key_values", "state", "past_buckets_states", "mems"):
        if name in params:
            return name
    return None


def _contiguous(state: Any) -> Any:
    """``state`` with contiguous tensors, as a runtime returns them. Eager caches can
    hold views (a slice of a longer buffer); an export may guard on the strides of its
    example, and then reject the contiguous state its own outputs feed back."""
    import torch
    import torch.utils._pytree as pytree

    from ..caches.pytrees import cache_pytrees

    if state is None:
        return None
    with cache_pytrees():
        return pytree.tree_map(
            lambda t: t.contiguous() if isinstance(t, torch.Tensor) else t, state
        )


def _has_attention(cache: Any) -> bool:
    import torch

    if isinstance(cache, list | tuple):
        return False  # recurrent states as a list of tensors (rwkv)
    layers = getattr(cache, "layers", None)
    if layers is None:
        inner = getattr(cache, "self_attention_cache", None)
        return True if inner is None else _has_attention(inner)
    return any(isinstance(getattr(layer, "keys", None), torch.Tensor) for layer in layers)


def _positions_differ(model: Any, config: Any) -> bool:
    """True when the forward, called without ``position_ids``, numbers the tokens of an
    unpadded prompt, or the new tokens after a cached prompt, otherwise than
    ``generate`` does (``cumsum(attention_mask) - 1``, so 0, 1, 2, ... across the cache):
    RoBERTa-like embeddings count from the padding index instead, and some decoders
    number the new tokens of a decode step from 0 whatever the cache holds. Such a model
    gets ``position_ids`` as an input of its decode step, fed as ``generate`` feeds them,
    so that the exported loop can equal ``generate``."""
    import copy

    import torch

    params = inspect.signature(model.forward).parameters
    if "position_ids" not in params:
        return False
    ids = _random_ids(config, (1, 4), torch.Generator().manual_seed(7))
    extra = {"use_cache": False} if "use_cache" in params else {}
    try:
        with torch.no_grad(), eager_fixes(model):
            plain = model(input_ids=ids, **extra).logits
            given = model(input_ids=ids, position_ids=torch.arange(4)[None], **extra).logits
    except Exception:  # a forward that takes position_ids of another layout (3D rotary)
        return False
    if not torch.allclose(plain, given, atol=1e-6, rtol=0):
        return True
    name = _cache_argument(model)
    if name is None or "use_cache" not in params:
        return False
    try:
        with torch.no_grad(), eager_fixes(model):
            out = model(input_ids=ids[:, :3], use_cache=True)
            cache = getattr(out, "cache", None) or getattr(out, "past_key_values", None)
            if cache is None:
                return False
            # eager updates a cache in place: each step gets a copy of its own
            plain = model(input_ids=ids[:, 3:], **{name: copy.deepcopy(cache)}).logits
            given = model(
                input_ids=ids[:, 3:], position_ids=torch.tensor([[3]]), **{name: cache}
            ).logits
    except Exception:  # a step this probe does not know how to call: decide on the prompt
        return False
    return not torch.allclose(plain, given, atol=1e-6, rtol=0)


def _positions(mask: Any, length: int) -> Any:
    """``generate``'s positions of the last ``length`` tokens of ``mask``."""
    return (mask.cumsum(-1) - 1).clamp(min=0)[:, -length:]


def _decode_inputs(
    model: Any,
    config: Any,
    cache_argument: str | None,
    batch: int,
    seq_length: int,
    cache_length: int,
    generator: Any,
    pad: int = 0,
    positions: bool = False,
) -> tuple[dict[str, Any], Any, Any]:
    """One input set, the prompt whose prefill filled its cache and the prompt's mask
    (both None without cache). ``pad``: the first row is left-padded by that many tokens,
    as ``generate`` pads the shorter prompts of a batch. ``positions``: the prefill and
    the set get ``position_ids`` as ``generate`` computes them from the mask."""
    import torch

    feeds: dict[str, Any] = {}
    cache = prefill_ids = None
    prefill_mask = torch.ones((batch, cache_length), dtype=torch.int64)
    prefill_mask[0, :pad] = 0
    if cache_argument is not None:
        prefill_ids = _random_ids(config, (batch, cache_length), generator)
        given = {"position_ids": _positions(prefill_mask, cache_length)} if positions else {}
        # the prefill is eager's: with the patches that correct it
        with torch.no_grad(), eager_fixes(model):
            out = model(input_ids=prefill_ids, attention_mask=prefill_mask, use_cache=True, **given)
        cache = getattr(out, cache_argument, None)
        if cache is None:
            cache = getattr(out, "cache", None) or getattr(out, "past_key_values", None)
        cache = _contiguous(cache)
    if cache_argument is not None and cache is not None:
        feeds["input_ids"] = _random_ids(config, (batch, seq_length), generator)
        # Attention masks cover cached and new tokens; a model without attention
        # layers (state-space, recurrent) masks only the new tokens.
        new = torch.ones((batch, seq_length), dtype=torch.int64)
        feeds["attention_mask"] = (
            torch.cat([prefill_mask, new], 1) if _has_attention(cache) else new
        )
        feeds[cache_argument] = cache
    else:
        feeds["input_ids"] = _random_ids(config, (batch, seq_length), generator)
        feeds["attention_mask"] = torch.ones((batch, seq_length), dtype=torch.int64)
        feeds["attention_mask"][0, :pad] = 0
        if "use_cache" in inspect.signature(model.forward).parameters:
            # Without a cache in, no cache out: some models return one torch cannot flatten.
            feeds["use_cache"] = False
    if positions:
        full_mask = feeds["attention_mask"]
        if full_mask.shape[1] == seq_length and cache is not None:
            full_mask = torch.cat([prefill_mask, full_mask], 1)
        feeds["position_ids"] = _positions(full_mask, seq_length)
    if "attention_mask" not in inspect.signature(model.forward).parameters:
        del feeds["attention_mask"]  # the model takes no mask (xLSTM)
    with_cache = cache_argument is not None and cache is not None
    return feeds, prefill_ids if with_cache else None, prefill_mask if with_cache else None


TASK_NAME = "text-generation"


class TextGeneration(Task):
    """Causal LMs, checked on a decode step with the cache a prefill filled."""

    name = TASK_NAME
    mapping = "MODEL_FOR_CAUSAL_LM_MAPPING_NAMES"
    rank = 0
    status_intro = (
        "Every causal-LM architecture of the installed transformers, built untrained from "
        "a tiny config, exported with ``torch.export`` and converted to ONNX, then run on "
        "seven input sets of distinct shapes (six the export did not see: one left-padded, "
        "one at the upper bounds the export declares) and compared with eager PyTorch, "
        "itself first checked against a full forward. Then 8 tokens are generated "
        "greedily through each runtime, each step's cache fed back, and compared with "
        "eager ``generate(do_sample=False)``."
    )

    def build(self, config: Any, *, seed: int = 0) -> UntrainedModel:
        """The causal LM of ``config``, five decode-step input sets, their dynamic shapes."""
        return _build(config, seed)

    def label(self, m: UntrainedModel, feeds: dict[str, Any]) -> str:
        index = next((i for i, f in enumerate(m.input_sets) if f is feeds), None)
        masks = m.prompt_masks
        prompt_mask = masks[index] if index is not None and index < len(masks) else None
        label = _label(feeds, m.cache_argument, prompt_mask)
        shape = m.shapes[index] if index is not None and index < len(m.shapes) else None
        at_bounds = index == len(m.input_sets) - 1 and shape and shape[0] == BATCH_MAX
        return label + (" at bounds" if at_bounds else "")

    def check_eager(self, m: UntrainedModel, atol: float) -> list[dict[str, Any]]:
        """The decode step's last logits equal a forward over prompt + new tokens."""
        return _check_eager(m, atol)

    new_tokens = 8

    def cannot_generate(self, m: UntrainedModel) -> str | None:
        model_type = getattr(m.config, "model_type", None)
        if model_type in NO_GENERATION:
            return NO_GENERATION[model_type]
        if model_type in INPUT_BUILDERS:
            return (
                "its inputs are not token ids and a cache of its own "
                f"({', '.join(m.notes) or 'a family input builder'})"
            )
        return None

    def generate_eager(self, m: UntrainedModel) -> Generation:
        """``generate(do_sample=False)`` of :data:`NEW_TOKENS` tokens on the prompt of
        :func:`generation_prompt`, with a generation config that sets nothing but the
        padding token: no end-of-sequence stop, no logits processor."""
        return _generate_eager(m, self.new_tokens)

    def generate(self, m: UntrainedModel, call: Any, forced: Any) -> Generation:
        """Greedy decoding through ``call``: the first prompt token runs eagerly (the
        export's cache holds at least one token), the rest of the prompt goes through
        ``call`` as one step (one token per call for a one-token decode step), then one
        call per new token with the cache the previous call returned. Without a cache,
        each step is a full forward over the whole sequence."""
        return _generate(m, call, forced, self.new_tokens)


def _build(config: Any, seed: int) -> UntrainedModel:
    import torch

    from ..caches import cache_dynamic_shapes

    torch.manual_seed(seed)
    # float32 whatever dtype the config declares: exports are checked on CPU.
    model = _build_causal_lm(config).to(torch.float32).eval()
    prepare_weights(model, config)
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
    positions = _positions_differ(model, config)
    if positions:
        notes.append(
            "position_ids as an input: without them the forward numbers positions otherwise "
            "than generate (cumsum(attention_mask) - 1), so the decode step takes them as "
            "generate computes them"
        )
    seq_max, cache_max = length_bounds(config)
    bounds = (seq_max, cache_max)
    shapes = _shapes(one_token, cache_argument is not None, bounds)
    built = _input_sets(model, config, cache_argument, shapes, generator, positions)
    sets, prompts, prompt_masks = built
    if cache_argument is not None and cache_argument not in sets[0]:
        notes.append(f"no cache: {type(model).__name__} returned none after a prefill")
        cache_argument = None
        generator = torch.Generator().manual_seed(seed)
        shapes = _shapes(one_token, False, bounds)
        sets, prompts, prompt_masks = _input_sets(model, config, None, shapes, generator, positions)
    batch = torch.export.Dim("batch", min=1, max=BATCH_MAX)
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
            shapes = _shapes(one_token, False, bounds)
            sets, prompts, prompt_masks = _input_sets(
                model, config, None, shapes, generator, positions
            )
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
    if "position_ids" in sets[0]:
        dynamic_shapes["position_ids"] = {0: batch, 1: seq_length}
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
#: the export's first, every set a distinct shape, one left-padded; :func:`_shapes`
#: adds a last one at the declared upper bounds.
#: Batch and new tokens differ too, so that the tensors differ where the state has a
#: fixed size (recurrent models keep no cached length).
SHAPES = [(2, 3, 30, 0), (1, 3, 30, 0), (2, 1, 30, 0), (2, 5, 60, 0), (3, 4, 17, 0), (2, 2, 24, 5)]
#: the same with one new token per step (ONE_TOKEN_DECODE): only the batch tells the
#: sets of a fixed-size state apart
ONE_TOKEN_SHAPES = [
    (2, 1, 30, 0),
    (1, 1, 30, 0),
    (3, 1, 30, 0),
    (4, 1, 60, 0),
    (5, 1, 17, 0),
    (6, 1, 24, 5),
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


def _shapes(
    one_token: bool, with_cache: bool, bounds: tuple[int, int]
) -> list[tuple[int, int, int, int]]:
    """The shapes of the input sets, the last one at the declared upper bounds
    (``BATCH_MAX``, ``seq_max``, ``cache_max``): what an export declares is checked."""
    seq_max, cache_max = bounds
    if not with_cache:
        return [*NO_CACHE_SHAPES, (BATCH_MAX, seq_max, 0, 0)]
    if one_token:
        return [*ONE_TOKEN_SHAPES, (BATCH_MAX, 1, cache_max, 0)]
    return [*SHAPES, (BATCH_MAX, seq_max, cache_max, 0)]


def _input_sets(
    model: Any,
    config: Any,
    cache_argument: str | None,
    shapes: list[Any],
    generator: Any,
    positions: bool = False,
) -> tuple[list[Any], list[Any], list[Any]]:
    built = [
        _decode_inputs(model, config, cache_argument, b, s, c, generator, p, positions)
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
        if "position_ids" in feeds:
            full["position_ids"] = _positions(full["attention_mask"], full["input_ids"].shape[1])
        if takes_use_cache:
            full["use_cache"] = False
        with torch.no_grad():
            step = m.model(**copy.deepcopy(feeds)).logits
            whole = m.model(**full).logits[:, -new.shape[1] :]
        diff = float((step.double() - whole.double()).abs().max())
        out.append({"input_set": i, "abs": diff, "ok": diff <= atol})
    return out


#: (batch, prompt length) of the generation stage's prompt
GENERATION_PROMPT = (2, 6)


def generation_prompt(m: UntrainedModel) -> tuple[Any, Any]:
    """The token ids and attention mask the generation stage starts from (seeded)."""
    import torch

    generator = torch.Generator().manual_seed(1234)
    ids = _random_ids(m.config, GENERATION_PROMPT, generator)
    return ids, torch.ones_like(ids)


#: generation settings that make ``generate`` a plain argmax over the raw logits
_NEUTRAL = {
    "eos_token_id": None,  # no stop before the last token
    "do_sample": False,
    "num_beams": 1,
    "repetition_penalty": 1.0,
    "no_repeat_ngram_size": 0,
    "encoder_no_repeat_ngram_size": 0,
    "min_length": 0,
    "min_new_tokens": None,
    "bad_words_ids": None,
    "suppress_tokens": None,
    "begin_suppress_tokens": None,
    "forced_bos_token_id": None,
    "forced_eos_token_id": None,
    "temperature": 1.0,
    "top_k": None,
    "top_p": None,
    "max_length": None,
}


def _greedy_config(config: Any) -> Any:
    """The model's generation config with every logits processor and stop turned off.

    The model's own settings (its special tokens, what its ``generate`` needs) stay; an
    end-of-sequence stop or a repetition penalty would make ``generate`` differ from
    the argmax of the logits for reasons that have nothing to do with the export.
    """
    import copy

    from transformers import GenerationConfig

    out = copy.deepcopy(config) if config is not None else GenerationConfig()
    for key, value in _NEUTRAL.items():
        setattr(out, key, value)
    if getattr(out, "pad_token_id", None) is None:
        out.pad_token_id = 0
    return out


def greedy_generate(
    model: Any, feeds: dict[str, Any], new_tokens: int, **settings: Any
) -> Generation:
    """Eager ``generate`` of ``new_tokens`` greedy tokens from ``feeds``, with every
    logits processor and stop off (:func:`_greedy_config`) and ``settings`` set on the
    generation config; the model's own config is restored afterwards. A model whose
    ``generate`` hands the merged embeddings to its language model's ``generate``
    (BLIP-2) gets the same on that model's config: its end token would otherwise stop a
    row early."""
    import torch

    owners = [model]
    inner = getattr(model, "language_model", None)
    if getattr(inner, "generation_config", None) is not None and hasattr(inner, "generate"):
        owners.append(inner)
    saved = [owner.generation_config for owner in owners]
    for owner in owners:
        owner.generation_config = _greedy_config(owner.generation_config)
        for key, value in settings.items():
            setattr(owner.generation_config, key, value)
    try:
        with torch.no_grad():
            out = model.generate(
                **feeds,
                max_new_tokens=new_tokens,
                do_sample=False,
                num_beams=1,
                output_logits=True,
                return_dict_in_generate=True,
            )
    finally:
        for owner, config in zip(owners, saved, strict=True):
            owner.generation_config = config
    if len(out.logits) != new_tokens:
        raise AssertionError(
            f"generate returned {len(out.logits)} new tokens instead of {new_tokens}"
        )
    return Generation(
        tokens=out.sequences[:, -new_tokens:],
        logits=[step.detach().float() for step in out.logits],
        calls=new_tokens,
        prefill="generate",
    )


def _generate_eager(m: UntrainedModel, new_tokens: int) -> Generation:
    import torch

    ids, mask = generation_prompt(m)
    model = m.model
    saved = model.generation_config
    model.generation_config = _greedy_config(saved)
    special = GENERATION_INPUTS.get(getattr(m.config, "model_type", None))
    if special:
        ids, mask = ids[:, : special[0] or ids.shape[1]], mask[:, : special[0] or ids.shape[1]]
    for key, value in (special[1](model) if special else {}).items():
        setattr(model.generation_config, key, value)
    try:
        with torch.no_grad():
            out = model.generate(
                input_ids=ids,
                attention_mask=mask,
                max_new_tokens=new_tokens,
                do_sample=False,
                num_beams=1,
                use_cache=m.cache_argument is not None,
                output_logits=True,
                return_dict_in_generate=True,
            )
    finally:
        model.generation_config = saved
    tokens = out.sequences[:, ids.shape[1] :]
    if special:
        # its generate returns the ids laid out again per codebook, start tokens
        # removed: the new tokens are the argmax of each step (no logits processor)
        tokens = torch.stack([step.argmax(-1) for step in out.logits], 1)
        returned = out.sequences.reshape(tokens.shape[0], -1)[:, -new_tokens:]
        if not torch.equal(returned, tokens):
            raise AssertionError(
                "generate returned other new tokens than the argmax of its logits: "
                f"{returned.tolist()} against {tokens.tolist()}"
            )
    if tokens.shape[1] != new_tokens:
        raise AssertionError(
            f"generate returned {tokens.shape[1]} new tokens instead of {new_tokens}"
        )
    logits = [step.detach().float() for step in out.logits]
    return Generation(
        tokens=tokens,
        logits=logits,
        calls=new_tokens,
        prefill="generate",
        note=_positions_note(m, ids, mask, logits[0]),
    )


def _positions_note(m: UntrainedModel, ids: Any, mask: Any, first: Any) -> str:
    """Says so when ``generate`` feeds positions that the model's forward, called
    without ``position_ids`` (as the decode step is exported), does not compute."""
    import torch

    if "position_ids" not in inspect.signature(m.model.forward).parameters:
        return ""
    if "position_ids" in m.inputs:
        return ""  # the decode step takes the positions generate feeds
    extra = {"use_cache": False} if m.cache_argument is not None else {}
    with torch.no_grad():
        plain = m.model(input_ids=ids, attention_mask=mask, **extra).logits[:, -1]
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        given = m.model(input_ids=ids, attention_mask=mask, position_ids=positions, **extra).logits[
            :, -1
        ]
    off = float((plain.double() - first.double()).abs().max())
    if off > 1e-4 and float((given.double() - first.double()).abs().max()) <= 1e-4:
        return (
            "generate feeds position_ids = cumsum(attention_mask) - 1, and the model's "
            f"forward without position_ids computes other positions (first logits differ "
            f"by {off:.3g}): a step exported without position_ids cannot equal generate"
        )
    return ""


def _state_of(out: Any, cache_argument: str) -> Any:
    state = getattr(out, cache_argument, None)
    if state is None:
        state = getattr(out, "cache", None) or getattr(out, "past_key_values", None)
    if state is None:
        raise AssertionError(f"the step returned no {cache_argument!r} to feed back")
    return state


def _generate(m: UntrainedModel, call: Any, forced: Any, new_tokens: int) -> Generation:
    import torch

    ids, mask = generation_prompt(m)
    special = GENERATION_INPUTS.get(getattr(m.config, "model_type", None))
    if special:  # the ids as its generate feeds them to the decode steps
        ids, mask = ids[:, : special[0] or ids.shape[1]], mask[:, : special[0] or ids.shape[1]]
        ids, forced = special[2](m.model, ids, forced, special[1](m.model))
    takes_mask = "attention_mask" in m.inputs
    takes_positions = "position_ids" in m.inputs
    extra = {"use_cache": m.inputs["use_cache"]} if "use_cache" in m.inputs else {}
    logits: list[Any] = []
    calls = 0

    def feeds_of(tokens: Any, full_mask: Any, state: Any, seen: int) -> dict[str, Any]:
        """The inputs of one call: ``tokens``, the last of ``seen`` tokens so far."""
        feeds: dict[str, Any] = {"input_ids": tokens}
        if takes_mask:
            feeds["attention_mask"] = full_mask
        if state is not None:
            feeds[m.cache_argument] = state
        if takes_positions:
            every = torch.ones((tokens.shape[0], seen), dtype=torch.int64)
            feeds["position_ids"] = _positions(every, tokens.shape[1])
        feeds.update(extra)
        return feeds

    if m.cache_argument is None:
        for t in range(new_tokens):
            out = call("model", feeds_of(ids, mask, None, ids.shape[1]))
            calls += 1
            logits.append(out.logits[:, -1].detach().float())
            ids = torch.cat([ids, forced[:, t : t + 1]], 1)
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
        prefill = "every step a full forward over the whole sequence (no cache)"
    else:
        logits, calls, prefill = _exported_decode(m, call, ids, forced, new_tokens, feeds_of)
    tokens = torch.stack([step.argmax(-1) for step in logits], 1)
    return Generation(tokens=tokens, logits=logits, calls=calls, prefill=prefill)


def _exported_decode(
    m: UntrainedModel, call: Any, ids: Any, forced: Any, new_tokens: int, feeds_of: Any
) -> tuple[list[Any], int, str]:
    """The decode loop with as few tokens eager as ``call`` accepts: the first prompt
    token (the export's cache holds at least one token), else more, one at a time, up to
    the last new token; the logits, the number of calls and what ran eagerly."""
    prompt, first_error = ids.shape[1], None
    for eager in range(1, prompt + new_tokens - 1):
        try:
            logits, calls = _decode_loop(m, call, ids, forced, new_tokens, feeds_of, eager)
        except Exception as e:  # the export rejects a cache this short
            first_error = first_error or e
            continue
        if eager == 1 and prompt > 1:
            return (
                logits,
                calls,
                (
                    "first prompt token eager (the export's cache holds at least one token), "
                    "the rest through the export"
                ),
            )
        text = str(first_error).strip().splitlines()[0][:200] if first_error else ""
        why = (
            f"the export rejects a shorter cache ({type(first_error).__name__}: {text})"
            if first_error is not None
            else "the export's cache holds at least one token"
        )
        if eager < prompt:
            return logits, calls, f"first {eager} of {prompt} prompt tokens eager: {why}"
        return (
            logits,
            calls,
            (
                f"the {prompt}-token prompt and the first {eager - prompt + 1} new token(s) "
                f"eager, every later one through the export: {why}"
            ),
        )
    assert first_error is not None
    raise first_error


def _decode_loop(
    m: UntrainedModel,
    call: Any,
    ids: Any,
    forced: Any,
    new_tokens: int,
    feeds_of: Any,
    eager: int,
) -> tuple[list[Any], int]:
    """Run the first ``eager`` tokens of prompt + forced tokens eagerly, then the rest of
    the prompt as one step (one token per step for a one-token decode step) and one token
    per step through ``call``; the logits of each generated token and the number of calls.
    An ``eager`` beyond the prompt takes the first new tokens' logits from eager."""
    import torch

    stream = torch.cat([ids, forced[:, : new_tokens - 1]], 1)
    prompt = ids.shape[1]
    given = {"position_ids": torch.arange(eager)[None]} if "position_ids" in m.inputs else {}
    with torch.no_grad():
        first = m.model(
            input_ids=stream[:, :eager],
            attention_mask=torch.ones_like(stream[:, :eager]),
            use_cache=True,
            **given,
        )
    state = _contiguous(_state_of(first, m.cache_argument))
    attention = _has_attention(state)
    one_token = getattr(m.config, "model_type", None) in ONE_TOKEN_DECODE
    # logits at position j predict token j + 1: the new tokens are predicted from prompt - 1 on
    logits: list[Any] = [first.logits[:, j].detach().float() for j in range(prompt - 1, eager)]
    single_from = eager
    chunks = []
    if eager < prompt and not one_token:  # the rest of the prompt in one step
        chunks.append(stream[:, eager:prompt])
        single_from = prompt
    chunks += [stream[:, j : j + 1] for j in range(single_from, stream.shape[1])]
    seen = eager
    for chunk in chunks:
        seen += chunk.shape[1]
        step_mask = (
            torch.ones((ids.shape[0], seen), dtype=torch.int64)
            if attention
            else torch.ones_like(chunk)
        )
        out = call("model", feeds_of(chunk, step_mask, state, seen))
        state = _state_of(out, m.cache_argument)
        if seen >= prompt:
            logits.append(out.logits[:, -1].detach().float())
    return logits, len(chunks)


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
    # a model that takes no mask is not checked on padding, whatever its prompt had
    padded = mask is not None and any(
        m is not None and bool((m == 0).any()) for m in (mask, prompt_mask)
    )
    return (
        f"batch={batch} seq={seq}"
        + (f" cache={length}" if length is not None else "")
        + (" left-padded" if padded else "")
    )


register(TextGeneration())
