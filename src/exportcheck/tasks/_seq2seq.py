"""Encoder-decoder models exported as deployed: encoder, first decoder step, decoder step.

Three graphs, as a runtime drives them:

* ``encoder``: the encoder's inputs (token ids and mask) -> ``encoder_hidden_states``;
* ``decoder_init``: the first decoder step, without a cache: ``decoder_input_ids``, the
  encoder's states and mask -> logits and an ``EncoderDecoderCache`` (self-attention of
  the decoder tokens, cross-attention keys and values computed from the encoder states);
* ``decoder``: one decoder step with that cache -> logits and the grown cache. The
  cross-attention part keeps the encoder's length; the self-attention part grows.

Dynamic dimensions: ``batch``, ``encoder_length``, ``seq_length`` (new decoder tokens)
and ``cache_length`` (decoder tokens already cached). The input sets of the three graphs
have distinct shapes; two are right-padded on the encoder side, as a tokenizer pads a
batch, so the cross-attention mask has zeros. The decoder step is checked against a full
decoder forward over its prefix and new tokens (eager consistency), and greedy
generation runs the three graphs (encoder once, the first step, then one call per token)
against eager ``generate``. A family may say how its model's ``generate`` differs from a
plain greedy loop (``generation_inputs``, ``decoder_prompts``, ``logits_processors`` of
:mod:`exportcheck.families`: Dia's delay pattern and EOS processors); the loop then
feeds and picks as that ``generate`` does.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import inspect
from typing import Any

from ..dims import BATCH_MAX, length_bounds, sequence_bound
from ..families import (
    DECODER_PROMPTS,
    GENERATION_INPUTS,
    INPUT_LAYOUTS,
    LOGITS_PROCESSORS,
    ONE_TOKEN_DECODE,
)
from ..models import UntrainedModel, prepare_weights
from ..patches import eager_fixes
from . import Component, Generation, Task, _audio_lm
from ._encoder import token_inputs
from ._tokens import random_ids

#: (batch, encoder length, padding of each encoder row, decoder tokens cached, new
#: decoder tokens) of each input set but the last, which is at the declared bounds
#: Every batch size differs, so that an encoder of one accepted length (Whisper) still
#: sees a shape of its own in each set.
SHAPES = [
    (2, 12, (), 5, 3),
    (1, 7, (), 4, 2),
    (3, 16, (), 6, 1),
    (4, 10, (), 3, 4),
    (5, 14, (5,), 8, 2),
    (6, 9, (2, 4), 2, 3),
]
#: decoder tokens of the first step of each input set (a decoder prompt can be longer
#: than the start token: forced language and task tokens)
#: The export's first set has 2: a size of 1 would specialize the dimension.
INIT_TOKENS = [2, 1, 1, 3, 1, 2]


@functools.cache
def _parts() -> dict[str, type]:
    """The wrapper modules: an encoder per kind of input, the first decoder step and the
    decoder step (built on first use: torch is imported lazily)."""
    import torch

    # MoEModelOutput: a BaseModelOutput with the router fields that mixture-of-experts
    # encoder-decoders (switch_transformers, nllb-moe) read from their encoder's output
    from transformers.modeling_outputs import BaseModelOutputWithPooling, MoEModelOutput

    @dataclasses.dataclass
    class EncoderStates(MoEModelOutput):
        """The encoder's output as the decoder reads it; ``attention_mask`` is the mask of
        the states (models whose encoder subsamples its input return it)."""

        attention_mask: Any = None

    class Encoder(torch.nn.Module):
        """The encoder of ``model``: token ids and mask -> its last hidden states, and
        the states' mask when the encoder returns one (``with_mask``)."""

        def __init__(
            self, model: Any, with_mask: bool = False, states: str = "last_hidden_state"
        ) -> None:
            super().__init__()
            self.model = model
            self.with_mask = with_mask
            #: the output of the encoder the decoder cross-attends to
            self.states = states

        def encode(self, **feeds: Any) -> Any:
            out = self.model.get_encoder()(**feeds)
            if self.with_mask:
                return {
                    "last_hidden_state": getattr(out, self.states),
                    "attention_mask": out.attention_mask,
                }
            return getattr(out, self.states)

        def forward(self, input_ids: Any, attention_mask: Any) -> Any:
            return self.encode(input_ids=input_ids, attention_mask=attention_mask)

    class FeatureEncoder(Encoder):
        """An audio encoder fed log-mel features (a mask when its feature extractor
        gives one) -> its last hidden states."""

        def forward(self, input_features: Any, attention_mask: Any = None) -> Any:  # type: ignore[override]
            check_rank(
                "input_features",
                input_features,
                3,
                "frames and mel bins, ordered as the feature extractor orders them",
            )
            feeds = {} if attention_mask is None else {"attention_mask": attention_mask}
            return self.encode(input_features=input_features, **feeds)

    class WaveEncoder(Encoder):
        """An audio encoder fed the raw waveform -> its last hidden states."""

        def forward(self, input_values: Any, attention_mask: Any = None) -> Any:  # type: ignore[override]
            check_rank("input_values", input_values, 2, "samples")
            feeds = {} if attention_mask is None else {"attention_mask": attention_mask}
            return self.encode(input_values=input_values, **feeds)

    class PixelEncoder(Encoder):
        """An image encoder fed pixel values -> its last hidden states."""

        def forward(self, pixel_values: Any) -> Any:  # type: ignore[override]
            check_rank("pixel_values", pixel_values, 4, "channels, height and width")
            return self.encode(pixel_values=pixel_values)

    class PatchEncoder(Encoder):
        """An image encoder fed flattened patches and their mask -> its last hidden
        states."""

        def forward(self, flattened_patches: Any, attention_mask: Any) -> Any:  # type: ignore[override]
            check_rank(
                "flattened_patches",
                flattened_patches,
                3,
                "patches, each its row and column then its pixels",
            )
            return self.encode(flattened_patches=flattened_patches, attention_mask=attention_mask)

    class DecoderInit(torch.nn.Module):
        """The first decoder step: no cache in, logits and the filled cache out."""

        def __init__(
            self,
            model: Any,
            cache_argument: str,
            states: str = "last_hidden_state",
            states_mask_argument: str | None = None,
        ) -> None:
            super().__init__()
            self.model = model
            self.cache_argument = cache_argument
            #: the encoder output the model's forward hands its decoder: the states are
            #: given under that name
            self.states = states
            #: the argument of the model's forward that takes the states' own mask, for
            #: a model that reads it there instead of from the encoder's output
            self.states_mask_argument = states_mask_argument

        def decode(
            self,
            ids: Any,
            states: Any,
            mask: Any,
            states_mask: Any = None,
            decoder_mask: Any = None,
            **cache: Any,
        ) -> dict[str, Any]:
            # ``mask`` is the encoder input's (tokens, frames or samples): the model
            # derives the cross-attention mask from it as its own forward does;
            # ``states_mask`` is the states' own, for models that read it from the
            # encoder's output; ``decoder_mask`` the decoder tokens' (cached and new),
            # zeros where a decoder prompt is left-padded.
            masks = {} if mask is None else {"attention_mask": mask}
            if states_mask is not None and self.states_mask_argument is not None:
                masks[self.states_mask_argument] = states_mask
            if decoder_mask is not None:
                masks["decoder_attention_mask"] = decoder_mask
            if self.states == "pooler_output":
                encoded = BaseModelOutputWithPooling(last_hidden_state=states, pooler_output=states)
            else:
                encoded = EncoderStates(last_hidden_state=states, attention_mask=states_mask)
            out = self.model(
                encoder_outputs=encoded,
                decoder_input_ids=ids,
                use_cache=True,
                **masks,
                **cache,
            )
            return {"logits": out.logits, "cache": _cache_of(out, self.cache_argument)}

        def forward(
            self,
            decoder_input_ids: Any,
            encoder_hidden_states: Any,
            attention_mask: Any = None,
            encoder_attention_mask: Any = None,
            decoder_attention_mask: Any = None,
        ) -> dict[str, Any]:
            return self.decode(
                decoder_input_ids,
                encoder_hidden_states,
                attention_mask,
                encoder_attention_mask,
                decoder_attention_mask,
            )

    class DecoderStep(DecoderInit):
        """One decoder step with the cache of the steps before."""

        def forward(  # type: ignore[override]
            self,
            decoder_input_ids: Any,
            encoder_hidden_states: Any,
            attention_mask: Any = None,
            cache: Any = None,
            encoder_attention_mask: Any = None,
            decoder_cache_mask: Any = None,
        ) -> dict[str, Any]:
            # the order of the inputs of the text graphs: ids, states, mask, cache;
            # ``decoder_cache_mask`` says which cached decoder tokens are real (zeros on
            # a left-padded prompt's pads); the new tokens are
            feeds = {self.cache_argument: cache}
            decoder_mask = None
            if decoder_cache_mask is not None:
                new = torch.ones_like(decoder_input_ids, dtype=decoder_cache_mask.dtype)
                decoder_mask = torch.cat([decoder_cache_mask, new], 1)
            return self.decode(
                decoder_input_ids,
                encoder_hidden_states,
                attention_mask,
                encoder_attention_mask,
                decoder_mask,
                **feeds,
            )

    return {
        "input_ids": Encoder,
        "input_features": FeatureEncoder,
        "input_values": WaveEncoder,
        "pixel_values": PixelEncoder,
        "flattened_patches": PatchEncoder,
        "decoder_init": DecoderInit,
        "decoder": DecoderStep,
    }


