"""Granite Speech: an audio LM whose feature extractor needs torchaudio, and whose
frame mask counts the projector's outputs, not the features' frames."""

from __future__ import annotations

from typing import Any

from ..patches import Patch
from . import Family, register

MODULE = "transformers.models.granite_speech.modeling_granite_speech"
#: Granite Speech Plus's modeling module, which repeats the conformer attention
PLUS_MODULE = "transformers.models.granite_speech_plus.modeling_granite_speech_plus"


def _extractor_class() -> type:
    """GraniteSpeechFeatureExtractor with its log-mel spectrogram computed by torch.

    The feature extractor transformers maps to the model type builds a
    ``torchaudio.transforms.MelSpectrogram`` and checks for torchaudio on every call; no
    torchaudio wheel installs beside torch 2.13.0. The spectrogram it asks torchaudio for
    is the power of a centred, reflect-padded short-time Fourier transform under a
    periodic Hann window of ``win_length`` samples (centred in ``n_fft``), through a
    triangular HTK mel filter bank from 0 Hz to half the sampling rate, unnormalized:
    torchaudio's defaults. That is computed here with ``torch.stft`` and transformers'
    own ``mel_filter_bank``; what follows (log, the floor 8 below each clip's peak, the
    scaling, the stacking of frame pairs) and the count of projected frames per clip are
    the extractor's, as documented in
    transformers/models/granite_speech/feature_extraction_granite_speech.py."""
    import torch
    from transformers import GraniteSpeechFeatureExtractor
    from transformers.audio_utils import mel_filter_bank
    from transformers.feature_extraction_sequence_utils import SequenceFeatureExtractor
    from transformers.feature_extraction_utils import BatchFeature

    class TorchGraniteSpeechFeatureExtractor(GraniteSpeechFeatureExtractor):
        def __init__(  # the parent's, without the torchaudio module
            self,
            sampling_rate: int = 16000,
            n_fft: int = 512,
            win_length: int = 400,
            hop_length: int = 160,
            n_mels: int = 80,
            projector_window_size: int = 15,
            projector_downsample_rate: int = 5,
            padding_value: float = 0.0,
            **kwargs: Any,
        ) -> None:
            kwargs.pop("feature_size", None)
            SequenceFeatureExtractor.__init__(
                self,
                feature_size=n_mels,
                sampling_rate=sampling_rate,
                padding_value=padding_value,
                **kwargs,
            )
            self.melspec_kwargs = {
                "sample_rate": sampling_rate,
                "n_fft": n_fft,
                "win_length": win_length,
                "hop_length": hop_length,
                "n_mels": n_mels,
            }
            self.projector_window_size = projector_window_size
            self.projector_downsample_rate = projector_downsample_rate

        def power_mel(self, audio: Any) -> Any:
            """(batch, samples) -> (batch, n_mels, frames), frames = samples // hop + 1."""
            k = self.melspec_kwargs
            spectrum = torch.stft(
                audio,
                k["n_fft"],
                hop_length=k["hop_length"],
                win_length=k["win_length"],
                window=torch.hann_window(k["win_length"]),
                center=True,
                pad_mode="reflect",
                return_complex=True,
            )
            bank = mel_filter_bank(
                num_frequency_bins=k["n_fft"] // 2 + 1,
                num_mel_filters=k["n_mels"],
                min_frequency=0.0,
                max_frequency=k["sample_rate"] / 2,
                sampling_rate=k["sample_rate"],
                norm=None,
                mel_scale="htk",
            )
            return torch.einsum(
                "bft,fm->bmt", spectrum.abs().pow(2), torch.from_numpy(bank).float()
            )

        def __call__(self, audios: Any, **kwargs: Any) -> Any:
            """``input_features`` (batch, frames // 2, 2 * n_mels), ``audio_embed_sizes``
            (projected frames per clip) and ``input_features_mask`` (batch, most projected
            frames): the mask of the projector's outputs that are audio, not of the
            features' frames. ``sampling_rate``, ``return_tensors`` and
            ``return_attention_mask`` are accepted as the task passes them; the features
            are torch tensors and the mask is always returned, as the extractor does."""
            rate = kwargs.get("sampling_rate", self.sampling_rate)
            if rate != self.sampling_rate:
                raise ValueError(
                    f"the audio is sampled at {rate} Hz and the extractor reads "
                    f"{self.sampling_rate} Hz: resample it first"
                )
            audio, lengths = self._get_audios_and_audio_lengths(audios)
            with torch.no_grad():
                logmel = self.power_mel(audio.float()).transpose(-1, -2)
                logmel = logmel.clamp(min=1e-10).log10()
                floor = logmel.amax(dim=(-2, -1), keepdim=True) - 8.0
                logmel = (torch.maximum(logmel, floor) / 4) + 1
                pairs = logmel.shape[1] // 2  # an odd last frame is dropped
                # contiguous: the extractor's own are a view that skips the dropped frame,
                # and a program exported on such a view guards on its strides
                features = logmel[:, : 2 * pairs].reshape(audio.shape[0], pairs, -1)
                features = features.contiguous()
            sizes = self._get_num_audio_features(lengths)
            mask = torch.arange(max(sizes))[None, :] < torch.tensor(sizes)[:, None]
            return BatchFeature(
                data={
                    "input_features": features,
                    "audio_embed_sizes": sizes,
                    "input_features_mask": mask,
                }
            )

    return TorchGraniteSpeechFeatureExtractor


