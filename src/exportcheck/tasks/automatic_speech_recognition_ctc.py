"""automatic-speech-recognition-ctc: audio in, one row of CTC logits per output frame out.

The model is built with ``AutoModelForCTC`` (``MODEL_FOR_CTC_MAPPING_NAMES``) and
exported as one graph. Its inputs are what its feature extractor gives:

* raw waveforms, ``input_values`` float32 ``(batch, audio_length)`` (wav2vec2, hubert,
  sew, ...; ``(batch, 1, audio_length)`` for omniasr_ctc), zero-padded on the right;
* log-mel features, ``input_features`` float32 ``(batch, frames, bins)`` (parakeet_ctc,
  lasr_ctc, granite_speech5_ctc, wav2vec2-bert), zero-padded on the right.

A padded batch comes with the mask the feature extractor returns (0 on the padding),
under the name the forward takes (``attention_mask``, ``padding_mask``). A raw-audio
wav2vec2-like model whose feature encoder normalises with group norm
(``feat_extract_norm="group"``) gets none, as ``Wav2Vec2FeatureExtractor`` gives none
for it (``return_attention_mask=False`` in the preprocessor configs of such
checkpoints): the zeros are part of its input, and a note says so.

Input sets: (batch, length) = the export's (2, 4000 samples or 40 frames), five of
unseen shapes (two padded), and one at the declared upper bounds (16, ``AUDIO_MAX`` or
``FRAMES_MAX``). Dynamic dimensions: ``batch`` and ``audio_length`` (``frames`` for
features), shared by the inputs and the mask. The shortest waveform declared gives five
frames out of the feature encoder's strided convolutions.
:func:`check_audio_inputs` tells a caller whose tensors have the wrong rank or width
what the model expects.
"""

from __future__ import annotations

import inspect
from typing import Any

from ..dims import BATCH_MAX
from ..families import INPUT_LAYOUTS
from ..models import UntrainedModel, prepare_weights
from . import Task, register
from ._encoder import task_config

__all__ = [
    "AUDIO_MAX",
    "FRAMES_MAX",
    "AudioLayout",
    "SpeechCTC",
    "audio_layout",
    "check_audio_inputs",
]

#: (batch, length, padding of each row) of each input set but the last, which is at the
#: declared upper bounds; lengths in samples of 16 kHz audio for raw waveforms
AUDIO_SHAPES = [
    (2, 4000, ()),
    (1, 2400, ()),
    (3, 5600, ()),
    (4, 3200, ()),
    (2, 6400, (2000,)),
    (3, 4800, (800, 1600)),
]
#: the same in feature frames (10 ms of audio each for parakeet and lasr, 20 ms for the
#: extractors that stack two: wav2vec2-bert, granite_speech5)
FRAME_SHAPES = [
    (2, 40, ()),
    (1, 24, ()),
    (3, 56, ()),
    (4, 32, ()),
    (2, 64, (20,)),
    (3, 48, (8, 16)),
]
#: the longest waveform an export declares (half a second at 16 kHz); one set runs at it
AUDIO_MAX = 8000
#: the most feature frames an export declares; one set runs at it
FRAMES_MAX = 128
#: the fewest feature frames an export declares: some survive every subsampling
#: (3 out of lasr_ctc's two convolutions of kernel 5 and stride 2)
FRAMES_MIN = 24


class AudioLayout:
    """What the forward of a CTC model takes: the input's name and rank, the width of a
    feature frame, and the mask's name (None when the model is fed without one).

    >>> AudioLayout("input_values", None, "attention_mask").shape_text
    '(batch, audio_length)'
    """

    def __init__(
        self, name: str, bins: int | None, mask: str | None, *, channel: bool = False
    ) -> None:
        self.name = name
        self.bins = bins
        self.mask = mask
        self.channel = channel

    @property
    def rank(self) -> int:
        return 3 if self.bins is not None or self.channel else 2

    @property
    def time_dim(self) -> int:
        return 2 if self.channel else 1

    @property
    def shape_text(self) -> str:
        if self.bins is not None:
            return f"(batch, frames, {self.bins})"
        return "(batch, 1, audio_length)" if self.channel else "(batch, audio_length)"


def _find(config: Any, name: str) -> Any:
    """``name`` of ``config`` or of its first sub-config that sets it, else None."""
    value = getattr(config, name, None)
    if value is not None:
        return value
    for key in getattr(config, "sub_configs", {}) or {}:
        value = getattr(getattr(config, key, None), name, None)
        if value is not None:
            return value
    return None


