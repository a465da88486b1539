"""SEW and SEW-D: an encoder that pools the frames by two and upsamples them back."""

from __future__ import annotations

from typing import Any

from ..patches import Patch
from ..patches.core import module_of, passthrough
from . import Family, register

SEW = "transformers.models.sew.modeling_sew"
SEW_D = "transformers.models.sew_d.modeling_sew_d"


def _squeeze(encoder: Any, hidden_states: Any, attention_mask: Any) -> tuple[Any, Any]:
    """Frames pooled by ``squeeze_factor`` plus the positional convolution (its first
    ``pooled`` frames: it never yields fewer), and the mask pooled the same way."""
    import torch

    if attention_mask is not None:
        # padded frames count as zeros, the mask keeps a pooled frame with any real one
        hidden_states = hidden_states.masked_fill(~attention_mask.bool()[..., None], 0.0)
        factor = encoder.config.squeeze_factor
        pooled_mask = torch.nn.functional.max_pool1d(
            attention_mask.float()[:, None], kernel_size=factor, stride=factor
        )
        attention_mask = pooled_mask[:, 0].long()
    channels_first = hidden_states.transpose(1, 2)
    pooled = encoder.pool(channels_first)
    positions = encoder.pos_conv_embed(channels_first)[..., : pooled.shape[-1]]
    return (pooled + positions).transpose(1, 2), attention_mask


def _unsqueeze(encoder: Any, hidden_states: Any, frames: Any) -> Any:
    """Upsampled back and padded with zero frames to ``frames`` (none when even)."""
    import torch

    hidden_states = encoder.upsample(hidden_states)
    return torch.nn.functional.pad(hidden_states, (0, 0, 0, frames - hidden_states.shape[1]))


def sew_encoder_forward(self: Any, hidden_states: Any, attention_mask: Any = None, **kwargs: Any):
    """SEWEncoder.forward in eval mode without a branch on the parity of the frames."""
    if self.training:
        return passthrough(
            sew_encoder_forward.original, self, hidden_states, attention_mask, **kwargs
        )
    sew = module_of(SEW)
    frames = hidden_states.shape[1]
    hidden_states, attention_mask = _squeeze(self, hidden_states, attention_mask)
    attention_mask = sew.create_bidirectional_mask(
        config=self.config, inputs_embeds=hidden_states, attention_mask=attention_mask
    )
    hidden_states = self.dropout(self.layer_norm(hidden_states))
    for layer in self.layers:
        hidden_states = layer(hidden_states, attention_mask=attention_mask, **kwargs)
    return sew.BaseModelOutput(last_hidden_state=_unsqueeze(self, hidden_states, frames))


def sewd_encoder_forward(self: Any, hidden_states: Any, attention_mask: Any = None, **kwargs: Any):
    """SEWDEncoder.forward in eval mode without a branch on the parity of the frames."""
    import torch

    if self.training:
        return passthrough(
            sewd_encoder_forward.original, self, hidden_states, attention_mask, **kwargs
        )
    frames = hidden_states.shape[1]
    hidden_states, attention_mask = _squeeze(self, hidden_states, attention_mask)
    if attention_mask is None:
        attention_mask = torch.ones(
            hidden_states.shape[:2], dtype=torch.long, device=hidden_states.device
        )
    encoded = self.encoder(hidden_states, attention_mask, **kwargs).last_hidden_state
    return module_of(SEW_D).BaseModelOutput(last_hidden_state=_unsqueeze(self, encoded, frames))


def _install_parity_free_encoders(patcher: Any, model: Any) -> None:
    """Pad the upsampled frames back to the input's count unconditionally.

    Fixes: ``torch.export`` of sew with a dynamic audio length: ``Constraints violated
    (audio_length)! ... satisfy the generated guard 2*min(...) >= ...``, and once the
    length is relaxed to ``Dim.AUTO``, ``Guard failed: 2 * min(...) >= ...`` on a length
    of the other parity than the traced one; sew-d: ``Constraints violated
    (audio_length)`` with the suggestion ``audio_length = 640*_audio_length - 480``, then
    ``Guard failed: 2 + 2 * (...) >= ...`` on the other parity.
    SEWEncoder.forward (transformers/models/sew/modeling_sew.py:471) and
    SEWDEncoder.forward (transformers/models/sew_d/modeling_sew_d.py:1119) pool the
    frames by squeeze_factor=2, run the layers, upsample by 2, and pad the missing frame
    back only ``if hidden_states.shape[1] < n_input_timesteps``, which is true for an odd
    number of frames: torch.export keeps the branch of the traced length and guards on
    its parity. SEW also aligns the positional convolution with the pooled frames with a
    Python ``min`` of the two lengths. Here the pad is always applied, by
    ``frames - upsampled`` (zero frames for an even count: the same tensor), and the
    positional convolution is cut to the pooled length, which it never undercuts (stride
    squeeze_factor, padding kernel // 2, one frame dropped for an even kernel): the same
    numbers, as SEW-D already computes them. Training (layer drop) keeps the original.

    Remove when: transformers pads without a shape branch, or torch.export turns the
    branch into one graph valid for both parities.
    """
    patcher.replace_in(SEW, "SEWEncoder", "forward", sew_encoder_forward)
    patcher.replace_in(SEW_D, "SEWDEncoder", "forward", sewd_encoder_forward)


PARITY_FREE = Patch(
    name="sew_parity_free_upsampling",
    fixes="satisfy the generated guard 2*min(",
    remove_when="transformers pads SEW's upsampled frames without a branch on their "
    "count, or torch.export keeps one graph for both parities",
    install=_install_parity_free_encoders,
    model_types=("sew", "sew-d"),
)

register(Family(name="sew", model_types=("sew", "sew-d"), patches=(PARITY_FREE,)))
