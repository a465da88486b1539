"""Pop2Piano: piano MIDI tokens from a spectrogram conditioned on a composer.

Pop2PianoForConditionalGeneration is a T5 whose encoder takes embeddings: its forward
feeds ``input_features`` (log-mel frames already ``d_model`` wide) to the encoder as
``inputs_embeds`` (transformers/models/pop2piano/modeling_pop2piano.py:896-897). Its
``generate`` first conditions them on a composer chosen by name
(``get_mel_conditioner_outputs``, :805-852): ``generation_config.composer_to_feature_token``
maps the name to a feature token, whose embedding (row ``token - min(tokens)`` of
``mel_conditioner``) is put before the frames of every row; every row whose first frame
is masked (the zero line the feature extractor puts after each song of a batch) is set
to zeros, and the mask gets its first column again in front. ``generate`` hands that
mask on as ``attention_mask`` (:1039-1045), which the forward gives the encoder and the
decoder's cross-attention (:904, :928).

Here the encoder graph does the same: it takes the features, their mask and a composer
per row (``composer_ids``, the feature token ``composer_to_feature_token`` gives), and
returns the states (one frame longer than the features) with their mask, which the
decoder steps take as the model's ``attention_mask``. The generation stage checks the
graphs against ``generate(composer=GENERATION_COMPOSER)``.
"""

from __future__ import annotations

from typing import Any

from . import Family, register

#: composers of the tiny model: generate requires as many names in the generation
#: config's map as the config's ``composer_vocab_size`` (modeling_pop2piano.py:1023-1028)
COMPOSERS = 4
#: the feature token of the first composer; the others follow. Any start works, as the
#: model subtracts the smallest (``embedding_offset``, :838); one above zero makes the
#: graph's subtraction matter
FIRST_FEATURE_TOKEN = 100
#: the composer the generation stage asks ``generate`` for: not its default
#: (``composer1``, :962), so that passing it is what decides
GENERATION_COMPOSER = "composer2"


def composer_map(config: Any) -> dict[str, Any]:
    """The generation config's attributes the untrained model lacks:
    ``composer_to_feature_token``, one name per composer of ``config``
    (``composer1``... as generate names its default, :962), feature tokens from
    :data:`FIRST_FEATURE_TOKEN` on. Only a hub checkpoint's generation_config.json holds
    the map, and ``generate`` refuses to run without it (:1016-1021)."""
    tokens = {
        f"composer{i + 1}": FIRST_FEATURE_TOKEN + i for i in range(config.composer_vocab_size)
    }
    return {"composer_to_feature_token": tokens}


