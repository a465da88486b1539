"""Nemotron 3.5 Transcribe (nemo_speechlm): a diarization head whose input width must
match its audio encoder's; the speech recognition and diarization encoders run in chunks
counted with Python ranges over the frame count."""

from __future__ import annotations

import sys
from typing import Any

import torch
from transformers.utils import can_return_tuple

from ..patches import Patch
from ..patches.core import passthrough
from . import Family, register

TRANSCRIBE = "transformers.models.nemotron3_5_transcribe.modeling_nemotron3_5_transcribe"
DIARIZATION = "transformers.models.nemotron3_diarization.modeling_nemotron3_diarization"


def _context_windows(num_frames: Any, chunk: int, left: int, right: int, device: Any) -> Any:
    """The chunks of ``Nemotron3_5TranscribeAudioModel._get_chunks`` as index tensors.

    For ``num_frames`` encoder frames, with ``n = ceil(num_frames / chunk)`` chunks:
    ``frames`` (n, width), the encoder frame at each position of each chunk's context
    (clamped into the sequence), ``valid`` (n, width), the positions inside the context
    (the rest is right padding), and ``offsets`` (n,), where the chunk starts in its
    context. ``width`` is the longest context: ``left + chunk + right`` frames, or the
    whole sequence when it is shorter (one chunk, its context the whole sequence)."""
    count = (num_frames + chunk - 1) // chunk
    width = torch.sym_min(left + chunk + right, num_frames)
    starts = torch.arange(count, device=device) * chunk
    context_starts = (starts - left).clamp(min=0)
    context_stops = (starts + chunk + right).clamp(max=num_frames)
    frames = context_starts[:, None] + torch.arange(width, device=device)[None, :]
    valid = frames < context_stops[:, None]
    return frames.clamp(max=num_frames - 1), valid, starts - context_starts


def _transcribe_audio_forward(self, input_features, input_features_mask=None, **kwargs):
    """Nemotron3_5TranscribeAudioModel.forward with the speech recognition encoder run
    on every chunk's context at once, as one batch of right-padded windows."""
    mod = sys.modules[TRANSCRIBE]
    subsampling_factor = self.config.subsampling_factor
    if input_features.shape[1] % subsampling_factor != 0:
        # the original's error
        return passthrough(
            transcribe_audio_forward.original, self, input_features, input_features_mask, **kwargs
        )
    if input_features_mask is None:
        input_features_mask = torch.ones(
            input_features.shape[:2], dtype=torch.long, device=input_features.device
        )
    batch_size, _, num_mel_bins = input_features.shape
    num_frames = input_features.shape[1] // subsampling_factor
    asr_input = mod.normalize_per_feature(input_features, input_features_mask).to(
        self.asr_encoder.dtype
    )
    config = self.config.diarization_config
    chunk = config.chunk_length
    frames, valid, offsets = _context_windows(
        num_frames, chunk, config.chunk_left_context, config.chunk_right_context, asr_input.device
    )
    count, width = frames.shape
    # the spectrogram frames of each encoder frame of each context, and their validity
    steps = torch.arange(subsampling_factor, device=asr_input.device)
    spectrogram = (frames[..., None] * subsampling_factor + steps).reshape(count, -1)
    spectrogram_valid = valid[..., None].expand(count, width, subsampling_factor).reshape(count, -1)
    windows = asr_input[:, spectrogram]  # (batch, count, width * factor, bins)
    windows = windows.masked_fill(~spectrogram_valid[None, :, :, None], 0.0)
    # the encoder reads its mask as booleans; onnxruntime has no Where on them
    window_mask = input_features_mask[:, spectrogram].bool() & spectrogram_valid[None]
    states = self.asr_encoder(
        windows.reshape(batch_size * count, width * subsampling_factor, num_mel_bins),
        window_mask.reshape(batch_size * count, width * subsampling_factor),
    ).last_hidden_state
    # chunk k's frames sit at offsets[k] + j of its context, row k * width + offsets[k] + j
    # of the flattened batch; those past the sequence's end are dropped
    positions = (offsets[:, None] + torch.arange(chunk, device=states.device)[None, :]).clamp(
        max=width - 1
    )
    rows = torch.arange(count, device=states.device)[:, None] * width + positions
    # (slicing the index, not the states: a slice of the states is contiguous only at
    # one chunk's length, which torch.export would guard)
    rows = rows.reshape(-1)[:num_frames]
    hidden_states = states.reshape(batch_size, count * width, -1).index_select(1, rows)

    speaker_logits = self.diarization_model(
        input_features.to(self.diarization_model.dtype), attention_mask=input_features_mask
    ).logits
    speaker_probabilities = speaker_logits.sigmoid().unflatten(1, (num_frames, -1)).mean(2)
    speaker_probs = speaker_probabilities.to(hidden_states.dtype)
    speaker_activity = (speaker_probs > self.config.speaker_activity_threshold).to(
        hidden_states.dtype
    )
    speaker_states = self.speaker_embedding(self.speaker_norm(speaker_activity))
    last_hidden_state = self.asr_norm(hidden_states) + speaker_states
    return mod.Nemotron3_5TranscribeAudioModelOutput(
        last_hidden_state=last_hidden_state,
        asr_last_hidden_state=hidden_states,
        speaker_logits=speaker_logits,
    )