def _audio_lm_class(task: Any, config: Any) -> bool:
    """True when the task's auto class maps ``config`` to an audio LM (a model with
    ``get_audio_features``, or whose family gives one, that is not an encoder-decoder)."""
    import transformers

    from ._audio_lm import audio_function_of

    mapping = getattr(transformers.models.auto.modeling_auto, task.mapping, {})
    cls = getattr(transformers, mapping.get(config.model_type, ""), None)
    if cls is None:
        return False
    return hasattr(cls, "get_audio_features") or audio_function_of(config.model_type) is not None


def check_rank(name: str, tensor: Any, rank: int, layout: str) -> None:
    """A ValueError that says which layout an encoder input must have, unless it has it."""
    got = getattr(tensor, "dim", lambda: None)()
    if got != rank:
        shape = tuple(getattr(tensor, "shape", ()))
        raise ValueError(
            f"{name} must have rank {rank} (batch first, then {layout}); got rank {got}, "
            f"shape {shape}. Pass what the model's feature extractor or image processor "
            f"returns for a list of examples (a single one as a batch of one: {name}[None])."
        )


def _cache_of(out: Any, cache_argument: str) -> Any:
    cache = getattr(out, cache_argument, None)
    if cache is None:
        cache = getattr(out, "past_key_values", None) or getattr(out, "cache", None)
    return cache