def _extractor_class() -> type:
    """A port of Pop2PianoFeatureExtractor's log-mel spectrogram of one segment.

    The extractor transformers maps to the model type needs essentia (beat tracking)
    and librosa (resampling) on every call, and neither installs here. It cuts a song
    at its beats into segments of ``num_bars`` bars, each one row of the model's batch
    (``preprocess_mel``, feature_extraction_pop2piano.py:186-232), then computes each
    segment's power spectrogram under a periodic Hann window of ``window_size`` samples
    every ``hop_length`` samples, through an HTK mel filter bank of ``feature_size``
    filters from ``min_frequency`` to half the sampling rate, unnormalized, and takes
    its log floored at 1e-6 (``mel_spectrogram`` and ``__call__``, :115-138 and
    :420-428); rows of distinct lengths are padded at the end with ``padding_value``
    and masked (``_pad``, :234-275). The port takes each clip as one segment already cut
    (the beats are what it cannot find) and computes the rest with the same transformers
    functions and settings. It leaves out the zero line the extractor adds after each
    song of a batch: a batch here is segments of distinct songs, one each, and a
    separator row would change its size; the encoder graph still zeroes such rows as
    ``generate`` does."""
    import numpy as np
    from transformers.audio_utils import mel_filter_bank, spectrogram
    from transformers.feature_extraction_sequence_utils import SequenceFeatureExtractor
    from transformers.feature_extraction_utils import BatchFeature

    class Pop2PianoSegmentFeatureExtractor(SequenceFeatureExtractor):
        model_input_names = ("input_features", "attention_mask")

        def __init__(
            self,
            sampling_rate: int = 22050,
            padding_value: int = 0,
            window_size: int = 4096,
            hop_length: int = 1024,
            min_frequency: float = 10.0,
            feature_size: int = 512,
            **kwargs: Any,
        ) -> None:  # Pop2PianoFeatureExtractor's defaults
            super().__init__(
                feature_size=feature_size,
                sampling_rate=sampling_rate,
                padding_value=padding_value,
                **kwargs,
            )
            self.window_size = window_size
            self.hop_length = hop_length
            self.min_frequency = min_frequency
            self.mel_filters = mel_filter_bank(
                num_frequency_bins=window_size // 2 + 1,
                num_mel_filters=feature_size,
                min_frequency=min_frequency,
                max_frequency=float(sampling_rate // 2),
                sampling_rate=sampling_rate,
                norm=None,
                mel_scale="htk",
            )

        def log_mel(self, segment: Any) -> Any:
            """(samples,) -> (frames, feature_size), frames = samples // hop + 1."""
            window = np.hanning(self.window_size + 1)[:-1]
            power = spectrogram(
                waveform=np.asarray(segment, dtype=np.float32),
                window=window,
                frame_length=self.window_size,
                hop_length=self.hop_length,
                power=2.0,
                mel_filters=self.mel_filters,
            )
            return np.log(np.clip(power, a_min=1e-6, a_max=None)).T

        def __call__(  # type: ignore[override]
            self,
            audio: Any,
            sampling_rate: int | None = None,
            return_attention_mask: bool = True,
            return_tensors: Any = None,
            padding: str = "longest",
            **kwargs: Any,
        ) -> Any:
            """``input_features`` (segments, most frames, feature_size), each row one
            clip's log-mel frames then ``padding_value``, and its ``attention_mask`` (1 on
            the frames of the clip). ``padding`` is accepted as the task passes it: the
            rows are always padded to the longest, as the extractor pads them."""
            rate = self.sampling_rate if sampling_rate is None else sampling_rate
            if rate != self.sampling_rate:
                raise ValueError(
                    f"the audio is sampled at {rate} Hz and the extractor reads "
                    f"{self.sampling_rate} Hz: resample it first"
                )
            if padding not in ("longest", True):
                raise ValueError(f"padding={padding!r}: the extractor pads to the longest row")
            logs = [self.log_mel(clip) for clip in audio]
            frames = max(log.shape[0] for log in logs)
            features = np.full(
                (len(logs), frames, self.feature_size), self.padding_value, dtype=np.float32
            )
            mask = np.zeros((len(logs), frames), dtype=np.int64)
            for row, log in enumerate(logs):
                features[row, : log.shape[0]] = log
                mask[row, : log.shape[0]] = 1
            data = {"input_features": features}
            if return_attention_mask:
                data["attention_mask"] = mask
            return BatchFeature(data, tensor_type=return_tensors)

    return Pop2PianoSegmentFeatureExtractor


def pop2piano_extractor(config: Any) -> Any:
    """The port of the model type's feature extractor (:func:`_extractor_class`) with
    ``d_model`` mel bins: the model takes the frames as its encoder's embeddings."""
    return _extractor_class()(feature_size=config.d_model)


def _encoder_class() -> type:
    """The wrapper of the encoder graph (built on first use: torch is imported lazily)."""
    import torch

    class Pop2PianoEncoder(torch.nn.Module):
        """Features, their mask and a composer per row -> the encoder states and their
        mask, conditioned as ``get_mel_conditioner_outputs`` conditions them
        (modeling_pop2piano.py:829-852) with the model's own ``mel_conditioner``, the
        composer given per row as the feature token ``composer_to_feature_token`` maps
        its name to (``generate`` repeats one for every row, :834-836). It is built as the
        task builds its encoder wrappers; it always returns the states' mask."""

        def __init__(
            self, model: Any, with_mask: bool = True, states: str = "last_hidden_state"
        ) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_features: Any, attention_mask: Any, composer_ids: Any) -> Any:
            if input_features.dim() != 3:
                raise ValueError(
                    "input_features must have rank 3 (segments, frames, d_model log-mel "
                    f"bins); got shape {tuple(input_features.shape)}"
                )
            model = self.model
            tokens = model.generation_config.composer_to_feature_token
            embeds = model.mel_conditioner(
                feature=input_features,
                index_value=composer_ids,
                embedding_offset=min(tokens.values()),
            )
            # rows whose first frame is masked (the extractor's zero line between songs)
            # are zeros, the composer's embedding too, as generate sets them
            kept = attention_mask[:, :1].bool()
            embeds = embeds.masked_fill(~kept[:, :, None], 0.0)
            mask = torch.cat([attention_mask[:, :1], attention_mask], 1)
            out = model.get_encoder()(inputs_embeds=embeds, attention_mask=mask)
            return {"last_hidden_state": out.last_hidden_state, "attention_mask": mask}

    return Pop2PianoEncoder


