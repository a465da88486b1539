"""automatic-speech-recognition: speech encoder-decoders, audio in, text tokens out.

The model is built with ``AutoModelForSpeechSeq2Seq``
(``MODEL_FOR_SPEECH_SEQ_2_SEQ_MAPPING_NAMES``) and exported as the three graphs of
:mod:`._seq2seq`: the audio encoder, the first decoder step and the decoder step with an
``EncoderDecoderCache``.

The encoder's inputs are what the model type's own feature extractor returns for random
waveforms of distinct lengths (0.7 to 1.6 s at its sampling rate; one batch of
``BATCH_MAX`` rows of 2 s at the declared bounds): log-mel ``input_features`` or the raw
``input_values``, padded on the right as the feature extractor pads a batch, with the
``attention_mask`` when the feature extractor returns one by default. Dynamic dimensions:
``batch``, ``frames`` (feature frames) or ``audio_length`` (samples), and
``encoder_length`` (the encoder states, shorter than the input by the encoder's
subsampling; the decoder's cross-attention cache keeps it). A model whose encoder
embeds token ids instead (Dia, text to speech, mapped here by transformers) gets the
text encoder side of text2text-generation: right-padded token ids of its encoder's
vocabulary and their mask. A model whose encoder
accepts one length only (Whisper: ``2 * max_source_positions`` frames, which its feature
extractor reaches by padding every clip with silence) keeps that length static.

A family's ``input_layouts`` entry can say what differs (:func:`_layout`): a port of a
feature extractor that does not install, and for a model whose encoder takes embeddings
its ``generate`` builds from the features, the wrapper of the encoder graph that builds
them, the inputs it takes besides the features, and how ``generate`` is called on the
generation stage's inputs.
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any

from ..dims import BATCH_MAX
from ..families import INPUT_LAYOUTS
from ..models import UntrainedModel
from . import Generation, register
from ._encoder import token_inputs
from ._seq2seq import EncoderSide, Seq2Seq

__all__ = ["SpeechSeq2Seq", "feature_extractor"]

#: samples of audio per unit of the encoder lengths of :data:`._seq2seq.SHAPES` (1000
#: samples, 1/16 s at 16 kHz): sets of 0.4 to 1 s
SAMPLES_PER_UNIT = 1000
#: the length of each clip of the set at the declared bounds, in units
BOUND_UNITS = 32
#: the shortest clip the export declares, in units (1/8 s): convolutions over the raw
#: audio need a few hundred samples (moonshine's first one alone takes 127)
SHORTEST_UNITS = 2


def _layout(config: Any) -> dict[str, Any]:
    """The family's ``input_layouts`` entry of the model type of ``config`` (empty when
    it has none). The keys this task reads: ``feature_extractor`` (see
    :func:`feature_extractor`); ``encoder``, a function returning the wrapper module of
    the encoder graph when the model's encoder does not take the audio itself (its
    forward's arguments are the graph's inputs, and it returns the states and their
    mask); ``conditioning``, a function ``(model, batch, generator)`` giving the inputs
    that wrapper takes besides the feature extractor's, each with a batch dimension;
    ``generation``, a function ``(model, feeds)`` giving the graphs' inputs of the
    generation stage and the keyword arguments of the model's ``generate`` on the same;
    ``states_mask_argument``, the argument of the model's forward that takes the states'
    mask; ``generation_config``, a function of the config giving attributes set on the
    model's generation config when it is built."""
    return INPUT_LAYOUTS.get(getattr(config, "model_type", None), ({}, ""))[0]


def _model_types(config: Any) -> list[str]:
    """The model type of ``config``, then those of its encoder sub-configs."""
    types = [config.model_type]
    for name in ("encoder", "encoder_config", "speech_config", "audio_config"):
        sub = getattr(config, name, None)
        if getattr(sub, "model_type", None):
            types.append(sub.model_type)
    return types


def _mel_bins(config: Any) -> int | None:
    """The number of mel bins the config's encoder expects, None when it does not say."""
    for holder in (
        config,
        getattr(config, "encoder_config", None),
        getattr(config, "encoder", None),
    ):
        if holder is None:
            continue
        bins = getattr(holder, "num_mel_bins", None)
        if isinstance(bins, int):
            return bins
        per_channel = getattr(holder, "input_feat_per_channel", None)
        if isinstance(per_channel, int):
            return per_channel
    return None