def _cache_argument(model: Any) -> str:
    params = inspect.signature(model.forward).parameters
    for name in ("cache", "past_key_values"):
        if name in params:
            return name
    raise ValueError(
        f"{type(model).__name__}.forward takes neither 'cache' nor 'past_key_values': "
        "its decoder step cannot be given a cache"
    )


def _contiguous(cache: Any) -> Any:
    """A deep copy of ``cache`` with contiguous tensors, as a runtime returns them."""
    import torch
    import torch.utils._pytree as pytree

    from ..caches.pytrees import cache_pytrees

    with cache_pytrees():
        return pytree.tree_map(
            lambda t: t.contiguous().clone() if isinstance(t, torch.Tensor) else t, cache
        )


def _decoder_config(config: Any) -> Any:
    return config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config


def decoder_channels(config: Any) -> int | None:
    """The ids per decoder position a family declares (``input_layouts`` entry
    ``decoder_channels``, a function of the config: Dia's audio codebooks), None for one
    id per position."""
    declared = INPUT_LAYOUTS.get(getattr(config, "model_type", None), ({}, ""))[0]
    channels = declared.get("decoder_channels")
    return None if channels is None else int(channels(config))


def decoder_ids(config: Any, shape: tuple[int, int], generator: Any) -> Any:
    """Random decoder ids of ``(batch, tokens)``, with a last axis of
    :func:`decoder_channels` ids per position when the family declares one."""
    channels = decoder_channels(config)
    full = shape if channels is None else (*shape, channels)
    return random_ids(_decoder_config(config), full, generator)


def decoder_start(model: Any, config: Any) -> int:
    """The token every decoder sequence starts with."""
    for holder in (getattr(model, "generation_config", None), _decoder_config(config), config):
        start = getattr(holder, "decoder_start_token_id", None)
        if isinstance(start, int):
            return start
    pad = getattr(_decoder_config(config), "pad_token_id", None)
    return pad if isinstance(pad, int) else 0


@dataclasses.dataclass
class EncoderSide:
    """The encoder's input sets and how their dimensions are declared.

    * ``sets``: the encoder's keyword arguments for each input set
    * ``dynamic_shapes``: their dynamic dimensions
    * ``mask_dims``: the dimensions of ``attention_mask`` (the decoder steps take it too),
      None when the model takes no mask
    * ``states_length``: the Dim of the encoder states' length (cross-attention keys and
      values), None when it is static
    * ``labels``: one description per set (``batch=2 encoder=12 padded``)
    * ``notes``: what differs from the usual inputs, and why
    """

    sets: list[dict[str, Any]]
    dynamic_shapes: dict[str, Any]
    mask_dims: dict[int, Any] | None
    states_length: Any
    labels: list[str]
    notes: list[str] = dataclasses.field(default_factory=list)