def granite_speech_extractor(config: Any) -> Any:
    """The torch port of the model type's feature extractor (:func:`_extractor_class`),
    with the projector's window and downsampling rate of ``config``, so that its count
    of projected frames per clip is the model's."""
    return _extractor_class()(
        n_mels=config.encoder_config.input_dim // 2,
        projector_window_size=config.window_size,
        projector_downsample_rate=config.downsample_rate,
    )


def granite_speech_features(
    self: Any, input_features: Any, input_features_mask: Any, **kwargs: Any
) -> Any:
    """What GraniteSpeechModel.forward merges: ``get_audio_features``' projected frames of
    every clip, then those its ``input_features_mask`` marks, in order
    (``get_merged_audio_embeddings``, modeling_granite_speech.py:394-425, indexes the
    projector's outputs by that mask before its ``masked_scatter``)."""
    base = getattr(self, "model", self)
    out = type(base).get_audio_features(base, input_features, return_dict=True)
    out.pooler_output = out.pooler_output[input_features_mask.bool()]
    return out


_LAYOUT = (
    {
        "feature_extractor": granite_speech_extractor,
        "audio_features": granite_speech_features,
        "frames_axis": 1,
    },
    "GraniteSpeechFeatureExtractor computes its log-mel spectrogram with torchaudio, which "
    "does not install beside torch 2.13.0: exportcheck computes the same spectrogram with "
    "torch (families/granite_speech.py). Its input_features_mask marks the projector's "
    "outputs that are audio (windows of projector_window_size frames, "
    "window_size // downsample_rate queries each), not the features' frames, and "
    "get_audio_features takes no mask: the forward indexes the projected frames by it "
    "before merging them, and so does the audio encoder graph (granite_speech_features)",
)