def feature_extractor(config: Any, input_name: str) -> Any:
    """The feature extractor of the model type of ``config`` (or of its encoder), with
    its defaults and the number of mel bins the config expects. A raw-audio model type
    that transformers maps to none gets ``Wav2Vec2FeatureExtractor`` (a waveform,
    normalized and padded with zeros), the one raw-audio processors ship. A family's
    ``input_layouts`` entry ``feature_extractor`` (a function of the config) gives the
    one to use instead, with why (a port of an extractor whose backend does not install).

    :raises ValueError: when a model type fed features has no feature extractor
    """
    import transformers

    declared = INPUT_LAYOUTS.get(config.model_type, ({}, ""))[0].get("feature_extractor")
    if declared is not None:
        return declared(config)
    from transformers.models.auto.feature_extraction_auto import (
        FEATURE_EXTRACTOR_MAPPING_NAMES,
    )

    name = next(
        (
            FEATURE_EXTRACTOR_MAPPING_NAMES[t]
            for t in _model_types(config)
            if t in FEATURE_EXTRACTOR_MAPPING_NAMES
        ),
        "Wav2Vec2FeatureExtractor" if input_name == "input_values" else None,
    )
    if name is None:
        raise ValueError(
            f"no feature extractor is mapped to {config.model_type!r} in transformers and "
            f"its encoder takes {input_name}: exportcheck builds audio features with the "
            "model type's feature extractor"
        )
    cls = getattr(transformers, name)
    kwargs = {}
    bins = _mel_bins(config)
    if (
        input_name == "input_features"
        and bins
        and "feature_size" in inspect.signature(cls).parameters
    ):
        kwargs["feature_size"] = bins
    return cls(**kwargs)


def processor_padding(config: Any) -> dict[str, Any]:
    """The padding the model type's processor asks of its feature extractor
    (``pad_to_multiple_of``: moonshine_streaming's frames of 80 samples), if any; none
    when the family gives the feature extractor (a port of one whose backends do not
    install, as its processor's do not: the port pads as the extractor does)."""
    import transformers
    from transformers.models.auto.processing_auto import PROCESSOR_MAPPING_NAMES

    if _layout(config).get("feature_extractor") is not None:
        return {}
    name = PROCESSOR_MAPPING_NAMES.get(config.model_type)
    cls = getattr(transformers, name, None) if name else None
    audio = getattr(cls, "audio_kwargs", None) or {}
    multiple = audio.get("pad_to_multiple_of")
    return {"pad_to_multiple_of": multiple} if isinstance(multiple, int) else {}


@dataclasses.dataclass
class _Audio:
    """How one model's encoder takes audio."""

    name: str  # input_features or input_values
    extractor: Any
    mask: bool  # the feature extractor returns a mask by default and the encoder takes it
    fixed: int | None  # the only input length the encoder accepts, in samples


def _fixed_samples(model: Any, config: Any, extractor: Any) -> int | None:
    """Samples the feature extractor pads every clip to when the encoder accepts one
    input length only (its feature extractor's ``n_samples`` and the encoder's
    ``max_source_positions`` frames, both declared), else None."""
    n_samples = getattr(extractor, "n_samples", None)
    positions = getattr(config, "max_source_positions", None)
    encoder = model.get_encoder()
    strides = [
        getattr(encoder, name).stride[0]
        for name in ("conv1", "conv2")
        if hasattr(getattr(encoder, name, None), "stride")
    ]
    if not (isinstance(n_samples, int) and isinstance(positions, int) and len(strides) == 2):
        return None
    frames = positions * strides[0] * strides[1]
    return frames * extractor.hop_length