class Seq2Seq(Task):
    """The base of encoder-decoder tasks; a subclass names its auto class and builds the
    encoder's inputs (:meth:`encoder_side`, :meth:`encoder_inputs`)."""

    auto_class: str = ""
    new_tokens = 8
    #: pad the decoder's prompts in the padded sets when the encoder takes no mask
    #: (:func:`pads_decoder`); the text and speech tasks pad the encoder's input
    pad_decoder_prompts = False

    def encoder_inputs(
        self,
        model: Any,
        config: Any,
        batch: int,
        length: int,
        padding: tuple[int, ...],
        generator: Any,
    ) -> dict[str, Any]:
        """The encoder's inputs for one batch; the mask is ``attention_mask``."""
        return token_inputs(config, batch, length, padding, generator)

    def encoder_side(
        self, model: Any, config: Any, shapes: list[tuple[Any, ...]], generator: Any, batch: Any
    ) -> EncoderSide:
        """The encoder's input sets for ``shapes`` (one per (batch, encoder length,
        padding, ...); the last at the declared bounds) and their dynamic shapes: token
        ids and mask of one ``encoder_length``, which the states keep."""
        import torch

        length = torch.export.Dim("encoder_length", min=1, max=shapes[-1][1])
        dims = {0: batch, 1: length}
        return EncoderSide(
            sets=[self.encoder_inputs(model, config, b, n, p, generator) for b, n, p, *_ in shapes],
            dynamic_shapes={"input_ids": dims, "attention_mask": dims},
            mask_dims=dims,
            states_length=length,
            labels=[_label(shape, "encoder") for shape in shapes],
        )

    def encoder_class(self, model: Any, side: EncoderSide) -> type:
        """The wrapper of the encoder graph: the one of the kind of its first input."""
        return _parts()[next(iter(side.sets[0]))]

    def encoder_outputs(self, model: Any, feeds: dict[str, Any]) -> Any:
        """The encoder's eager output for ``feeds`` (read for the mask it may return)."""
        return model.get_encoder()(**feeds)

    def states_output(self, model: Any) -> str:
        """The output of the encoder that the decoder cross-attends to."""
        return "last_hidden_state"

    def states_mask_argument(self, model: Any) -> str | None:
        """The argument of the model's forward that takes the mask of the states when the
        encoder graph returns one; None: it goes in the encoder's output, where the
        model reads it."""
        return None

    def encoder_bound(self, config: Any) -> int:
        """The largest encoder length declared and checked."""
        return sequence_bound(config)

    def builds_as_encoder_decoder(self, config: Any) -> bool:
        """True for a config whose model this task cuts into encoder and decoder steps."""
        return bool(getattr(config, "is_encoder_decoder", False))

    def new_model(self, config: Any) -> Any:
        """The model of ``config`` the graphs are cut from: the auto class's, in float32
        and eval mode, its weights prepared (:func:`exportcheck.models.prepare_weights`)."""
        import torch
        import transformers

        auto = getattr(transformers, self.auto_class)
        model = auto.from_config(config).to(torch.float32).eval()
        prepare_weights(model, config)
        return model

    def build(self, config: Any, *, seed: int = 0) -> UntrainedModel:
        import torch

        from ..caches import cache_dynamic_shapes

        if not self.builds_as_encoder_decoder(config):
            if _audio_lm_class(self, config):
                return _audio_lm.build(self, config, seed)
            raise ValueError(
                f"{type(config).__name__} is not an encoder-decoder (is_encoder_decoder is "
                f"not set): {config.model_type!r} is in {self.mapping} but its model feeds "
                "an encoder's states into a causal LM as input embeddings; the "
                f"{self.name} task exports encoder-decoders (encoder, decoder steps with "
                "an EncoderDecoderCache)"
            )
        torch.manual_seed(seed)
        model = self.new_model(config)
        if not hasattr(model, "get_encoder"):
            raise ValueError(
                f"{type(model).__name__} has no get_encoder(): not an encoder-decoder model"
            )
        cache_argument = _cache_argument(model)
        parts = _parts()
        DecoderInit, DecoderStep = parts["decoder_init"], parts["decoder"]
        generator = torch.Generator().manual_seed(seed)
        enc_max = self.encoder_bound(config)
        seq_max, cache_max = length_bounds(_decoder_config(config))
        shapes = [*SHAPES, (BATCH_MAX, enc_max, (), cache_max, seq_max)]
        init_tokens = [*INIT_TOKENS, seq_max]
        notes = []
        one_token = config.model_type in ONE_TOKEN_DECODE
        if one_token:
            # the first step takes a whole prompt; every step with a cache one token
            shapes = [(b, n, p, c, 1) for b, n, p, c, _ in shapes]
            notes.append(f"one new token per decoder step: {ONE_TOKEN_DECODE[config.model_type]}")
        batch = torch.export.Dim("batch", min=1, max=BATCH_MAX)
        side = self.encoder_side(model, config, shapes, generator, batch)
        Encoder = self.encoder_class(model, side)
        with torch.no_grad():
            probe = self.encoder_outputs(model, copy.deepcopy(side.sets[0]))
        # An encoder that subsamples its input may return the mask of its states, which
        # the decoder reads from the encoder's output instead of the input's mask.
        with_mask = getattr(probe, "attention_mask", None) is not None
        states_output = self.states_output(model)
        mask_argument = self.states_mask_argument(model) if with_mask else None
        encoder = Encoder(model, with_mask=with_mask, states=states_output)
        channels = decoder_channels(config)
        if channels:
            notes.append(
                f"decoder ids (batch, seq_length, {channels}): {channels} ids per decoder "
                f"position, {INPUT_LAYOUTS[config.model_type][1]}"
            )
        reasons = [
            table[config.model_type][-1]
            for table in (DECODER_PROMPTS, GENERATION_INPUTS, LOGITS_PROCESSORS)
            if config.model_type in table
        ]
        if reasons:
            notes.append("generation as the model's own generate runs: " + "; ".join(reasons))
        decoder_padded = self.pad_decoder_prompts and pads_decoder(model, side, with_mask)
        init_sets, step_sets, prompts, prompt_masks = [], [], [], []
        for feeds, shape, first in zip(side.sets, shapes, init_tokens, strict=True):
            n_batch, padding, cached, new = shape[0], shape[2], shape[3], shape[4]
            with torch.no_grad():
                states, masks = _states(encoder(**copy.deepcopy(feeds)), feeds, side)
            init_sets.append(
                {
                    "decoder_input_ids": decoder_ids(config, (n_batch, first), generator),
                    "encoder_hidden_states": states,
                    **masks,
                }
            )
            prefix = decoder_ids(config, (n_batch, cached), generator)
            prefix_mask = left_padded(n_batch, cached, padding) if decoder_padded else None
            # with the family's eager fixes, as validate's reference: a decoder that
            # changed its inputs in place would otherwise store changed states in the sets
            with torch.no_grad(), eager_fixes(model):
                prefill = DecoderInit(model, cache_argument, states_output, mask_argument)(
                    prefix, states, **masks, decoder_attention_mask=prefix_mask
                )
            # in the order of DecoderStep.forward: the ONNX inputs follow it
            step = {
                "decoder_input_ids": decoder_ids(config, (n_batch, new), generator),
                "encoder_hidden_states": states,
                **{k: v for k, v in masks.items() if k == "attention_mask"},
                "cache": _contiguous(prefill["cache"]),
                **{k: v for k, v in masks.items() if k != "attention_mask"},
            }
            if decoder_padded:
                step["decoder_cache_mask"] = prefix_mask
            step_sets.append(step)
            prompts.append(prefix)
            prompt_masks.append(prefix_mask)
        seq_length = torch.export.Dim("seq_length", min=1, max=seq_max)
        cache_length = torch.export.Dim("cache_length", min=1, max=cache_max)
        cache = step_sets[0]["cache"]
        states_dims = {0: batch}
        if side.states_length is not None:
            states_dims[1] = side.states_length
        step_shapes = {
            "decoder_input_ids": {0: batch, 1: seq_length},
            "encoder_hidden_states": states_dims,
            "cache": [
                cache_dynamic_shapes(cache.self_attention_cache, batch, cache_length),
                cache_dynamic_shapes(cache.cross_attention_cache, batch, side.states_length),
            ],
        }
        if with_mask:
            step_shapes["encoder_attention_mask"] = {
                0: batch,
                **dict(list(states_dims.items())[1:]),
            }
        elif side.mask_dims:
            step_shapes["attention_mask"] = side.mask_dims
        init_shapes = {k: v for k, v in step_shapes.items() if k != "cache"}
        if decoder_padded:
            step_shapes["decoder_cache_mask"] = {0: batch, 1: cache_length}
            notes.append(
                "decoder prompts left-padded in the padded sets: the decoder step takes "
                "decoder_cache_mask (which cached decoder tokens are real, zeros on the "
                "pads; the new tokens are) and gives the model the mask over cached and "
                "new tokens, since the encoder takes no mask and the padding a batch can "
                "have is on the decoder's side; the first decoder step is checked on "
                "unpadded prompts only, as the outputs at a pad, which attends to nothing, "
                "are undefined"
            )
        if one_token:
            step_shapes = {**step_shapes, "decoder_input_ids": {0: batch}}
        init_labels = [
            _label((*shape[:4], n), "decoder_init", encoder=label)
            for shape, n, label in zip(shapes, init_tokens, side.labels, strict=True)
        ]
        step_labels = [
            _label(shape, "decoder", encoder=label, decoder_padded=decoder_padded)
            for shape, label in zip(shapes, side.labels, strict=True)
        ]
        m = UntrainedModel(
            model=model,
            config=config,
            inputs=step_sets[0],
            other_inputs=step_sets[1:],
            dynamic_shapes=step_shapes,
            cache_argument=cache_argument,
            shapes=[(b, n, s, c) for b, n, _, c, s in shapes],
            prompts=prompts,
            prompt_masks=prompt_masks,
            task=self.name,
            notes=[*side.notes, *notes],
            components=[
                Component("encoder", encoder, side.sets, side.dynamic_shapes, side.labels),
                Component(
                    "decoder_init",
                    DecoderInit(model, cache_argument, states_output, mask_argument),
                    init_sets,
                    init_shapes,
                    init_labels,
                ),
                Component(
                    "decoder",
                    DecoderStep(model, cache_argument, states_output, mask_argument),
                    step_sets,
                    step_shapes,
                    step_labels,
                ),
            ],
        )
        return m

    def components(self, m: UntrainedModel) -> list[Component]:
        return list(m.components)

    def check_eager(self, m: UntrainedModel, atol: float) -> list[dict[str, Any]]:
        """The decoder step's logits equal a full decoder forward (no cache) over its
        prefix and new tokens, with the same encoder states."""
        import torch

        if _audio_lm.is_built(m):
            return _audio_lm.check_eager(m, atol)

        step = next(c for c in m.components if c.name == "decoder")
        init = next(c for c in m.components if c.name == "decoder_init")
        out = []
        for i, feeds in enumerate(step.input_sets):
            new = feeds["decoder_input_ids"]
            with torch.no_grad():
                got = step.module(**copy.deepcopy(feeds))["logits"]
                whole = init.module(
                    torch.cat([m.prompts[i], new], 1),
                    feeds["encoder_hidden_states"],
                    feeds.get("attention_mask"),
                    feeds.get("encoder_attention_mask"),
                    _whole_mask(feeds.get("decoder_cache_mask"), new),
                )["logits"][:, -new.shape[1] :]
            diff = float((got.double() - whole.double()).abs().max())
            out.append({"input_set": i, "abs": diff, "ok": diff <= atol})
        return out

    def generation_inputs(self, m: UntrainedModel) -> dict[str, Any]:
        """The encoder inputs generation starts from (batch 2, seeded, one row padded)."""
        import torch

        generator = torch.Generator().manual_seed(1234)
        return self.encoder_inputs(m.model, m.config, 2, 11, (3,), generator)

    def generate_eager(self, m: UntrainedModel) -> Generation:
        from .text_generation import greedy_generate

        if _audio_lm.is_built(m):
            return _audio_lm.generate_eager(m)
        start = decoder_start(m.model, m.config)
        if _generates_differently(m):
            return _special_generate_eager(m, self.generation_inputs(m), self.new_tokens, start)
        return greedy_generate(
            m.model, self.generation_inputs(m), self.new_tokens, decoder_start_token_id=start
        )

    def generate(self, m: UntrainedModel, call: Any, forced: Any) -> Generation:
        """The encoder once, the first decoder step on the start token, then one decoder
        step per token with the cache the step before returned."""
        import torch

        if _audio_lm.is_built(m):
            return _audio_lm.generate(m, call, forced)

        feeds = self.generation_inputs(m)
        init = next(c for c in m.components if c.name == "decoder_init")
        states, masks = _states(call("encoder", feeds), feeds, init.input_sets[0])
        start = torch.full((states.shape[0], 1), decoder_start(m.model, m.config))
        special = _special_generation(m, states.shape[0], start, forced, self.new_tokens)
        if special is not None:
            start, forced, choose = special
        # a decoder step that takes the decoder tokens' mask gets ones: generation
        # starts every row from the start token, unpadded
        step = next(c for c in m.components if c.name == "decoder")
        padded = "decoder_cache_mask" in step.input_sets[0]

        def decoder_mask(cached: int) -> dict[str, Any]:
            ones = torch.ones((states.shape[0], cached), dtype=torch.int64)
            return {"decoder_cache_mask": ones} if padded else {}

        out = call(
            "decoder_init",
            {
                "decoder_input_ids": start,
                "encoder_hidden_states": states,
                **masks,
            },
        )
        logits = [out["logits"][:, -1].detach().float()]
        tokens = [choose(start, logits[0])] if special is not None else []
        for t in range(self.new_tokens - 1):
            out = call(
                "decoder",
                {
                    "decoder_input_ids": forced[:, t : t + 1],
                    "encoder_hidden_states": states,
                    **{k: v for k, v in masks.items() if k == "attention_mask"},
                    "cache": out["cache"],
                    **{k: v for k, v in masks.items() if k != "attention_mask"},
                    **decoder_mask(t + 1),
                },
            )
            logits.append(out["logits"][:, -1].detach().float())
            if special is not None:
                fed = torch.cat([start, forced[:, : t + 1]], 1)
                tokens.append(choose(fed, logits[-1]))
        if special is None:
            tokens = [step.argmax(-1) for step in logits]
        first = "the decoder prompt as generate feeds it" if special else "the start token"
        return Generation(
            tokens=torch.stack(tokens, 1),
            logits=logits,
            calls=1 + self.new_tokens,
            prefill=f"encoder once, the first decoder step on {first}, then the step",
        )