transcribe_audio_forward = can_return_tuple(_transcribe_audio_forward)


def _install_nemotron_asr_chunks(patcher: Any, model: Any) -> None:
    """Run Nemotron 3.5 Transcribe's speech recognition encoder on all its chunks at once.

    Fixes: the ExportedProgram of the audio encoder, ``Guard failed:
    input_features.size()[1] // 8 == 21``: Nemotron3_5TranscribeAudioModel.forward
    (transformers/models/nemotron3_5_transcribe/modeling_nemotron3_5_transcribe.py:584-594)
    runs the encoder once per chunk of ``_get_chunks`` (same file, 614-630), a list built
    with ``range(0, num_frames, chunk_length)``; ``range`` makes the symbolic frame count a
    Python int, so torch.export fixes it to the traced clip's (21 encoder frames).

    The replacement computes the same chunks as index tensors (``ceil(frames /
    chunk_length)`` of them, each with its ``chunk_left_context`` and
    ``chunk_right_context`` frames, clipped to the sequence), gathers each chunk's context
    from the normalized spectrogram as one row of a batch, right-padded to the longest
    context with masked frames, runs the encoder once on that batch and gathers every
    chunk's frames back in order. The encoder stacks frames without looking at their
    neighbours, restarts its positions at 0 on every row as the original does per chunk,
    and masks the padding out of attention, so a context gives the same frames as when it
    runs alone. One chunk (up to ``chunk_length`` frames, every clip checked here) is the
    whole sequence, unpadded: the same computation, bitwise; several differ in the
    padding of the shorter contexts only (attention over more keys, masked), float32
    rounding: at most 2.2e-6 on the tiny model's outputs (of order 1) with chunks shrunk
    to 3 to 7 frames (tests/test_patches_needed.py).
    The diarization model, the speaker embeddings and the output are the original's.

    Remove when: the audio model runs its chunks without a Python loop over the frame count.
    """
    patcher.replace_in(
        TRANSCRIBE, "Nemotron3_5TranscribeAudioModel", "forward", transcribe_audio_forward
    )


def _diarization_forward(
    self,
    input_features,
    attention_mask=None,
    speaker_cache=None,
    num_lookahead_frames=None,
    num_lookback_frames=None,
    **kwargs,
):
    """Nemotron3DiarizationForAudioFrameClassification.forward, offline mode, for an
    input of one chunk: the encoder and classifier once, on the whole input."""
    given = {
        "attention_mask": attention_mask,
        "speaker_cache": speaker_cache,
        "num_lookahead_frames": num_lookahead_frames,
        "num_lookback_frames": num_lookback_frames,
        **kwargs,
    }
    original = diarization_forward.original
    if (
        speaker_cache is not None
        or num_lookahead_frames is not None
        or num_lookback_frames is not None
    ):
        return passthrough(original, self, input_features, **given)
    factor = self.config.audio_config.subsampling_factor
    num_frames = input_features.shape[1]
    num_embeds = (num_frames + factor - 1) // factor
    if not torch.compiler.is_exporting() and not 1 <= num_embeds <= self.config.chunk_length:
        return passthrough(original, self, input_features, **given)
    # a longer input is several chunks, each attending to a speaker cache compressed from
    # the previous chunks' logits: the ExportedProgram refuses it
    torch._check(num_embeds <= self.config.chunk_length)
    mod = sys.modules[DIARIZATION]
    inputs_embeds = self.model.audio_tower.embedder(input_features)
    embed_mask = None
    if attention_mask is not None:
        embed_mask = attention_mask[:, ::factor].bool()
    position_ids = torch.arange(inputs_embeds.shape[1], device=inputs_embeds.device)[None, :]
    outputs = self.model(
        inputs_embeds=inputs_embeds, attention_mask=embed_mask, position_ids=position_ids, **kwargs
    )
    logits = self.classifier(outputs.last_hidden_state)[:, :num_frames]
    return mod.Nemotron3DiarizationOutput(
        logits=logits,
        hidden_states=outputs.hidden_states or None,
        attentions=outputs.attentions or None,
        speaker_cache=None,
    )