class SpeechSeq2Seq(Seq2Seq):
    """Speech encoder-decoders: audio encoder, first decoder step, decoder step."""

    name = "automatic-speech-recognition"
    mapping = "MODEL_FOR_SPEECH_SEQ_2_SEQ_MAPPING_NAMES"
    auto_class = "AutoModelForSpeechSeq2Seq"
    rank = 35
    columns = ("state", "distinct_shapes", "padded", "eager_consistent", "generation")
    status_intro = (
        "Every model type of the installed transformers' "
        "``MODEL_FOR_SPEECH_SEQ_2_SEQ_MAPPING_NAMES``, built untrained from a tiny config "
        "with ``AutoModelForSpeechSeq2Seq`` and exported as three graphs: the audio "
        "encoder, the first decoder step and the decoder step with an "
        "``EncoderDecoderCache``. The encoder's inputs are what the model type's own "
        "feature extractor returns for random waveforms of distinct lengths (log-mel "
        "features or raw samples, padded batches with the mask it returns); each graph "
        "runs on seven input sets of distinct shapes against eager PyTorch, then 8 tokens "
        "are generated greedily through each runtime and compared with eager "
        "``generate(do_sample=False)``."
    )

    def _text_encoder(self, model: Any) -> bool:
        """True when the model reads token ids, not audio: its encoder's forward takes
        ``input_ids``, and neither it nor the model's forward takes ``input_features`` or
        ``input_values`` (Pop2Piano's encoder takes ids too, but its model feeds it
        features as embeddings: it stays an audio model the task cannot build)."""
        encoder = inspect.signature(model.get_encoder().forward).parameters
        outer = inspect.signature(model.forward).parameters
        audio = any(n in p for n in ("input_features", "input_values") for p in (encoder, outer))
        return "input_ids" in encoder and not audio

    def new_model(self, config: Any) -> Any:
        """:meth:`Seq2Seq.new_model`, with the attributes the family sets on its
        generation config (``generation_config`` in its input layout)."""
        model = super().new_model(config)
        settings = _layout(config).get("generation_config")
        for key, value in (settings(config) if settings else {}).items():
            setattr(model.generation_config, key, value)
        return model

    def _audio(self, model: Any, config: Any) -> _Audio:
        wrapper = _layout(config).get("encoder")
        encoder = wrapper() if wrapper is not None else model.get_encoder()
        params = inspect.signature(encoder.forward).parameters
        name = next((n for n in ("input_features", "input_values") if n in params), None)
        if name is None:
            raise ValueError(
                f"{encoder.__name__ if wrapper else type(encoder).__name__}.forward takes "
                "neither input_features nor "
                f"input_values (it takes {', '.join(list(params)[:4])}): not an audio encoder"
            )
        extractor = feature_extractor(config, name)
        mask = bool(extractor.return_attention_mask) and "attention_mask" in params
        return _Audio(name, extractor, mask, _fixed_samples(model, config, extractor))

    def _waveforms(self, batch: int, samples: int, padding: tuple[int, ...], generator: Any):
        import torch

        lengths = [
            samples - SAMPLES_PER_UNIT * (padding[i] if i < len(padding) else 0)
            for i in range(batch)
        ]
        return [(0.1 * torch.randn(n, generator=generator)).numpy() for n in lengths]

    def encoder_inputs(
        self,
        model: Any,
        config: Any,
        batch: int,
        length: int,
        padding: tuple[int, ...],
        generator: Any,
    ) -> dict[str, Any]:
        """What the feature extractor returns for ``batch`` random clips of ``length``
        units (:data:`SAMPLES_PER_UNIT`), row ``i`` shorter by ``padding[i]`` units; for
        an encoder of token ids (:meth:`_text_encoder`), ``length`` token ids of its
        own config's vocabulary, right-padded as a tokenizer pads a batch."""
        import torch

        if self._text_encoder(model):
            # the encoder's own config: a composite config may name another side's
            # vocabulary (DiaConfig.get_text_config returns the decoder's whatever is
            # asked, transformers/models/dia/configuration_dia.py:158)
            return token_inputs(model.get_encoder().config, batch, length, padding, generator)

        audio = self._audio(model, config)
        waves = self._waveforms(batch, length * SAMPLES_PER_UNIT, padding, generator)
        extractor = audio.extractor
        kwargs: dict[str, Any] = {"padding": "longest", **processor_padding(config)}
        if audio.fixed:
            kwargs = {"padding": "max_length", "max_length": audio.fixed}
        out = extractor(
            waves,
            sampling_rate=extractor.sampling_rate,
            return_tensors="pt",
            return_attention_mask=audio.mask,
            **kwargs,
        )
        feeds = {audio.name: out[audio.name].to(torch.float32)}
        if audio.mask:
            feeds["attention_mask"] = out["attention_mask"].to(torch.int64)
        conditioning = _layout(config).get("conditioning")
        if conditioning is not None:
            feeds.update(conditioning(model, batch, generator))
        return feeds

    def encoder_side(
        self, model: Any, config: Any, shapes: list[tuple[Any, ...]], generator: Any, batch: Any
    ) -> EncoderSide:
        import torch

        if self._text_encoder(model):
            side = super().encoder_side(model, config, shapes, generator, batch)
            side.notes.append(
                f"encoder inputs: token ids and mask, as text2text-generation builds them: "
                f"{type(model.get_encoder()).__name__}.forward embeds input_ids, not audio "
                "(a text-to-speech model in the speech sequence-to-sequence mapping)"
            )
            return side
        audio = self._audio(model, config)
        # the set at the bounds: 2 s clips
        shapes = [*shapes[:-1], (shapes[-1][0], BOUND_UNITS, (), *shapes[-1][3:])]
        sets = [self.encoder_inputs(model, config, b, n, p, generator) for b, n, p, *_ in shapes]
        axis = _length_axis(sets, audio.name)
        notes = [
            f"encoder inputs: {audio.name} from {type(audio.extractor).__name__} on random "
            "waveforms"
            + (
                ", with its attention mask"
                if audio.mask
                else ", no attention mask (the feature extractor returns none by default)"
            )
        ]
        with torch.no_grad():
            Encoder = self._encoder_class(config, audio.name)
            lengths = [_states_of(Encoder(model)(**sets[i])).shape[1] for i in (0, len(sets) - 1)]
        if audio.fixed:
            notes.append(
                f"input length static: the encoder accepts {sets[0][audio.name].shape[axis]} "
                f"frames only ({audio.fixed} samples, every clip padded with silence by the "
                "feature extractor), so its states and the cross-attention cache are static too"
            )
            dims = {0: batch}
            states_length = None
            mask_dims = {0: batch} if audio.mask else None
        else:
            unit = "frames" if audio.name == "input_features" else "audio_length"
            bound = sets[-1][audio.name].shape[axis]
            shortest = self.encoder_inputs(model, config, 1, SHORTEST_UNITS, (), generator)
            length = torch.export.Dim(unit, min=shortest[audio.name].shape[axis], max=bound)
            dims = {0: batch, axis: length}
            states_length = torch.export.Dim("encoder_length", min=1, max=max(lengths))
            mask_dims = {0: batch, 1: length} if audio.mask else None
        dynamic_shapes = {audio.name: dims}
        if audio.mask:
            dynamic_shapes["attention_mask"] = mask_dims
        for name in sets[0]:
            if name not in dynamic_shapes:  # the family's conditioning: one per row
                dynamic_shapes[name] = {0: batch}
        if _layout(config).get("encoder") is not None:
            notes.append(f"encoder graph: {INPUT_LAYOUTS[config.model_type][1]}")
        labels = []
        for feeds, (b, _, padding, *_) in zip(sets, shapes, strict=True):
            unit = "frames" if audio.name == "input_features" else "audio"
            label = f"batch={b} {unit}={feeds[audio.name].shape[axis]}"
            if any(padding):
                label += " padded"
            if b == BATCH_MAX and feeds is sets[-1]:
                label += " at bounds"
            labels.append(label)
        return EncoderSide(sets, dynamic_shapes, mask_dims, states_length, labels, notes)

    def _encoder_class(self, config: Any, name: str) -> type:
        """The wrapper of the encoder graph: the family's (``encoder`` in its input
        layout), else the one of the audio input ``name``."""
        wrapper = _layout(config).get("encoder")
        return wrapper() if wrapper is not None else _encoder_class(name)

    def encoder_class(self, model: Any, side: EncoderSide) -> type:
        """The family's wrapper of the encoder graph, else :meth:`Seq2Seq.encoder_class`."""
        if _layout(model.config).get("encoder") is not None:
            return self._encoder_class(model.config, "")
        return super().encoder_class(model, side)

    def encoder_outputs(self, model: Any, feeds: dict[str, Any]) -> Any:
        """The family's wrapper's states and mask, else :meth:`Seq2Seq.encoder_outputs`."""
        if _layout(model.config).get("encoder") is None:
            return super().encoder_outputs(model, feeds)
        import types

        out = self._encoder_class(model.config, "")(model)(**feeds)
        return types.SimpleNamespace(**out)

    def states_mask_argument(self, model: Any) -> str | None:
        """The family's ``states_mask_argument``, else None."""
        return _layout(model.config).get("states_mask_argument")

    def generation_inputs(self, m: UntrainedModel) -> dict[str, Any]:
        """:meth:`Seq2Seq.generation_inputs`, as the family's ``generation`` gives them to
        the graphs."""
        feeds = super().generation_inputs(m)
        generation = _layout(m.config).get("generation")
        return generation(m.model, feeds)[0] if generation is not None else feeds

    def generate_eager(self, m: UntrainedModel) -> Generation:
        """:meth:`Seq2Seq.generate_eager`, the model's ``generate`` called with the
        arguments the family's ``generation`` gives for the graphs' inputs."""
        generation = _layout(m.config).get("generation")
        if generation is None:
            return super().generate_eager(m)
        from ._seq2seq import decoder_start
        from .text_generation import greedy_generate

        arguments = generation(m.model, super().generation_inputs(m))[1]
        start = decoder_start(m.model, m.config)
        return greedy_generate(m.model, arguments, self.new_tokens, decoder_start_token_id=start)


def _states_of(out: Any) -> Any:
    """The states of an encoder wrapper's output (a tensor, or a dict with its mask)."""
    return out["last_hidden_state"] if isinstance(out, dict) else out


def _length_axis(sets: list[dict[str, Any]], name: str) -> int:
    """The axis of ``name`` that grows with the audio: the one that differs between the
    first sets (0.75 and 1 s of audio), else (a static length) its longest."""
    first, third = sets[0][name].shape, sets[2][name].shape
    differ = [i for i in range(1, len(first)) if first[i] != third[i]]
    if differ:
        return differ[0]
    return max(range(1, len(first)), key=lambda i: first[i])


def _encoder_class(name: str) -> type:
    from ._seq2seq import _parts

    return _parts()[name]


register(SpeechSeq2Seq())