def _generates_differently(m: UntrainedModel) -> bool:
    """True when a family says how the model's ``generate`` differs from a plain greedy
    loop: the ids it feeds (``generation_inputs``), the decoder prompt its processor
    builds (``decoder_prompts``) or logits processors it always applies
    (``logits_processors``)."""
    model_type = getattr(m.config, "model_type", None)
    return any(model_type in t for t in (GENERATION_INPUTS, DECODER_PROMPTS, LOGITS_PROCESSORS))


def _family_generation(m: UntrainedModel, batch: int) -> tuple[dict, dict, Any, Any]:
    """The family's generation settings, the decoder inputs its processor gives
    ``generate`` for ``batch`` rows, how ``generate`` feeds ids (None: as they are) and
    the factory of its logits processors (None: plain argmax)."""
    model_type = getattr(m.config, "model_type", None)
    special = GENERATION_INPUTS.get(model_type)
    settings = special[1](m.model) if special else {}
    prompt = DECODER_PROMPTS[model_type][0](m.model, batch) if model_type in DECODER_PROMPTS else {}
    feed = special[2] if special else None
    processors = LOGITS_PROCESSORS.get(model_type, (None, ""))[0]
    return settings, prompt, feed, processors


def _special_generate_eager(
    m: UntrainedModel, feeds: dict[str, Any], new_tokens: int, start: int
) -> Generation:
    """Eager ``generate(do_sample=False)`` of a model whose family says how its
    ``generate`` differs (:func:`_generates_differently`): greedy settings
    (:func:`.text_generation._greedy_config`) and the family's, the decoder prompt its
    processor builds. The tokens are the argmax of the processed scores, what
    ``generate`` picks; they must equal what it returns, as the steps are fed them."""
    import torch

    from .text_generation import _greedy_config

    model = m.model
    batch = next(iter(feeds.values())).shape[0]
    settings, prompt, feed, _ = _family_generation(m, batch)
    saved = model.generation_config
    model.generation_config = _greedy_config(saved)
    model.generation_config.decoder_start_token_id = start
    for key, value in settings.items():
        setattr(model.generation_config, key, value)
    # the logits of each step as the model returns them to generate: its output_logits
    # may be the tensors its processors masked in place (Dia's EOS channel filter,
    # transformers/generation/logits_process.py:3163)
    seen: list[Any] = []
    hook = model.register_forward_hook(
        lambda module, args, output: seen.append(output.logits[:, -1].detach().float().clone())
    )
    try:
        with torch.no_grad():
            out = model.generate(
                **feeds,
                **prompt,
                max_new_tokens=new_tokens,
                do_sample=False,
                num_beams=1,
                output_logits=True,
                output_scores=True,
                return_dict_in_generate=True,
            )
    finally:
        hook.remove()
        model.generation_config = saved
    if len(out.logits) != new_tokens or len(seen) != new_tokens:
        raise AssertionError(
            f"generate returned {len(out.logits)} new tokens from {len(seen)} forward "
            f"calls instead of {new_tokens}"
        )
    for step, (own, given) in enumerate(zip(seen, out.logits, strict=True)):
        kept = torch.isfinite(given)
        if not torch.equal(own[kept], given[kept].float()):
            raise AssertionError(f"generate's logits of step {step} are not the model's")
    tokens = torch.stack([step.argmax(-1) for step in out.scores], 1)
    given = prompt.get("decoder_input_ids", torch.full((batch, 1), start))
    fed = feed(model, given, tokens, settings)[1] if feed else tokens
    returned = out.sequences[:, -new_tokens:]
    if not torch.equal(returned, fed):
        raise AssertionError(
            "generate returned other new tokens than the argmax of its processed scores, "
            f"as they are fed: {returned.tolist()} against {fed.tolist()}"
        )
    return Generation(tokens=tokens, logits=seen, calls=new_tokens, prefill="generate")