diarization_forward = can_return_tuple(_diarization_forward)


def _install_nemotron_diarization_one_chunk(patcher: Any, model: Any) -> None:
    """Run the diarization model of one chunk without its loop over the chunks.

    Fixes: the ExportedProgram of the audio encoder, ``Guard failed:
    (input_features.size()[1] + -1 * input_features.size()[1] % 8) // 8 == 21``:
    Nemotron3DiarizationForAudioFrameClassification.forward
    (transformers/models/nemotron3_diarization/modeling_nemotron3_diarization.py:795,
    ``for start_idx in range(num_lookback_frames, end_chunk_idx, chunk_length)``) makes
    the symbolic number of encoder frames (the spectrogram frames stacked by 8, padded
    to a multiple) a Python int, so torch.export fixes it to the traced clip's (21).

    The loop cannot become one batch: every chunk after the first attends to the speaker
    cache and FIFO of the chunks before it (Nemotron3DiarizationSpeakerCache.update,
    same file, 138-204), which offline sizes (FIFO of ``fifo_length`` = 40 frames, cache
    of ``speaker_cache_length`` = 188) compress with a top-k over the previous chunks'
    speaker probabilities as soon as the first chunk is pushed: a recurrence on the
    values. The first chunk attends to an empty cache. Given at most ``chunk_length``
    encoder frames (500, 40 s of audio; every clip checked here), the original runs one
    chunk: the encoder on the whole input (positions from 0, the frame mask), the
    classifier, logits cut to the input's frames; the speaker cache it then updates is
    dropped in offline mode. The replacement computes exactly that, and declares the
    bound with ``torch._check``: the frame count stays symbolic up to 500 encoder frames
    (4000 spectrogram frames) and the ExportedProgram refuses longer inputs (``Guard
    failed: input_features.size()[1] <= 4000``); the ONNX graph, built under the same
    bound, fails on them in a Reshape. Eager runs the original on longer inputs and in
    streaming mode (a speaker cache or look-back/look-ahead given).

    Remove when: the diarization model's offline forward runs its chunks without a Python
    loop over the frame count.
    """
    patcher.replace_in(
        DIARIZATION,
        "Nemotron3DiarizationForAudioFrameClassification",
        "forward",
        diarization_forward,
    )


NEMOTRON_ASR_CHUNKS = Patch(
    name="nemotron_asr_chunks",
    fixes="Guard failed: input_features.size()[1] // 8 == 21",
    remove_when="the audio model runs its chunks without a Python loop over the frame count",
    install=_install_nemotron_asr_chunks,
    model_types=("nemo_speechlm",),
)

NEMOTRON_DIARIZATION_ONE_CHUNK = Patch(
    name="nemotron_diarization_one_chunk",
    fixes="Guard failed: (input_features.size()[1] + -1 * input_features.size()[1] % 8) // 8 == 21",
    remove_when=(
        "the diarization model's offline forward runs its chunks without a Python loop "
        "over the frame count"
    ),
    install=_install_nemotron_diarization_one_chunk,
    model_types=("nemo_speechlm",),
)

register(
    Family(
        name="nemotron3_5_transcribe",
        model_types=("nemo_speechlm",),
        patches=(NEMOTRON_ASR_CHUNKS, NEMOTRON_DIARIZATION_ONE_CHUNK),
        config_fixes={
            "nemo_speechlm": (
                {
                    "audio_config.diarization_config.head_config.audio_hidden_size": 64,
                    "word_timestamp_config.blank_token_id": 1023,
                },
                "Nemotron3DiarizationConfig validates head_config.audio_hidden_size == "
                "audio_config.hidden_size; the generic rules shrink the diarization "
                "encoder to 64 wide but leave the head's audio_hidden_size (not a name "
                "they shrink) at 512: 'head_config.audio_hidden_size (512) must match "
                "audio_config.hidden_size (64)'",
            ),
        },
        input_layouts={
            "nemo_speechlm": (
                {"frames_multiple_of": 8},
                "Nemotron3_5TranscribeAudioModel.forward "
                "(transformers/models/nemotron3_5_transcribe/"
                "modeling_nemotron3_5_transcribe.py:574-580) raises 'The number of "
                "spectrogram frames (161) must be a multiple of `subsampling_factor` (8)': "
                "its processor, not its feature extractor, pads the features and their mask "
                "on the right to a multiple of 8 frames "
                "(processing_nemotron3_5_transcribe.py:314-315), as the task does",
            ),
        },
    )
)
