"""Music Flamingo: AudioFlamingo 3's audio tower with rotary time embeddings whose time
stamps the forward reads from the runs of audio tokens in the prompt."""

from __future__ import annotations

from typing import Any

from . import Family, register

MODULE = "transformers.models.musicflamingo.modeling_musicflamingo"


def musicflamingo_extractor(config: Any) -> Any:
    """The feature extractor transformers maps to audioflamingo3 (WhisperFeatureExtractor),
    with the audio tower's mel bins: MusicFlamingoProcessor subclasses
    AudioFlamingo3Processor and cuts the audio into its extractor's chunks, the audio tower
    is AudioFlamingo 3's encoder (``audioflamingo3_encoder``), and transformers maps no
    feature extractor to musicflamingo itself."""
    import transformers
    from transformers.models.auto.feature_extraction_auto import (
        FEATURE_EXTRACTOR_MAPPING_NAMES,
    )

    cls = getattr(transformers, FEATURE_EXTRACTOR_MAPPING_NAMES["audioflamingo3"])
    return cls(feature_size=config.audio_config.num_mel_bins)


def _post_lengths(base: Any, mask: Any) -> Any:
    """The projected frames of each window of audio: the tower's own output lengths."""
    import torch

    return base.audio_tower._get_feat_extract_output_lengths(mask.sum(-1).to(torch.long))[1]


def musicflamingo_timestamps(model: Any, mask: Any, windows: Any = None) -> Any:
    """The time stamps ``(windows, projected frames)`` MusicFlamingoModel.get_audio_features
    computes from ``input_ids`` for windows of audio with frame mask ``mask``: the
    modeling code's own ``_build_audio_timestamps`` on a prompt holding one run of audio
    tokens per clip, as long as its windows' projected frames. ``windows``: how many
    consecutive rows each clip spans (the processor cuts a clip longer than its chunk into
    several); by default each row is a clip of its own."""
    import torch

    base = getattr(model, "model", model)
    lengths = _post_lengths(base, mask)
    padded = int(_post_lengths(base, torch.ones_like(mask[:1]))[0])
    counts = [1] * mask.shape[0] if windows is None else list(windows)
    if sum(counts) != mask.shape[0]:
        raise ValueError(f"clips of {counts} windows do not cover the {mask.shape[0]} rows")
    token = int(model.config.audio_token_id)
    other = 0 if token != 0 else 1
    ids, row = [], 0
    for count in counts:
        ids += [other] + [token] * int(lengths[row : row + count].sum())
        row += count
    prompt = torch.tensor([[*ids, other]])
    return base._build_audio_timestamps(prompt, lengths, padded)


def musicflamingo_features(
    self: Any, input_features: Any, input_features_mask: Any, audio_timestamps: Any, **kwargs: Any
) -> Any:
    """MusicFlamingoModel.get_audio_features (modeling_musicflamingo.py:220-250) with the
    time stamps given instead of computed from ``input_ids``: the audio tower, the rotary
    time embedding of each frame, the projector, then the frames within each window's
    output length, in order."""
    import sys

    import torch

    base = getattr(self, "model", self)
    out = base.audio_tower(
        input_features, input_features_mask=input_features_mask, return_dict=True
    )
    states = out.last_hidden_state
    cos, sin = base.pos_emb(audio_timestamps.to(states.device), seq_len=states.shape[-2])
    states = sys.modules[MODULE].apply_rotary_time_emb(states, cos, sin)
    embeds = base.multi_modal_projector(states)
    lengths = _post_lengths(base, input_features_mask)
    kept = torch.arange(embeds.shape[1], device=lengths.device)[None, :] < lengths[:, None]
    out.pooler_output = embeds[kept.to(embeds.device)]
    return out


register(
    Family(
        name="musicflamingo",
        model_types=("musicflamingo",),
        input_layouts={
            "musicflamingo": (
                {
                    "feature_extractor": musicflamingo_extractor,
                    "audio_features": musicflamingo_features,
                    "audio_timestamps": musicflamingo_timestamps,
                },
                "transformers maps no feature extractor to musicflamingo: its processor "
                "subclasses AudioFlamingo3Processor and its tower is AudioFlamingo 3's "
                "encoder, so the inputs come from the extractor mapped to audioflamingo3. "
                "get_audio_features takes input_ids besides the features: from the runs of "
                "audio tokens it computes each projected frame's time stamp (its window "
                "within its clip and its time within the window) for a rotary time "
                "embedding. The time stamps are computed on the processor side by the "
                "modeling code's _build_audio_timestamps, and the graph takes them",
            ),
        },
    )
)