def _special_generation(
    m: UntrainedModel, batch: int, start: Any, forced: Any, new_tokens: int
) -> tuple[Any, Any, Any] | None:
    """For a model whose ``generate`` differs (:func:`_generates_differently`): the
    decoder prompt and the new tokens as ``generate`` feeds them to the decoder steps,
    and ``choose(ids fed so far, logits)``, the tokens it picks from a step's logits.
    None for every other model."""
    if not _generates_differently(m):
        return None
    settings, prompt, feed, processors = _family_generation(m, batch)
    given = prompt.get("decoder_input_ids", start)
    fed_prompt, fed = feed(m.model, given, forced, settings) if feed else (given, forced)
    process = (
        processors(m.model, settings, fed_prompt.shape[1] + new_tokens) if processors else None
    )

    def choose(ids: Any, logits: Any) -> Any:
        scores = logits if process is None else process(ids, logits.clone())
        return scores.argmax(-1)

    return fed_prompt, fed, choose


def _states(out: Any, feeds: dict[str, Any], decoder_feeds: Any) -> tuple[Any, dict[str, Any]]:
    """The encoder states in ``out`` and the masks the decoder steps take with them: the
    states' own (``encoder_attention_mask``) when the encoder returned one, else the
    encoder input's ``attention_mask`` when the decoder takes it (``decoder_feeds``: an
    :class:`EncoderSide` or one of the decoder's input sets). The states are made
    contiguous, as a runtime returns them: an encoder that pads its input to a window and
    cuts the padding off returns a view, and a decoder exported on that view guards on
    its strides and rejects the contiguous states of every runtime."""
    if isinstance(out, dict):
        mask = {"encoder_attention_mask": out["attention_mask"]}
        return out["last_hidden_state"].contiguous(), mask
    takes_mask = (
        bool(decoder_feeds.mask_dims)
        if isinstance(decoder_feeds, EncoderSide)
        else "attention_mask" in decoder_feeds
    )
    return out.contiguous(), ({"attention_mask": feeds["attention_mask"]} if takes_mask else {})