def conformer_attention_forward(self: Any, hidden_states: Any, attention_dists: Any) -> Any:
    """GraniteSpeechConformerAttention.forward with the frames always padded to whole
    blocks (by two to ``context_size + 1`` zero frames, a whole masked block when they
    already fill theirs) and the padded keys always masked."""
    import torch

    hidden_states = self.pre_norm(hidden_states)
    batch, frames, width = hidden_states.shape
    block = self.context_size
    # at least two filler frames: torch.export takes sizes of 0 and 1 as special
    blocks = (frames + 1) // block + 1
    filler = hidden_states.new_zeros(batch, blocks * block - frames, width)
    padded = torch.cat([hidden_states, filler], dim=1)

    def split(states: Any) -> Any:
        # (batch, blocks * block, heads * dim) -> (batch * blocks, heads, block, dim)
        states = states.unflatten(1, (blocks, block)).flatten(0, 1)
        return states.unflatten(-1, (self.num_heads, -1)).transpose(1, 2)

    query = split(self.to_q(padded))
    key, value = (split(t) for t in self.to_kv(padded).chunk(2, dim=-1))
    distances = self.rel_pos_emb(attention_dists)  # (block, block, dim)
    bias = torch.einsum("nhid,ijd->nhij", query, distances) * self.scale
    # the model masks the filler's keys (and queries, whose rows are cut off) in the
    # last block; here the filler's keys of every block, none of them real
    kept = (torch.arange(blocks * block, device=padded.device) < frames).view(blocks, block)
    kept = kept.repeat(batch, 1)[:, None, None, :]
    bias = bias.masked_fill(~kept, -torch.finfo(bias.dtype).max)
    with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.MATH):
        out = torch.nn.functional.scaled_dot_product_attention(
            query, key, value, attn_mask=bias, scale=self.scale
        )
    out = out.transpose(1, 2).reshape(batch, blocks * block, -1)
    return self.dropout(self.to_out(out[:, :frames]))


def _install_conformer_attention(patcher: Any, model: Any) -> None:
    """Pad to whole attention blocks unconditionally, and mask the padded keys always.

    Fixes: the audio encoder of granite_speech exported with a dynamic number of frames
    (blocks of 8, the config fix) fails other lengths with ``Guard failed: ...
    input_features.size()[1] % 8``: GraniteSpeechConformerAttention.forward
    (transformers/models/granite_speech/modeling_granite_speech.py:170, and
    GraniteSpeechPlusConformerAttention, its copy) pads the frames to
    whole blocks only ``if remainder > 0`` and masks the last block in place through a
    strided slice of the batch. Here two to ``block + 1`` zero frames are always appended
    (a whole extra block when the frames fill theirs: blocks attend independently and
    its rows are cut off) and the keys of the filler are masked in every block: the same
    numbers for the real frames.

    Remove when: transformers pads without a branch on the length, or torch.export proves
    the guard.
    """
    patcher.replace_in(
        MODULE, "GraniteSpeechConformerAttention", "forward", conformer_attention_forward
    )
    patcher.replace_in(
        PLUS_MODULE, "GraniteSpeechPlusConformerAttention", "forward", conformer_attention_forward
    )


CONFORMER_ATTENTION = Patch(
    name="granite_speech_conformer_attention",
    fixes="Guard failed: ... input_features.size()[1] % 8",
    remove_when="transformers pads Granite Speech's conformer attention blocks without a "
    "branch on the length, or torch.export proves the guard",
    install=_install_conformer_attention,
    model_types=("granite_speech", "granite_speech_plus"),
)

_FIXES = (
    {
        "projector_config.encoder_hidden_size": 64,
        "encoder_config.context_size": 8,
        "has_lora_adapter": False,
    },
    "the projector's Q-Former cross-attends to the encoder's states: its "
    "encoder_hidden_size is the encoder's hidden_dim, which the tiny rules shrink to 64 "
    "without knowing the two are one width; attention blocks of 8 frames instead of 200, "
    "so that every input set (15 to 100 stacked frames) spans two blocks or more: traced "
    "on one block, torch.export specializes the number of blocks; no LoRA adapter, which "
    "only a checkpoint ships (without peft the model warns that it cannot enable it)",
)

register(
    Family(
        name="granite_speech",
        model_types=("granite_speech", "granite_speech_plus"),
        input_layouts={"granite_speech": _LAYOUT, "granite_speech_plus": _LAYOUT},
        config_fixes={"granite_speech": _FIXES, "granite_speech_plus": _FIXES},
        patches=(CONFORMER_ATTENTION,),
    )
)