def audio_layout(model: Any, config: Any = None) -> AudioLayout:
    """The inputs the forward of a CTC ``model`` takes, read from its signature and config.

    * ``input_features``: log-mel frames ``(batch, frames, bins)``, ``bins`` from
      ``feature_projection_input_dim`` (two stacked 80-bin frames for wav2vec2-bert) or
      ``num_mel_bins`` (of the config or its encoder's);
    * ``input_values``: raw audio ``(batch, audio_length)``.

    The mask is the forward's ``attention_mask`` or ``padding_mask``; a wav2vec2-like
    model with ``feat_extract_norm="group"`` gets none (its feature extractor returns
    none).

    >>> from exportcheck import untrained_model
    >>> audio_layout(untrained_model("parakeet_ctc").model).shape_text
    '(batch, frames, 80)'
    """
    config = model.config if config is None else config
    params = inspect.signature(model.forward).parameters
    special = INPUT_LAYOUTS.get(getattr(config, "model_type", None), ({}, ""))[0]
    mask = next((m for m in ("attention_mask", "padding_mask") if m in params), None)
    if "input_features" in params:
        bins = _find(config, "feature_projection_input_dim")
        if bins is None:
            bins = _find(config, "num_mel_bins") * special.get("values_per_bin", 1)
        return AudioLayout("input_features", int(bins), mask)
    if "input_values" not in params:
        raise ValueError(
            f"{type(model).__name__}.forward takes neither input_values nor input_features "
            f"(it takes {', '.join(list(params)[:4])}, ...): not a speech model."
        )
    if getattr(config, "feat_extract_norm", "layer") != "layer":
        mask = None
    return AudioLayout("input_values", None, mask, channel=bool(special.get("channel")))


def check_audio_inputs(model: Any, feeds: dict[str, Any]) -> None:
    """Raise a ValueError saying what shape ``model`` expects when ``feeds`` does not
    have it (a waveform of rank 3, features of rank 2, a frame of the wrong width).

    >>> import torch
    >>> from exportcheck import untrained_model
    >>> m = untrained_model("wav2vec2", task="automatic-speech-recognition-ctc")
    >>> check_audio_inputs(m.model, {"input_values": torch.zeros(2, 1, 4000)})
    Traceback (most recent call last):
        ...
    ValueError: Wav2Vec2ForCTC takes input_values of shape (batch, audio_length), got 2x1x4000: pass one row of samples per clip (squeeze the channel dimension of mono audio).
    """
    layout = audio_layout(model)
    name = type(model).__name__
    other = "input_features" if layout.name == "input_values" else "input_values"
    if layout.name not in feeds:
        got = f"{other}, which it does not take" if other in feeds else f"{', '.join(feeds)}"
        raise ValueError(
            f"{name} takes {layout.name} of shape {layout.shape_text}, got {got}: "
            "compute the inputs with the model's feature extractor."
        )
    x = feeds[layout.name]
    shape = "x".join(str(int(s)) for s in x.shape)
    if layout.bins is not None:
        hint = (
            "pass log-mel frames as the model's feature extractor computes them"
            if x.dim() != 3
            else f"each frame must have {layout.bins} values; compute them with the "
            "model's feature extractor"
        )
        if x.dim() != 3 or x.shape[-1] != layout.bins:
            raise ValueError(
                f"{name} takes input_features of shape {layout.shape_text}, got {shape}: {hint}."
            )
        return
    if x.dim() != layout.rank or (layout.channel and x.shape[1] != 1):
        hint = (
            "pass one row of samples per clip (squeeze the channel dimension of mono audio)"
            if x.dim() > layout.rank
            else "add a batch dimension (x[None]) for a single clip"
            if x.dim() < layout.rank
            else "pass mono audio, one channel per clip"
        )
        raise ValueError(
            f"{name} takes input_values of shape {layout.shape_text}, got {shape}: {hint}."
        )


def _receptive_field(config: Any) -> tuple[int, int]:
    """(samples one output frame sees, samples between two frames) of a feature encoder
    of 1-D convolutions (``conv_kernel``, ``conv_stride``); (400, 320) without one."""
    kernels = _find(config, "conv_kernel")
    strides = _find(config, "conv_stride")
    if not kernels or not strides:
        return 400, 320
    field, step = 1, 1
    for k, s in zip(kernels, strides, strict=True):
        field += (k - 1) * step
        step *= s
    return field, step