def pads_decoder(model: Any, side: EncoderSide, with_mask: bool) -> bool:
    """True when the padded sets can pad the decoder's prompts instead of the encoder's
    input: the encoder takes no mask (images of one resolution) and the model's forward
    takes ``decoder_attention_mask``."""
    if side.mask_dims is not None or with_mask:
        return False
    return "decoder_attention_mask" in inspect.signature(model.forward).parameters


def _whole_mask(cache_mask: Any, new: Any) -> Any:
    """The mask over cached and new decoder tokens, None without a cache mask."""
    import torch

    if cache_mask is None:
        return None
    return torch.cat([cache_mask, torch.ones_like(new, dtype=cache_mask.dtype)], 1)


def left_padded(batch: int, length: int, padding: tuple[int, ...]) -> Any:
    """A ``(batch, length)`` mask whose row ``i`` starts with ``padding[i]`` zeros (at
    most ``length - 1``: every row keeps a token)."""
    import torch

    mask = torch.ones((batch, length), dtype=torch.int64)
    for i, pad in enumerate(padding[:batch]):
        mask[i, : min(pad, length - 1)] = 0
    return mask


def _label(
    shape: tuple[Any, ...], part: str, encoder: str = "", decoder_padded: bool = False
) -> str:
    """``batch=2 encoder=12 seq=3 cache=5 padded``: a decoder's label carries the
    encoder's (``encoder``) after its own sizes, and a decoder step's ``decoder
    left-padded`` when its cached prompt is (``decoder_padded``)."""
    batch, length, padding, cached, new = shape
    head = encoder or f"batch={batch} encoder={length}"
    words = head.split()
    text = " ".join(words[:2])
    if part != "encoder":
        text += f" seq={new}"
    if part == "decoder":
        text += f" cache={cached}"
    if (
        decoder_padded
        and part == "decoder"
        and any(min(p, cached - 1) > 0 for p in padding[:batch])
    ):
        text += " decoder left-padded"
    rest = words[2:] if encoder else (["padded"] if any(padding) else [])
    if not encoder and batch == BATCH_MAX:
        rest.append("at bounds")
    return " ".join([text, *rest])
