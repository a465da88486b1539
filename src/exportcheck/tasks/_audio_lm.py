"""Audio language models: an audio encoder whose outputs take the place of audio tokens
in a causal LM's input embeddings.

Some model types of the seq2seq and speech-seq2seq mappings are not encoder-decoders:
their forward embeds the prompt's token ids, runs the audio encoder and its projector
(``get_audio_features``), scatters the projected frames over the positions of the audio
placeholder token, and runs a causal LM on the result. A runtime drives them as three
graphs and one merge:

* ``audio_encoder``: log-mel ``input_features`` and their frame mask (or the raw
  waveform ``input_values`` and its ``padding_mask``) -> the projected audio frames of
  every row, the padded frames left out (``get_audio_features``'s ``pooler_output``: its
  length depends on the mask's values, so the graph's output has a data-dependent size);
  an encoder that takes no mask reads whole chunks, and every frame of a chunk, its
  padding included, is audio;
* ``embed_tokens``: token ids -> input embeddings;
* the merge, in the driver: the frames replace the embeddings of the audio tokens, in
  order (``masked_scatter``, as the model's forward does);
* ``decoder``: a decode step of the causal LM on input embeddings, with the cache of
  the tokens before -> logits and the grown cache.

A model with no placeholder token whose forward *adds* the audio frame ``i`` to the
embedding of position ``i`` instead (a family's ``input_layouts`` entry ``added_audio``:
Voxtral Realtime, a text stream that runs alongside the audio, one frame a token) is
exported as the same three graphs; only the merge differs (:func:`add_frames`), in the
prompt and at every generated token, and generation stops where its audio ends.

Dynamic dimensions: ``batch`` and ``frames`` for the encoder; ``batch``, ``seq_length``
(new positions) and ``cache_length`` for the decoder, whose mask covers cache and new
positions. The decoder step is checked against a full forward over its prompt and new
embeddings; generation merges the encoder's frames into a prompt of text and audio
tokens, prefills it and runs 8 greedy steps through each runtime against eager
``generate`` on the same ids and features.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import inspect
from collections.abc import Iterator, Sequence
from typing import Any

from ..dims import BATCH_MAX, length_bounds
from ..families import INPUT_LAYOUTS
from ..models import UntrainedModel, prepare_weights
from ..patches import eager_fixes
from . import Component, Generation
from ._tokens import random_ids

#: (batch, seconds of audio of each row) of each audio encoder input set: every set a
#: distinct batch (a feature extractor that pads to a chunk gives every set one length),
#: rows of different lengths padded by the feature extractor
AUDIO_SETS = [
    (2, (1.6, 0.5)),
    (1, (0.6,)),
    (3, (0.7, 0.7, 0.4)),
    (4, (1.1, 1.1, 0.8, 1.1)),
    (5, (0.9, 0.3, 0.6, 0.9, 0.9)),
    (6, (0.45, 0.45, 0.45, 0.45, 0.45, 1.0)),
]
#: seconds of each row of the set at the declared bounds
BOUND_SECONDS = 2.0
#: (batch, new positions, cached positions, left padding of the first row) of each
#: decoder input set but the last, which is at the declared bounds
DECODER_SETS = [
    (2, 3, 30, 0),
    (1, 3, 30, 0),
    (2, 1, 30, 0),
    (2, 5, 60, 0),
    (3, 4, 17, 0),
    (2, 2, 24, 5),
]
#: seconds of audio of the generation prompt (both rows, so that they hold as many audio
#: tokens and the prompt needs no padding); text tokens before and after the audio
GENERATION_AUDIO = 0.6
GENERATION_TEXT = (3, 2)
NEW_TOKENS = 8
_TOKEN_NAMES = ("audio_token_id", "audio_token_index")


def audio_token(config: Any) -> int:
    """The id of the audio placeholder token.

    :raises ValueError: when the config names none
    """
    for name in _TOKEN_NAMES:
        value = getattr(config, name, None)
        if isinstance(value, int):
            return value
    raise ValueError(
        f"{type(config).__name__} names no audio placeholder token ({' or '.join(_TOKEN_NAMES)}): "
        "exportcheck places the audio frames at that token's positions"
    )


def _layout(config: Any) -> dict[str, Any]:
    return INPUT_LAYOUTS.get(getattr(config, "model_type", None), ({}, ""))[0]


def added_audio(config: Any) -> bool:
    """True for a model with no placeholder token whose forward adds the projected audio
    frame ``i`` to the text embedding of position ``i`` (a family's ``input_layouts``
    entry ``added_audio``)."""
    return bool(_layout(config).get("added_audio"))


def audio_function_of(model_type: str | None) -> Any:
    """A family's ``input_layouts`` entry ``audio_features``: a function computing what
    ``get_audio_features`` would return, for a model whose forward runs its audio
    encoder inline and has no such method (None when the family declares none)."""
    return INPUT_LAYOUTS.get(model_type, ({}, ""))[0].get("audio_features")


def bind_audio_function(model: Any) -> None:
    """Bind the family's ``audio_features`` (:func:`audio_function_of`) to ``model`` as its
    ``get_audio_features``, on this instance only."""
    import types

    function = audio_function_of(getattr(model.config, "model_type", None))
    if function is not None:
        model.get_audio_features = types.MethodType(function, model)


def _audio_function(model: Any) -> Any:
    """``get_audio_features`` where its parameters are declared (a head may forward
    ``*args, **kwargs`` to its base model's)."""
    function = model.get_audio_features
    params = inspect.signature(function).parameters
    if all(p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in params.values()):
        inner = getattr(getattr(model, "model", None), "get_audio_features", None)
        if inner is not None:
            return inner
    return function


def unread_audio_arguments(model: Any) -> tuple[str, ...]:
    """The arguments ``get_audio_features`` requires but never reads, passed as None: a
    family's ``input_layouts`` entry ``unread_audio_arguments`` names them, with why."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    return tuple(INPUT_LAYOUTS.get(model_type, ({}, ""))[0].get("unread_audio_arguments", ()))


def timestamps_function(model: Any) -> Any:
    """A family's ``input_layouts`` entry ``audio_timestamps``: a function of the model and
    the frame mask giving the time stamps of every projected frame, which the model's
    forward computes from the runs of audio tokens in ``input_ids`` and the audio encoder
    graph takes as an input instead (None when the family declares none)."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    return INPUT_LAYOUTS.get(model_type, ({}, ""))[0].get("audio_timestamps")


def audio_settings(model: Any) -> dict[str, Any]:
    """Keyword arguments that make ``get_audio_features`` deterministic, given to it and to
    ``generate``: a family's ``input_layouts`` entry ``audio_settings`` names them, with
    why (a σ-VAE that adds random noise to its latents unless told not to)."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    return dict(INPUT_LAYOUTS.get(model_type, ({}, ""))[0].get("audio_settings", {}))


def audio_arguments(model: Any) -> tuple[str, str | None]:
    """``(audio input, frame mask)``: the names under which ``get_audio_features`` takes
    the audio (``input_features`` or ``input_values``) and the mask of its frames (None
    for an encoder that takes none: it reads whole chunks and every frame of a chunk,
    padding included, becomes an audio token).

    :raises ValueError: when it takes neither kind of audio, or requires another input
        (the driver feeds the audio and its mask only)
    """
    signature = inspect.signature(_audio_function(model)).parameters
    params = list(signature)
    kind = next((n for n in params if n in ("input_features", "input_values")), None)
    if kind is None:
        raise ValueError(
            f"{type(model).__name__}.get_audio_features takes {params}: neither "
            "input_features nor input_values, the audio exportcheck builds"
        )
    mask = next((n for n in params if "mask" in n), None)
    # a head that forwards to its base model's may declare fewer than that one requires
    inner = getattr(getattr(model, "model", None), "get_audio_features", None)
    if audio_function_of(getattr(getattr(model, "config", None), "model_type", None)):
        inner = None  # the family's function is what the graph runs, not the base model's
    declared = [signature] + ([inspect.signature(inner).parameters] if inner else [])
    unread = unread_audio_arguments(model)
    timed = ("audio_timestamps",) if timestamps_function(model) is not None else ()
    others = sorted(
        {
            name
            for parameters in declared
            for name, p in parameters.items()
            if name not in (kind, mask, *unread, *timed)
            and p.default is p.empty
            and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
        }
    )
    if others:
        raise ValueError(
            f"{type(model).__name__}.get_audio_features requires {others} besides {kind} "
            f"and {mask}: exportcheck's audio encoder graph takes the audio and one mask"
        )
    return kind, mask


#: the audio encoder graph's input names for each kind of audio
ENCODER_INPUTS = {
    "input_features": ("input_features", "input_features_mask"),
    "input_values": ("input_values", "padding_mask"),
}


def _cache_of(out: Any) -> Any:
    cache = getattr(out, "cache", None)
    return cache if cache is not None else getattr(out, "past_key_values", None)


def text_lm(model: Any) -> Any:
    """The module that runs the language model on merged input embeddings: the model
    itself, or, when its forward requires the pixels (BLIP-2: it encodes the image on
    every call), its ``language_model``, the causal LM it hands the merged embeddings to.

    A family's ``input_layouts`` entry ``text_lm`` gives it instead, for a model whose
    forward requires its audio on every call (``text_lm(model)``: a module taking
    ``inputs_embeds``, ``attention_mask``, ``cache``, ``use_cache``, returning
    ``logits`` and ``cache``).

    :raises ValueError: when the forward requires pixels and there is no such LM
    """
    given = _layout(getattr(model, "config", None)).get("text_lm")
    if given is not None:
        return given(model)
    pixels = inspect.signature(model.forward).parameters.get("pixel_values")
    if pixels is None or pixels.default is not inspect.Parameter.empty:
        return model
    lm = getattr(model, "language_model", None)
    if lm is None or lm.get_output_embeddings() is None:
        raise ValueError(
            f"{type(model).__name__}.forward requires pixel_values and the model has no "
            "language_model with an LM head to run on merged embeddings: exportcheck "
            "cannot run its decoder on input embeddings alone"
        )
    return lm


@functools.cache
def _parts() -> dict[str, type]:
    import torch

    from ._seq2seq import check_rank

    class AudioEncoder(torch.nn.Module):
        """log-mel features and their frame mask -> the projected frames, padding left out."""

        def __init__(self, model: Any) -> None:
            super().__init__()
            self.model = model
            self.kind, self.mask_argument = audio_arguments(model)
            self.settings = {
                **dict.fromkeys(unread_audio_arguments(model)),
                **audio_settings(model),
            }

        def encode(self, audio: Any, mask: Any) -> Any:
            given = {self.kind: audio, **self.settings}
            if self.mask_argument is not None:
                given[self.mask_argument] = mask
            out = self.model.get_audio_features(**given, return_dict=True)
            frames = out.pooler_output
            return frames.reshape(-1, frames.shape[-1])

        def forward(self, input_features: Any, input_features_mask: Any) -> Any:
            check_rank("input_features", input_features, 3, "mel bins and frames")
            return self.encode(input_features, input_features_mask)

    class WindowedAudioEncoder(AudioEncoder):
        """log-mel features, their frame mask and the bounds of the encoder's attention
        windows (:func:`audio_windows`, computed from the mask on the processor side) ->
        the projected frames, padding left out."""

        def forward(  # type: ignore[override]
            self, input_features: Any, input_features_mask: Any, cu_seqlens: Any
        ) -> Any:
            check_rank("input_features", input_features, 3, "mel bins and frames")
            self.settings["cu_seqlens"] = cu_seqlens
            try:
                return self.encode(input_features, input_features_mask)
            finally:
                del self.settings["cu_seqlens"]

    class TimedAudioEncoder(AudioEncoder):
        """log-mel features, their frame mask and the time stamps of each projected frame
        (:func:`audio_timestamps`, computed on the processor side from the prompt's runs
        of audio tokens, as the forward computes them from ``input_ids``) -> the projected
        frames, padding left out."""

        def forward(  # type: ignore[override]
            self, input_features: Any, input_features_mask: Any, audio_timestamps: Any
        ) -> Any:
            check_rank("input_features", input_features, 3, "mel bins and frames")
            self.settings["audio_timestamps"] = audio_timestamps
            try:
                return self.encode(input_features, input_features_mask)
            finally:
                del self.settings["audio_timestamps"]

    class UnmaskedAudioEncoder(AudioEncoder):
        """log-mel features of whole chunks -> the projected frames of every chunk."""

        def forward(self, input_features: Any) -> Any:  # type: ignore[override]
            check_rank("input_features", input_features, 3, "mel bins and frames")
            return self.encode(input_features, None)

    class WaveAudioEncoder(AudioEncoder):
        """the raw waveform and its sample mask -> the projected frames, padding left out."""

        def forward(self, input_values: Any, padding_mask: Any = None) -> Any:  # type: ignore[override]
            return self.encode(input_values, padding_mask)

    class EmbedTokens(torch.nn.Module):
        """token ids -> the input embeddings the LM reads (a family's ``input_layouts``
        entry ``text_embeddings(model)`` gives the module, for a model whose input
        embeddings take more than text ids)."""

        def __init__(self, model: Any) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: Any) -> Any:
            given = _layout(getattr(self.model, "config", None)).get("text_embeddings")
            embeddings = given(self.model) if given else self.model.get_input_embeddings()
            return embeddings(input_ids)

    class Decoder(torch.nn.Module):
        """A decode step on input embeddings with the cache of the positions before."""

        def __init__(self, model: Any) -> None:
            super().__init__()
            self.model = text_lm(model)

        def forward(self, inputs_embeds: Any, attention_mask: Any, cache: Any) -> dict[str, Any]:
            out = self.model(
                inputs_embeds=inputs_embeds,
                attention_mask=attention_mask,
                cache=cache,
                use_cache=True,
            )
            return {"logits": out.logits, "cache": _cache_of(out)}

    class PositionedDecoder(Decoder):
        """A decode step that takes the rotary positions of its new embeddings, for a
        model whose positions are not the count of tokens before (multimodal rope: the
        image tokens of the prompt have positions of their own)."""

        def forward(  # type: ignore[override]
            self, inputs_embeds: Any, attention_mask: Any, position_ids: Any, cache: Any
        ) -> dict[str, Any]:
            out = self.model(
                inputs_embeds=inputs_embeds,
                attention_mask=attention_mask,
                position_ids=position_ids,
                cache=cache,
                use_cache=True,
            )
            return {"logits": out.logits, "cache": _cache_of(out)}

    class DeepstackDecoder(PositionedDecoder):
        """A positioned decode step that also takes DeepStack features ``(layers, batch,
        seq_length, hidden)``: the vision tower's early-layer features written at the
        image tokens' positions, zero elsewhere, added to the output of the language
        model's first layers (:func:`added_to_layers`), where the forward adds them at
        the image tokens."""

        def forward(  # type: ignore[override]
            self,
            inputs_embeds: Any,
            attention_mask: Any,
            position_ids: Any,
            deepstack_embeds: Any,
            cache: Any,
        ) -> dict[str, Any]:
            with added_to_layers(self.model, deepstack_embeds):
                return super().forward(inputs_embeds, attention_mask, position_ids, cache)

    class TextDeepstackDecoder(Decoder):
        """A decode step that also takes DeepStack features ``(layers, batch,
        seq_length, hidden)``, as :class:`DeepstackDecoder`, for a language model whose
        positions are the count of tokens before (no position_ids)."""

        def forward(  # type: ignore[override]
            self, inputs_embeds: Any, attention_mask: Any, deepstack_embeds: Any, cache: Any
        ) -> dict[str, Any]:
            with added_to_layers(self.model, deepstack_embeds):
                return super().forward(inputs_embeds, attention_mask, cache)

    class IdsDecoder(Decoder):
        """A decode step that also takes ids of its new positions (``step_ids``), for a
        language model that reads a lookup by token id beside the input embeddings (Gemma
        4's per-layer embeddings): ``step_kwargs(model, ids)`` turns them into what its
        forward takes, so that the graph holds no search of the ids from the embeddings."""

        def __init__(self, model: Any, step_kwargs: Any) -> None:
            super().__init__(model)
            self.step_kwargs = step_kwargs

        def forward(  # type: ignore[override]
            self, inputs_embeds: Any, attention_mask: Any, step_ids: Any, cache: Any
        ) -> dict[str, Any]:
            out = self.model(
                inputs_embeds=inputs_embeds,
                attention_mask=attention_mask,
                cache=cache,
                use_cache=True,
                **self.step_kwargs(self.model, step_ids),
            )
            return {"logits": out.logits, "cache": _cache_of(out)}

    return {
        "ids_decoder": IdsDecoder,
        "windowed": WindowedAudioEncoder,
        "timed": TimedAudioEncoder,
        "deepstack_decoder": DeepstackDecoder,
        "text_deepstack_decoder": TextDeepstackDecoder,
        "positioned_decoder": PositionedDecoder,
        "input_features": AudioEncoder,
        "input_values": WaveAudioEncoder,
        "unmasked": UnmaskedAudioEncoder,
        "embed_tokens": EmbedTokens,
        "decoder": Decoder,
    }


def text_layers(model: Any) -> Any:
    """The decoder layers of a multimodal model's language model."""
    base = getattr(model, "model", model)
    for owner in (getattr(base, "language_model", None), getattr(base, "text_model", None), base):
        layers = getattr(owner, "layers", None)
        if layers is not None:
            return layers
    raise ValueError(f"{type(model).__name__}: no language model layers found")


@contextlib.contextmanager
def added_to_layers(model: Any, dense: Any) -> Iterator[None]:
    """Within the block, the output of the language model's layer ``i`` gets ``dense[i]``
    added, for ``i`` below ``len(dense)``; ``dense`` is ``(layers, batch, seq_length,
    hidden)``, zero where nothing is added. DeepStack models add their vision tower's
    early-layer features to the hidden states of the image tokens this way (the forward
    adds them at a mask's positions, ``hidden[mask] + features``: adding zeros elsewhere
    gives the same values, with no data-dependent shape)."""

    def hook(index: int) -> Any:
        def add(module: Any, args: Any, out: Any) -> Any:
            if isinstance(out, tuple):
                return (out[0] + dense[index].to(out[0].dtype), *out[1:])
            return out + dense[index].to(out.dtype)

        return add

    layers = text_layers(model)
    handles = [layers[i].register_forward_hook(hook(i)) for i in range(dense.shape[0])]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


#: seconds of audio a feature extractor that pads every clip to a fixed chunk (Whisper's
#: 30 s) pads to here: the tiny models get chunks of this length
CHUNK_SECONDS = 2


def _mel_bins(config: Any) -> int | None:
    """``num_mel_bins`` of an audio config, or of the first of its sub-configs (nested
    any depth) that sets it."""
    if config is None:
        return None
    bins = getattr(config, "num_mel_bins", None)
    if isinstance(bins, int):
        return bins
    for key in getattr(config, "sub_configs", {}) or {}:
        bins = _mel_bins(getattr(config, key, None))
        if bins is not None:
            return bins
    return None


def _audio_features_extractor(config: Any, kind: str = "input_features") -> Any:
    """The model type's feature extractor, with the mel bins of its audio encoder and, when
    it pads every clip to a fixed chunk, chunks of :data:`CHUNK_SECONDS`."""
    from .automatic_speech_recognition import feature_extractor

    extractor = feature_extractor(config, kind)
    kwargs = {}
    bins = _mel_bins(getattr(config, "audio_config", None))
    if isinstance(bins, int) and getattr(extractor, "feature_size", bins) != bins:
        kwargs["feature_size"] = bins
    if isinstance(getattr(extractor, "chunk_length", None), int):
        kwargs["chunk_length"] = CHUNK_SECONDS
    if kwargs:
        extractor = type(extractor)(**{"feature_size": extractor.feature_size, **kwargs})
    return extractor


def _fit_encoder_to_chunk(config: Any, extractor: Any) -> str | None:
    """An audio encoder with a position table of one chunk (Whisper's: half the frames of
    30 s) gets the table of the tiny chunk; returns the note that says so, if it did."""
    audio = getattr(config, "audio_config", None)
    positions = getattr(audio, "max_source_positions", None)
    frames = getattr(extractor, "nb_max_frames", None)
    if not isinstance(positions, int) or not isinstance(frames, int) or positions <= frames // 2:
        return None
    audio.max_source_positions = frames // 2
    return (
        f"audio_config.max_source_positions {positions} -> {frames // 2}: the audio encoder "
        f"adds a position table of one chunk to its states, so it takes chunks of {frames} "
        "frames, as its feature extractor pads them"
    )


def frames_multiple(config: Any) -> int:
    """The multiple of frames a model's processor pads its features to, beyond what the
    feature extractor does: a family's ``input_layouts`` entry ``frames_multiple_of``
    names it, with why (1: none)."""
    model_type = getattr(config, "model_type", None)
    return int(INPUT_LAYOUTS.get(model_type, ({}, ""))[0].get("frames_multiple_of", 1))


def samples_multiple(config: Any) -> int:
    """The multiple of samples a model's processor pads each waveform to before its
    feature extractor (whole tokens of audio): a family's ``input_layouts`` entry
    ``samples_multiple_of`` names it, with why (1: none)."""
    return int(_layout(config).get("samples_multiple_of", 1))


def frames_axis(audio: Any, mask: Any, config: Any = None) -> int:
    """The axis of the frames (or samples) of ``audio``: the last one as long as its mask
    (log-mel features come as (batch, bins, frames) or (batch, frames, bins)), or the one
    a family's ``input_layouts`` entry ``frames_axis`` names, for a mask that counts
    other frames than the features' (the projector's outputs)."""
    declared = _layout(config).get("frames_axis") if config is not None else None
    if declared is not None:
        return int(declared)
    axes = [i for i, n in enumerate(audio.shape) if i > 0 and n == mask.shape[-1]]
    return axes[-1] if axes else audio.dim() - 1


def audio_inputs(
    extractor: Any,
    kind: str,
    seconds: tuple[float, ...],
    seed: int,
    multiple: int = 1,
    samples: int = 1,
) -> dict[str, Any]:
    """What the feature extractor returns for random waveforms of ``seconds``, padded as
    it pads by default (to its chunk, or to the longest clip; the waveforms to a multiple
    of ``samples`` samples first), then on the right to a multiple of ``multiple`` frames,
    with the mask of the real frames (or samples), under the audio encoder graph's input
    names."""
    import numpy as np
    import torch

    rng = np.random.default_rng(seed)
    rate = extractor.sampling_rate
    waves = [rng.standard_normal(int(s * rate)).astype("float32") * 0.1 for s in seconds]
    given = {"pad_to_multiple_of": samples} if samples > 1 else {}
    params = inspect.signature(extractor.__call__).parameters
    if "return_attention_mask" in params or any(p.kind == p.VAR_KEYWORD for p in params.values()):
        given["return_attention_mask"] = True  # an extractor that does not take it pads
        # with its mask unasked (Kyutai's padding_mask)
    out = extractor(waves, sampling_rate=rate, return_tensors="pt", **given)
    audio_name, mask_name = ENCODER_INPUTS[kind]
    # the mask of what the graph takes first: an extractor may return the samples' mask
    # beside the frames' (padding_mask beside input_features_mask)
    names = (mask_name, "attention_mask", "padding_mask", "input_features_mask")
    mask = next((out[k] for k in names if k in out), None)
    if mask is None:
        raise ValueError(
            f"{type(extractor).__name__} returns no mask ({sorted(out)}): exportcheck feeds "
            "padded batches and needs one"
        )
    audio = out[kind]
    padding = -mask.shape[-1] % multiple
    if padding:
        axis = frames_axis(audio, mask)
        widths = [0, 0] * (audio.dim() - 1 - axis) + [0, padding]
        audio = torch.nn.functional.pad(audio, widths)
        mask = torch.nn.functional.pad(mask, (0, padding))
    return {audio_name: audio, mask_name: mask}


def _window_function(model: Any) -> Any:
    """The modeling code's ``get_audio_cu_seqlens`` of an audio LM whose encoder attends
    within windows it lists from the frame mask, None for other models."""
    import sys

    return getattr(sys.modules[type(model).__module__], "get_audio_cu_seqlens", None)


def audio_windows(model: Any, mask: Any) -> Any:
    """The cumulative bounds of the attention windows of the frames ``mask`` marks, as
    the encoder lists them from the mask (every clip cut in chunks of ``2 * n_window``
    frames, windows of ``n_window_infer``), with the modeling code's own function: the
    encoder reads the count of windows from the mask's values, which an exported graph
    takes as an input instead."""
    config = model.config.audio_config
    chunk = 2 * config.n_window
    batch, frames = mask.shape
    lengths = mask.view(batch, frames // chunk, chunk).sum(-1).reshape(-1).long()
    return _window_function(model)(
        lengths, mask.sum(-1).long(), config.n_window_infer, config.n_window
    )


def _text_ids(config: Any, shape: tuple[int, int], generator: Any, avoid: int) -> Any:
    """Random text token ids, none of them the audio token."""
    ids = random_ids(config, shape, generator)
    return ids.masked_fill(ids == avoid, 1 if avoid != 1 else 2)


def _audio_kind(task: Any, config: Any) -> str:
    """``input_features`` or ``input_values``: what the task's model class takes."""
    import transformers

    declared = audio_function_of(config.model_type)
    names = getattr(transformers.models.auto.modeling_auto, task.mapping)
    cls = getattr(transformers, names[config.model_type])
    # the family's function is what the audio encoder graph runs
    params = inspect.signature(declared or cls.forward).parameters
    kind = next((n for n in ("input_features", "input_values") if n in params), None)
    if kind is None:
        raise ValueError(
            f"{cls.__name__}.forward takes neither input_features nor input_values: "
            "exportcheck builds one of these for an audio LM"
        )
    return kind


def build(task: Any, config: Any, seed: int) -> UntrainedModel:
    """The three graphs of an audio LM and their input sets."""
    import torch
    import transformers

    auto = getattr(transformers, task.auto_class)
    kind = _audio_kind(task, config)
    extractor = _audio_features_extractor(config, kind)
    chunk_note = _fit_encoder_to_chunk(config, extractor)
    torch.manual_seed(seed)
    model = auto.from_config(config).to(torch.float32).eval()
    prepare_weights(model, config)
    bind_audio_function(model)
    added = added_audio(config)
    token = -1 if added else audio_token(config)  # -1: no text id to avoid
    parts = _parts()
    masked = audio_arguments(model)[1] is not None
    windowed = masked and _window_function(model) is not None
    timed = masked and timestamps_function(model) is not None
    encoder = parts[
        "windowed"
        if windowed
        else "timed"
        if timed
        else kind
        if masked or kind != "input_features"
        else "unmasked"
    ](model)
    generator = torch.Generator().manual_seed(seed)
    batch = torch.export.Dim("batch", min=1, max=BATCH_MAX)

    audio_name, mask_name = ENCODER_INPUTS[kind]
    audio_sets = [
        audio_inputs(
            extractor, kind, seconds, seed + i, frames_multiple(config), samples_multiple(config)
        )
        for i, (_, seconds) in enumerate(AUDIO_SETS)
    ]
    audio_sets.append(
        audio_inputs(
            extractor,
            kind,
            (BOUND_SECONDS,) * BATCH_MAX,
            seed + 99,
            frames_multiple(config),
            samples_multiple(config),
        )
    )
    notes = [
        f"audio LM: {type(model).__name__} merges its audio encoder's frames into a causal "
        "LM's input embeddings at the audio token's positions; exported as audio_encoder, "
        "embed_tokens and decoder, the merge done by the driver as the forward does it"
    ]
    if added:
        notes[0] = (
            f"audio LM with added audio: {type(model).__name__} has no audio token, it adds "
            "its audio encoder's frame i to the token embedding of position i; exported as "
            "audio_encoder, embed_tokens and decoder, the sum done by the driver as the "
            f"forward does it ({INPUT_LAYOUTS[config.model_type][1]})"
        )
    if chunk_note:
        notes.append(chunk_note)
    axis = frames_axis(audio_sets[0][audio_name], audio_sets[0][mask_name], config)
    lengths = {s[audio_name].shape[axis] for s in audio_sets}
    if len(lengths) == 1:
        # the feature extractor pads every clip to one chunk: the length stays static
        audio_shapes = {audio_name: {0: batch}, mask_name: {0: batch}}
        notes.append(
            f"{audio_name} length static: {type(extractor).__name__} pads every clip to one "
            f"chunk of {lengths.pop()} (its chunk_length set to {CHUNK_SECONDS} s for the "
            "tiny model)" + ("; the clips' lengths differ by the mask" if masked else "")
        )
    else:
        length = torch.export.Dim.DYNAMIC
        # a mask of other frames than the features' (a declared frames_axis) has its
        # own length, which the model relates to the features' as it computes it
        own = "frames_axis" in _layout(config)
        audio_shapes = {
            audio_name: {0: batch, axis: length},
            mask_name: {0: batch, 1: torch.export.Dim.DYNAMIC if own else length},
        }
    audio_labels = [
        f"batch={s[audio_name].shape[0]} length={s[audio_name].shape[axis]}"
        + (" padded" if masked and bool((s[mask_name] == 0).any()) else "")
        for s in audio_sets
    ]
    audio_labels[-1] += " at bounds"
    if windowed:
        for audio in audio_sets:
            audio["cu_seqlens"] = audio_windows(model, audio[mask_name])
        audio_shapes["cu_seqlens"] = {0: torch.export.Dim.DYNAMIC}
        notes.append(
            "attention windows as an input: the audio encoder lists the bounds of its "
            "attention windows from the values of the frame mask; the graph takes them "
            "(cu_seqlens), computed from the mask by the modeling code's "
            "get_audio_cu_seqlens, and attends within them under one block-diagonal mask"
        )
    if timed:
        for audio in audio_sets:
            audio["audio_timestamps"] = timestamps_function(model)(model, audio[mask_name])
        # as many frames as the encoder's output: dynamic when the features' length is
        audio_shapes["audio_timestamps"] = {0: batch}
        if axis in audio_shapes[audio_name]:
            audio_shapes["audio_timestamps"][1] = torch.export.Dim.DYNAMIC
        notes.append(
            "time stamps as an input: the audio encoder reads the time of each projected "
            "frame, which the forward computes from the runs of audio tokens in input_ids; "
            "the graph takes them (audio_timestamps), computed on the processor side with "
            f"the modeling code's own function ({INPUT_LAYOUTS[config.model_type][1]})"
        )
    if not masked:
        # every frame of the padded chunk becomes an audio token, as in the model
        audio_sets = [_graph_audio(s, encoder) for s in audio_sets]
        del audio_shapes[mask_name]
        notes.append(
            f"audio encoder without a mask: {type(model).__name__}.get_audio_features takes "
            "the features alone, so the padding of each clip's chunk is encoded as audio, "
            "as the model does; the text steps still take padded batches"
        )

    return merged_lm(
        task.name,
        model,
        config,
        notes,
        Component("audio_encoder", encoder, audio_sets, audio_shapes, audio_labels),
        token,
        generator,
        batch,
    )


def text_positions(mask: Any, rows: int) -> Any:
    """The rotary positions of text tokens under ``mask`` ``(batch, length)``: each real
    token's index among the real tokens of its row, 0 on padding, repeated over ``rows``
    (``(rows, batch, length)``)."""
    positions = (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 0)
    return positions[None].expand(rows, *positions.shape).contiguous()


def merged_lm(
    task_name: str,
    model: Any,
    config: Any,
    notes: list[str],
    encoder: Component,
    token: int,
    generator: Any,
    batch: Any,
    position_rows: int = 0,
    deepstack: int = 0,
    step_ids: Any = None,
    step_kwargs: Any = None,
    step_ids_seen: bool = False,
    cache_max: int | None = None,
    decoded_tokens: Sequence[int] | None = None,
) -> UntrainedModel:
    """The model of an LM whose forward merges an encoder's outputs into its input
    embeddings at the positions of ``token``: the ``encoder`` component, then
    ``embed_tokens`` and the ``decoder`` step on input embeddings with their input sets
    (prompts of text tokens, none of them ``token``, one set left-padded, the last at the
    declared bounds). ``position_rows``: the decoder takes ``position_ids`` of that many
    rows (3 for multimodal rope), those of text (:func:`text_positions`) in its sets.
    ``deepstack``: the decoder also takes DeepStack features for that many layers
    (:func:`added_to_layers`), random in its sets (each new position gets some, as an
    image token would). ``step_ids`` ``(model, ids) -> ids`` and ``step_kwargs`` ``(model, ids) ->
    forward arguments``: the decoder also takes the ids of its new positions as
    ``step_ids`` gives them (``IdsDecoder``), or of every position it sees (the cache's
    and its own, as the mask) with ``step_ids_seen``; its sets' new tokens are text.
    ``decoded_tokens``: for each set, how many of its cache's last tokens the model takes
    in a second forward, a decode step after the prompt, instead of in the prompt, for a
    cache that keeps the prompt apart from the tokens decoded after it (Unlimited-OCR's
    prompt beside its sliding window); their part of the cache then gets a dimension of
    its own, from 0 (a cache right after the prompt) to ``cache_max - 1``."""
    import torch

    from ..caches import cache_dynamic_shapes
    from ..tasks.text_generation import _contiguous

    parts = _parts()
    embed = parts["embed_tokens"](model)
    kind = (
        "deepstack_decoder" if deepstack else "positioned_decoder" if position_rows else "decoder"
    )
    if deepstack and not position_rows:  # DeepStack over plain rotary positions
        kind = "text_deepstack_decoder"
    decoder = parts["ids_decoder"](model, step_kwargs) if step_ids else parts[kind](model)
    decoder.step_ids = step_ids
    decoder.step_ids_seen = step_ids_seen
    text = config.get_text_config(decoder=True)
    seq_max, bound = length_bounds(text)
    cache_max = bound if cache_max is None else cache_max
    shapes = [*DECODER_SETS, (BATCH_MAX, seq_max, cache_max, 0)]
    decoded = [0] * len(shapes) if decoded_tokens is None else list(decoded_tokens)
    if len(decoded) != len(shapes) or not all(
        0 <= d < c for d, (_, _, c, _) in zip(decoded, shapes, strict=True)
    ):
        raise ValueError(
            f"decoded_tokens must give each of the {len(shapes)} decoder sets (caches of "
            f"{[c for _, _, c, _ in shapes]} tokens) fewer decoded tokens than its cache "
            f"holds, got {decoded_tokens}"
        )
    step_sets, prompts, prompt_masks, embed_sets, labels = [], [], [], [], []
    for (n_batch, new, cached, pad), after in zip(shapes, decoded, strict=True):
        prompt_ids = _text_ids(text, (n_batch, cached), generator, token)
        mask = torch.ones((n_batch, cached), dtype=torch.int64)
        mask[0, :pad] = 0
        new_ids = _text_ids(text, (n_batch, new), generator, token)
        whole = torch.cat([mask, torch.ones((n_batch, new), dtype=torch.int64)], 1)
        given = {}
        if position_rows:
            given = {"position_ids": text_positions(mask, position_rows)}
        kept = cached - after  # the prompt's tokens; the rest decoded after it
        # the prefill is eager's: with the patches that correct it
        with torch.no_grad(), eager_fixes(model):
            prompt = embed(prompt_ids)
            out = text_lm(model)(
                inputs_embeds=prompt[:, :kept],
                attention_mask=mask[:, :kept],
                use_cache=True,
                **{k: v[..., :kept] for k, v in given.items()},
            )
            if after:
                out = text_lm(model)(
                    inputs_embeds=prompt[:, kept:],
                    attention_mask=mask,
                    cache=_cache_of(out),
                    use_cache=True,
                    **{k: v[..., kept:] for k, v in given.items()},
                )
            new_embeds = embed(new_ids)
        step = {"inputs_embeds": new_embeds, "attention_mask": whole}
        if position_rows:
            step["position_ids"] = text_positions(whole, position_rows)[..., -new:].contiguous()
        if deepstack:
            shape = (deepstack, *new_embeds.shape)
            step["deepstack_embeds"] = new_embeds.std() * torch.randn(shape, generator=generator)
        if step_ids:
            read = torch.cat([prompt_ids, new_ids], 1) if step_ids_seen else new_ids
            step["step_ids"] = step_ids(model, read)
        step["cache"] = _contiguous(_cache_of(out))
        step_sets.append(step)
        embed_sets.append({"input_ids": new_ids})
        prompts.append(prompt)
        prompt_masks.append(mask)
        label = f"batch={n_batch} seq={new} cache={cached}"
        if decoded_tokens is not None:
            label += f" ({kept} prompt + {after} decoded)"
        labels.append(label + (" left-padded" if pad else ""))
    labels[-1] += " at bounds"
    seq_length = torch.export.Dim("seq_length", min=1, max=seq_max)
    cache_length = torch.export.Dim("cache_length", min=1, max=cache_max)
    step_shapes = {
        "inputs_embeds": {0: batch, 1: seq_length},
        "attention_mask": {0: batch, 1: torch.export.Dim.DYNAMIC},
        **({"position_ids": {1: batch, 2: seq_length}} if position_rows else {}),
        **({"deepstack_embeds": {1: batch, 2: seq_length}} if deepstack else {}),
        **(
            {"step_ids": {0: batch, 1: torch.export.Dim.DYNAMIC if step_ids_seen else seq_length}}
            if step_ids
            else {}
        ),
        "cache": cache_dynamic_shapes(
            step_sets[0]["cache"],
            batch,
            cache_length,
            *(
                [torch.export.Dim("decoded_length", min=0, max=cache_max - 1)]
                if decoded_tokens is not None
                else []
            ),
        ),
    }
    embed_labels = [lab.split(" cache=")[0] for lab in labels]
    return UntrainedModel(
        model=model,
        config=config,
        inputs=step_sets[0],
        other_inputs=step_sets[1:],
        dynamic_shapes=step_shapes,
        cache_argument="cache",
        shapes=[(b, n, c) for b, n, c, _ in shapes],
        prompts=prompts,
        prompt_masks=prompt_masks,
        task=task_name,
        notes=notes,
        components=[
            encoder,
            Component(
                "embed_tokens",
                embed,
                embed_sets,
                {"input_ids": {0: batch, 1: seq_length}},
                embed_labels,
            ),
            Component("decoder", decoder, step_sets, step_shapes, labels),
        ],
    )


def is_built(m: UntrainedModel) -> bool:
    """True when ``m`` was built by :func:`build`."""
    return bool(m.components) and m.components[0].name == "audio_encoder"


def check_eager(m: UntrainedModel, atol: float) -> list[dict[str, Any]]:
    """The decoder step's logits against one forward over prompt + new embeddings."""
    import torch

    step = next(c for c in m.components if c.name == "decoder")
    out = []
    for i, feeds in enumerate(step.input_sets):
        new = feeds["inputs_embeds"]
        with torch.no_grad():
            got = step.module(**copy.deepcopy(feeds))["logits"]
            given = {}
            if "position_ids" in feeds:
                rows = feeds["position_ids"].shape[0]
                given["position_ids"] = text_positions(feeds["attention_mask"], rows)
            added = feeds.get("deepstack_embeds")
            if added is not None:  # nothing added over the prompt's text
                shape = (*added.shape[:2], m.prompts[i].shape[1], added.shape[-1])
                added = torch.cat([torch.zeros(shape), added], 2)
            with added_to_layers(m.model, added) if added is not None else contextlib.nullcontext():
                whole = text_lm(m.model)(
                    inputs_embeds=torch.cat([m.prompts[i], new], 1),
                    attention_mask=feeds["attention_mask"],
                    use_cache=False,
                    **given,
                ).logits[:, -new.shape[1] :]
        diff = float((got.double() - whole.double()).abs().max())
        out.append({"input_set": i, "abs": diff, "ok": diff <= atol})
    return out


def _graph_audio(feeds: dict[str, Any], encoder: Any) -> dict[str, Any]:
    """The audio feeds the encoder graph takes: without the mask when it takes none."""
    if encoder.mask_argument is not None:
        return feeds
    return {k: v for k, v in feeds.items() if k != ENCODER_INPUTS[encoder.kind][1]}


def generation_inputs(m: UntrainedModel) -> dict[str, Any]:
    """The prompt of the generation stage: per row, text tokens, as many audio tokens as
    the encoder returns frames for its clip, text tokens; and the clips' audio under the
    audio encoder graph's input names."""
    import torch

    encoder = next(c for c in m.components if c.name == "audio_encoder").module
    extractor = _audio_features_extractor(m.config, encoder.kind)
    audio = audio_inputs(
        extractor,
        encoder.kind,
        (GENERATION_AUDIO, GENERATION_AUDIO),
        4321,
        frames_multiple(m.config),
    )
    audio = _graph_audio(audio, encoder)
    if isinstance(encoder, _parts()["windowed"]):
        audio["cu_seqlens"] = audio_windows(m.model, audio[ENCODER_INPUTS[encoder.kind][1]])
    if isinstance(encoder, _parts()["timed"]):
        mask = audio[ENCODER_INPUTS[encoder.kind][1]]
        audio["audio_timestamps"] = timestamps_function(m.model)(m.model, mask)
    with torch.no_grad():
        frames = encoder(**audio).shape[0] // 2
    token = audio_token(m.config)
    text = m.config.get_text_config(decoder=True)
    generator = torch.Generator().manual_seed(1234)
    before, after = GENERATION_TEXT
    ids = torch.cat(
        [
            _text_ids(text, (2, before), generator, token),
            torch.full((2, frames), token),
            _text_ids(text, (2, after), generator, token),
        ],
        1,
    )
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "audio": audio}


def generate_eager(m: UntrainedModel) -> Generation:
    from .text_generation import greedy_generate

    if added_audio(m.config):
        return _added_generate_eager(m)
    feeds = generation_inputs(m)
    kind, mask_argument = audio_arguments(m.model)
    audio = feeds["audio"]
    given = {
        "input_ids": feeds["input_ids"],
        "attention_mask": feeds["attention_mask"],
        kind: audio[ENCODER_INPUTS[kind][0]],
        **audio_settings(m.model),
    }
    if mask_argument is not None:
        given[mask_argument] = audio[ENCODER_INPUTS[kind][1]]
    return greedy_generate(m.model, given, NEW_TOKENS)


def generate(m: UntrainedModel, call: Any, forced: Any) -> Generation:
    """The encoder once, then :func:`merged_generate` on the prompt."""
    if added_audio(m.config):
        return _added_generate(m, call, forced)
    feeds = generation_inputs(m)
    return merged_generate(
        m, call, forced, "audio_encoder", feeds["audio"], feeds, audio_token(m.config), "frames"
    )


def merge(embeds: Any, ids: Any, token: int, features: Any, what: str) -> Any:
    """``embeds`` with the rows of ``features`` in place of the embeddings of ``token``, in
    order, as the models' forward does (``masked_scatter``).

    :raises ValueError: when the prompt holds another number of ``token`` than there are
        rows of ``features``
    """
    placeholders = int((ids == token).sum())
    if placeholders != features.shape[0]:
        raise ValueError(
            f"the prompt holds {placeholders} placeholder tokens (id {token}) and the encoder "
            f"returned {features.shape[0]} {what}: put one placeholder per {what[:-1]} in "
            "input_ids, as the model's processor expands them"
        )
    where = (ids == token)[..., None].expand_as(embeds)
    return embeds.masked_scatter(where, features.to(embeds.dtype))


def merged_generate(
    m: UntrainedModel,
    call: Any,
    forced: Any,
    encoder: str,
    encoder_feeds: dict[str, Any],
    feeds: dict[str, Any],
    token: int,
    what: str,
    positions: tuple[Any, Any] | None = None,
) -> Generation:
    """The ``encoder`` component once, the token embeddings of the prompt with its outputs
    merged over the ``token`` positions (:func:`merge`), the prompt's first position
    eagerly (the decoder graph takes a cache), the rest of the prompt through the decoder
    graph, then one step per token.

    ``positions``: for a decoder that takes ``position_ids``, those of the prompt
    ``(rows, batch, length)`` and the offset ``(batch, 1)`` of every later token's
    position from its index, as the model's processor side computes them."""
    import torch

    ids, mask = feeds["input_ids"], feeds["attention_mask"]
    # the prompt in chunks of at most the graphs' declared new positions
    step = next(c for c in m.components if c.name == "decoder")
    bound = getattr(step.dynamic_shapes["inputs_embeds"][1], "max", ids.shape[1])
    features = call(encoder, encoder_feeds)
    deepstack = None
    if isinstance(features, dict):  # a DeepStack tower: its early layers' features too
        features, deepstack = features["features"], features["deepstack"]
    embeds = torch.cat(
        [
            call("embed_tokens", {"input_ids": ids[:, start : start + bound]})
            for start in range(0, ids.shape[1], bound)
        ],
        1,
    )
    merged = merge(embeds, ids, token, features, what)
    added = None
    if "deepstack_embeds" in step.input_sets[0]:
        # each layer's features written at the image tokens, zero elsewhere
        layers = step.input_sets[0]["deepstack_embeds"].shape[0]
        zeros = torch.zeros_like(embeds)
        added = torch.stack([merge(zeros, ids, token, deepstack[i], what) for i in range(layers)])

    read_ids = getattr(step.module, "step_ids", None)
    seen_all = bool(getattr(step.module, "step_ids_seen", False))
    if read_ids is not None:  # the ids the step reads beside the embeddings
        seen_ids = read_ids(m.model, ids)

    def at(start: int, end: int) -> dict[str, Any]:
        given = {}
        if read_ids is not None:
            first_id = 0 if seen_all else start
            given["step_ids"] = seen_ids[:, first_id:end].contiguous()
        if positions is not None:
            given["position_ids"] = positions[0][..., start:end].contiguous()
        if added is not None:
            given["deepstack_embeds"] = added[:, :, start:end].contiguous()
        return given

    first_added = added_to_layers(m.model, added[:, :, :1]) if added is not None else None
    with torch.no_grad(), first_added or contextlib.nullcontext():
        first = text_lm(m.model)(
            inputs_embeds=merged[:, :1],
            attention_mask=mask[:, :1],
            use_cache=True,
            **{k: v for k, v in at(0, 1).items() if k not in ("deepstack_embeds", "step_ids")},
            **(step.module.step_kwargs(m.model, at(0, 1)["step_ids"]) if read_ids else {}),
        )
    out, cache, chunks = None, _cache_of(first), 0
    for start in range(1, merged.shape[1], bound):
        end = min(start + bound, merged.shape[1])
        out = call(
            "decoder",
            {
                "inputs_embeds": merged[:, start:end],
                "attention_mask": mask[:, :end],
                **at(start, end),
                "cache": cache,
            },
        )
        cache, chunks = out["cache"], chunks + 1
    logits = [out["logits"][:, -1].detach().float()]
    seen = mask
    for t in range(NEW_TOKENS - 1):
        token_ids = forced[:, t : t + 1]
        seen = torch.cat([seen, torch.ones_like(token_ids)], 1)
        step = call("embed_tokens", {"input_ids": token_ids})
        given = {"inputs_embeds": step, "attention_mask": seen}
        if positions is not None:
            rows = positions[0].shape[0]
            index = text_positions(seen, rows)[..., -1:] + positions[1][None]
            given["position_ids"] = index
        if added is not None:  # a text token: nothing added
            given["deepstack_embeds"] = torch.zeros((added.shape[0], *step.shape))
        if read_ids is not None:
            read = torch.cat([ids, forced[:, : t + 1]], 1) if seen_all else token_ids
            given["step_ids"] = read_ids(m.model, read)
        out = call("decoder", {**given, "cache": out["cache"]})
        logits.append(out["logits"][:, -1].detach().float())
    return Generation(
        tokens=torch.stack([step.argmax(-1) for step in logits], 1),
        logits=logits,
        calls=1 + -(-ids.shape[1] // bound) + chunks + 2 * (NEW_TOKENS - 1),
        prefill=(
            f"{encoder.replace('_', ' ')} once, its {what} merged into the prompt's "
            f"embeddings, the first of its {ids.shape[1]} positions eager, the rest through "
            "the decoder graph"
            + (f" in {chunks} chunks of at most {bound} positions" if chunks > 1 else "")
        ),
    )


#: seconds of audio of each row of the generation prompt of a model that adds its audio
#: to every position: long enough for the prompt and every new token to get a frame
ADDED_AUDIO = (1.2, 0.9)


def added_generation_inputs(m: UntrainedModel) -> dict[str, Any]:
    """The prompt of the generation stage of a model that adds its audio to every
    position: text tokens (as many as :data:`GENERATION_TEXT` holds), and two clips of
    :data:`ADDED_AUDIO` padded to one length, under the audio encoder graph's names."""
    import torch

    encoder = next(c for c in m.components if c.name == "audio_encoder").module
    extractor = _audio_features_extractor(m.config, encoder.kind)
    audio = audio_inputs(
        extractor,
        encoder.kind,
        ADDED_AUDIO,
        4321,
        frames_multiple(m.config),
        samples_multiple(m.config),
    )
    audio = _graph_audio(audio, encoder)
    text = m.config.get_text_config(decoder=True)
    generator = torch.Generator().manual_seed(1234)
    ids = _text_ids(text, (2, sum(GENERATION_TEXT)), generator, -1)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "audio": audio}


def add_frames(embeds: Any, frames: Any, start: int) -> Any:
    """``embeds`` ``(batch, length, hidden)`` of the positions from ``start`` on, plus the
    audio frames of the same positions (``frames``: ``(batch, positions, hidden)``), as a
    forward that adds audio to every position does.

    :raises ValueError: when the audio ends before the last position
    """
    end = start + embeds.shape[1]
    if end > frames.shape[1]:
        raise ValueError(
            f"positions {start} to {end - 1} need audio frames and the encoder returned "
            f"{frames.shape[1]}: the model adds one frame to every position, its text "
            "cannot outrun its audio"
        )
    return embeds + frames[:, start:end].to(embeds.dtype)


def _added_generate_eager(m: UntrainedModel) -> Generation:
    """Eager ``generate`` on :func:`added_generation_inputs`, with the default delay the
    exported decoder step uses (the streaming encoder and its cache run inside)."""
    from .text_generation import greedy_generate

    feeds = added_generation_inputs(m)
    kind, _ = audio_arguments(m.model)
    given = {
        "input_ids": feeds["input_ids"],
        "attention_mask": feeds["attention_mask"],
        kind: feeds["audio"][ENCODER_INPUTS[kind][0]],
    }
    delay = getattr(m.config, "default_num_delay_tokens", None)
    if delay is not None:
        given["num_delay_tokens"] = delay
    return greedy_generate(m.model, given, NEW_TOKENS)


def _added_generate(m: UntrainedModel, call: Any, forced: Any) -> Generation:
    """The encoder once on the whole clips, the prompt's token embeddings plus the frames
    of their positions (:func:`add_frames`), the first position eagerly (the decoder graph
    takes a cache), the rest through the decoder graph, then one step per token, each
    token's embedding plus the frame of its position."""
    import torch

    feeds = added_generation_inputs(m)
    ids, mask = feeds["input_ids"], feeds["attention_mask"]
    step = next(c for c in m.components if c.name == "decoder")
    bound = getattr(step.dynamic_shapes["inputs_embeds"][1], "max", ids.shape[1])
    flat = call("audio_encoder", feeds["audio"])
    frames = flat.reshape(ids.shape[0], -1, flat.shape[-1])
    embeds = torch.cat(
        [
            call("embed_tokens", {"input_ids": ids[:, start : start + bound]})
            for start in range(0, ids.shape[1], bound)
        ],
        1,
    )
    merged = add_frames(embeds, frames, 0)
    with torch.no_grad():
        first = text_lm(m.model)(
            inputs_embeds=merged[:, :1], attention_mask=mask[:, :1], use_cache=True
        )
    out, cache, chunks = None, _cache_of(first), 0
    for start in range(1, merged.shape[1], bound):
        end = min(start + bound, merged.shape[1])
        given = {"inputs_embeds": merged[:, start:end], "attention_mask": mask[:, :end]}
        out = call("decoder", {**given, "cache": cache})
        cache, chunks = out["cache"], chunks + 1
    logits = [out["logits"][:, -1].detach().float()]
    seen = mask
    for t in range(NEW_TOKENS - 1):
        token_ids = forced[:, t : t + 1]
        seen = torch.cat([seen, torch.ones_like(token_ids)], 1)
        new = add_frames(call("embed_tokens", {"input_ids": token_ids}), frames, ids.shape[1] + t)
        out = call("decoder", {"inputs_embeds": new, "attention_mask": seen, "cache": cache})
        cache = out["cache"]
        logits.append(out["logits"][:, -1].detach().float())
    return Generation(
        tokens=torch.stack([step.argmax(-1) for step in logits], 1),
        logits=logits,
        calls=1 + -(-ids.shape[1] // bound) + chunks + 2 * (NEW_TOKENS - 1),
        prefill=(
            f"audio encoder once on the whole clips ({frames.shape[1]} frames), frame i added "
            f"to the embedding of position i, the first of the {ids.shape[1]} prompt "
            "positions eager, the rest through the decoder graph; each new token gets the "
            "frame of its position"
        ),
    )
