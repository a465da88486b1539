"""Qwen2-Audio: an audio LM whose forward runs its audio tower inline, with no
get_audio_features; the family gives the function the audio-LM task drives."""

from __future__ import annotations

from typing import Any

from . import Family, register


def qwen2_audio_features(
    self: Any, input_features: Any, feature_attention_mask: Any, **kwargs: Any
) -> Any:
    """What Qwen2AudioModel.forward computes from the log-mel features before it merges
    them (transformers/models/qwen2_audio/modeling_qwen2_audio.py:648-676): the frame
    lengths of the mask's valid mel frames, the encoder run with those frames unmasked,
    the projector, then the valid frames of every row in order, as the
    ``masked_scatter`` over the expanded audio tokens takes them (``pooler_output``,
    one row per audio token; ``last_hidden_state`` keeps the padded frames)."""
    import torch
    from transformers.masking_utils import create_bidirectional_mask
    from transformers.modeling_outputs import BaseModelOutputWithPooling

    base = getattr(self, "model", self)
    tower = base.audio_tower
    encoder_lengths, token_lengths = tower._get_feat_extract_output_lengths(
        feature_attention_mask.sum(-1)
    )
    batch, _, mel_frames = input_features.shape
    # the encoder's first convolution keeps the frames, its second halves them
    encoder_frames = (mel_frames - 2) // 2 + 1
    positions = torch.arange(encoder_frames, device=input_features.device)
    valid = (positions[None, :] < encoder_lengths[:, None]).to(torch.long)
    mask = create_bidirectional_mask(
        config=tower.config,
        inputs_embeds=torch.zeros((batch, encoder_frames, 1), dtype=input_features.dtype),
        attention_mask=valid,
    )
    states = tower(input_features, attention_mask=mask).last_hidden_state
    frames = base.multi_modal_projector(states)
    tokens = torch.arange(frames.shape[1], device=frames.device)
    keep = tokens[None, :] < token_lengths.to(frames.device)[:, None]
    return BaseModelOutputWithPooling(last_hidden_state=frames, pooler_output=frames[keep])


register(
    Family(
        name="qwen2_audio",
        model_types=("qwen2_audio",),
        input_layouts={
            "qwen2_audio": (
                {"audio_features": qwen2_audio_features},
                "Qwen2AudioForConditionalGeneration has no get_audio_features: its forward "
                "(transformers/models/qwen2_audio/modeling_qwen2_audio.py:644-700) runs the "
                "audio tower and projector inline; with one audio token per projected "
                "frame (consecutive tokens, as its processor expands them) it scatters the "
                "valid frames over them. exportcheck's audio encoder graph computes those "
                "frames the same way (qwen2_audio_features)",
            ),
        },
    )
)