class SpeechCTC(Task):
    """CTC speech recognition: one graph, audio (and its mask) -> logits per frame."""

    name = "automatic-speech-recognition-ctc"
    mapping = "MODEL_FOR_CTC_MAPPING_NAMES"
    rank = 40
    columns = ("distinct_shapes", "padded")
    status_intro = (
        "Every model type of the installed transformers' ``MODEL_FOR_CTC_MAPPING_NAMES``, "
        "built untrained from a tiny config with ``AutoModelForCTC``, exported with "
        "``torch.export`` (raw waveforms, or log-mel frames for the models that take "
        "them, with the mask their feature extractor returns; dynamic batch and audio "
        "length; CTC ``logits`` out) and converted to ONNX, then run on seven input sets "
        "of distinct shapes (six the export did not see: two zero-padded on the right as a "
        "feature extractor pads a batch, one at the upper bounds the export declares) and "
        "compared with eager PyTorch."
    )

    def build(self, config: Any, *, seed: int = 0) -> UntrainedModel:
        import copy

        import torch
        import transformers

        notes = []
        if getattr(config, "vocab_size", 0) is None:
            # The CTC head is sized by the vocabulary; configs of encoders also used
            # without a head (wav2vec2-bert, wav2vec2-conformer) leave it unset.
            config = copy.deepcopy(config)
            config.vocab_size = 32
            notes.append("vocab_size set to 32: the config has none and a CTC head needs one")
        torch.manual_seed(seed)
        config, fixed = task_config(config, self.name)
        model = transformers.AutoModelForCTC.from_config(config).to(torch.float32).eval()
        prepare_weights(model, config)
        layout = audio_layout(model, config)
        params = inspect.signature(model.forward).parameters
        if layout.mask is None and "attention_mask" in params:
            notes.append(
                f"no attention mask: feat_extract_norm={config.feat_extract_norm!r}, and "
                "Wav2Vec2FeatureExtractor returns none for such models; padded rows end "
                "with zeros the model sees"
            )
        generator = torch.Generator().manual_seed(seed)
        if layout.bins is None:
            field, step = _receptive_field(config)
            low, high, shapes = field + 4 * step, AUDIO_MAX, AUDIO_SHAPES
            time_name = "audio_length"
        else:
            low, high, shapes = FRAMES_MIN, FRAMES_MAX, FRAME_SHAPES
            time_name = "frames"
        shapes = [*shapes, (BATCH_MAX, high, ())]
        sets = [self._inputs(layout, b, n, p, generator) for b, n, p in shapes]
        for feeds in sets:
            check_audio_inputs(model, feeds)
        batch = torch.export.Dim("batch", min=1, max=BATCH_MAX)
        length = torch.export.Dim(time_name, min=low, max=high)
        dynamic_shapes = {layout.name: {0: batch, layout.time_dim: length}}
        if layout.mask is not None:
            dynamic_shapes[layout.mask] = {0: batch, 1: length}
        return UntrainedModel(
            model=model,
            config=config,
            inputs=sets[0],
            other_inputs=sets[1:],
            dynamic_shapes=dynamic_shapes,
            cache_argument=None,
            shapes=[(b, n) for b, n, _ in shapes],
            notes=[*fixed, *notes],
            task=self.name,
        )

    @staticmethod
    def _inputs(
        layout: AudioLayout, batch: int, length: int, padding: tuple[int, ...], generator: Any
    ) -> dict[str, Any]:
        """One batch: random audio (or features), row i zero-padded by ``padding[i]``."""
        import torch

        if layout.bins is not None:
            shape: tuple[int, ...] = (batch, length, layout.bins)
        elif layout.channel:
            shape = (batch, 1, length)
        else:
            shape = (batch, length)
        x = torch.randn(shape, generator=generator, dtype=torch.float32)
        mask = torch.ones((batch, length), dtype=torch.int64)
        for row, count in enumerate(padding):
            if count:
                mask[row, -count:] = 0
                if layout.bins is None:
                    x[row, ..., -count:] = 0
                else:
                    x[row, -count:, :] = 0
        feeds = {layout.name: x}
        if layout.mask is not None:
            feeds[layout.mask] = mask
        return feeds

    def label(self, m: UntrainedModel, feeds: dict[str, Any]) -> str:
        if "input_features" in feeds:
            batch, length = feeds["input_features"].shape[:2]
            size = f"frames={length}"
        else:
            x = feeds["input_values"]
            batch, length = x.shape[0], x.shape[-1]
            size = f"audio={length}"
        padded = any(
            bool((feeds[name] == 0).any())
            for name in ("attention_mask", "padding_mask")
            if name in feeds
        )
        if not padded and "input_features" not in feeds:
            # no mask: a padded row ends with exact zeros
            padded = bool((feeds["input_values"][..., -1] == 0).any())
        at_bounds = feeds is m.input_sets[-1] and batch == BATCH_MAX
        return (
            f"batch={batch} {size}"
            + (" padded" if padded else "")
            + (" at bounds" if at_bounds else "")
        )


register(SpeechCTC())