def composer_inputs(model: Any, batch: int, generator: Any) -> dict[str, Any]:
    """``composer_ids`` of a batch: each row a composer of the model's map drawn with
    ``generator``, rows of one batch distinct where they can be, so that a graph that
    took one row's composer for all would be seen."""
    import torch

    tokens = sorted(model.generation_config.composer_to_feature_token.values())
    order = torch.randperm(len(tokens), generator=generator)
    return {
        "composer_ids": torch.tensor([tokens[int(order[i % len(tokens)])] for i in range(batch)])
    }


def generation_feeds(model: Any, feeds: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The generation stage's graph inputs, every row conditioned on
    :data:`GENERATION_COMPOSER`, and the arguments of ``generate`` on the same features:
    the features, their mask and the composer's name."""
    import torch

    token = model.generation_config.composer_to_feature_token[GENERATION_COMPOSER]
    batch = feeds["input_features"].shape[0]
    graphs = {**feeds, "composer_ids": torch.full((batch,), token, dtype=torch.int64)}
    arguments = {
        "input_features": feeds["input_features"],
        "attention_mask": feeds["attention_mask"],
        "composer": GENERATION_COMPOSER,
    }
    return graphs, arguments


_LAYOUT = (
    {
        "feature_extractor": pop2piano_extractor,
        "encoder": _encoder_class,
        "conditioning": composer_inputs,
        "generation": generation_feeds,
        "states_mask_argument": "attention_mask",
        "generation_config": composer_map,
    },
    "Pop2PianoFeatureExtractor needs essentia and librosa, which do not install: each "
    "clip is taken as one segment cut at the beats and its log-mel frames (d_model "
    "bins, the extractor's window, hop and filter bank) computed as the extractor "
    "computes them (families/pop2piano.py). The encoder takes the frames as embeddings "
    "after generate puts a composer's embedding before them "
    "(get_mel_conditioner_outputs, modeling_pop2piano.py:805-852): the encoder graph "
    "takes input_features, attention_mask and composer_ids (the feature token of a "
    "composer per row, drawn from the map set on the untrained model's generation "
    f"config: composer1..composer{COMPOSERS} -> {FIRST_FEATURE_TOKEN}.."
    f"{FIRST_FEATURE_TOKEN + COMPOSERS - 1}) and returns the states, one frame longer, "
    "with their mask, which the decoder steps take as the model's attention_mask; "
    f"generation compares the graphs with generate(composer={GENERATION_COMPOSER!r})",
)

register(
    Family(
        name="pop2piano",
        model_types=("pop2piano",),
        config_fixes={
            "pop2piano": (
                {"composer_vocab_size": COMPOSERS},
                "a few composers: generate requires one name per composer in the "
                "generation config's composer_to_feature_token, which exportcheck sets "
                "on the untrained model (families/pop2piano.py)",
            ),
        },
        input_layouts={"pop2piano": _LAYOUT},
    )
)
