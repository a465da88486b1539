"""VibeVoice ASR: an audio LM whose audio features are sampled from a σ-VAE."""

from __future__ import annotations

from typing import Any

import torch

from ..patches import Patch
from ..patches.core import passthrough
from . import Family, register

#: the modules holding a copy of the streaming convolutions' padding cache, and its class
CACHE_LAYERS = (
    (
        "transformers.models.vibevoice_acoustic_tokenizer.modeling_vibevoice_acoustic_tokenizer",
        "VibeVoiceAcousticTokenizerConv1dCacheLayer",
    ),
    ("transformers.models.vibevoice_asr.modeling_vibevoice_asr", "VibeVoiceAsrConv1dCacheLayer"),
)


def _cache_update() -> Any:
    """A replacement of Conv1dCacheLayer.update, one per class (each keeps its original)."""

    def vibevoice_cache_update(self, hidden_states, conv_module=None):
        """Conv1dCacheLayer.update: the next chunk's left padding without a branch on
        the chunk's length."""
        if not self.is_initialized and conv_module is not None:
            self.lazy_initialization(hidden_states, conv_module)
        if not self.is_initialized or self.left_pad <= 0:
            return passthrough(vibevoice_cache_update.original, self, hidden_states, conv_module)
        # the last left_pad samples of (cache, chunk): the chunk's own when it is long
        # enough, else the cache's last ones before it, the two branches of the original
        padding_states = torch.cat([self.cache, hidden_states], dim=-1)[:, :, -self.left_pad :]
        current_cache = self.cache.clone()
        self.cache.copy_(padding_states)
        return current_cache

    return vibevoice_cache_update


def _install_vibevoice_cache_pad(patcher: Any, model: Any) -> None:
    """Keep the audio length symbolic in VibeVoice's streaming convolutions.

    Fixes: the ExportedProgram of the audio encoder, ``Guard failed:
    input_values.size()[2] >= 19200``: Conv1dCacheLayer.update
    (transformers/models/vibevoice_acoustic_tokenizer/
    modeling_vibevoice_acoustic_tokenizer.py:150-155, and its copy in
    models/vibevoice_asr/modeling_vibevoice_asr.py:130-135) keeps each convolution's
    left padding for the next chunk and branches on ``max(0, left_pad - length) > 0``;
    torch.export takes the traced branch and guards it, so at the deepest convolution
    (6 samples after a hop of 3200) clips shorter than 19200 samples are refused. The
    replacement takes the last ``left_pad`` samples of the cache followed by the chunk,
    which is what either branch keeps, and returns the previous cache as the original
    does: the same values on every length.

    Remove when: the padding cache stops branching on the chunk's length.
    """
    for module, owner in CACHE_LAYERS:
        patcher.replace_in(module, owner, "update", _cache_update())


VIBEVOICE_CACHE_PAD = Patch(
    name="vibevoice_cache_pad",
    fixes="Guard failed: input_values.size()[2] >= 19200",
    remove_when="the padding cache stops branching on the chunk's length",
    install=_install_vibevoice_cache_pad,
    model_types=("vibevoice_asr",),
)

register(
    Family(
        name="vibevoice_asr",
        model_types=("vibevoice_asr",),
        patches=(VIBEVOICE_CACHE_PAD,),
        config_fixes={
            "vibevoice_asr": (
                {
                    "acoustic_tokenizer_encoder_config.depths": [1] * 7,
                    "semantic_tokenizer_encoder_config.depths": [1] * 7,
                },
                "the generic rules shrink widths and layer counts but not the tokenizers' "
                "depths, seven stages of [3, 3, 3, 3, 3, 3, 8] blocks over up to 48000 "
                "samples: one block per stage keeps every stage, its downsampling and hop of "
                "3200 samples, and makes the audio encoder several times cheaper to run",
            ),
        },
        input_layouts={
            "vibevoice_asr": (
                {"audio_settings": {"sample": False}},
                "VibeVoiceAsrModel.get_audio_features "
                "(transformers/models/vibevoice_asr/modeling_vibevoice_asr.py:321-366) adds "
                "Gaussian noise to the acoustic latents by default (sample=True: a noise "
                "scale drawn per row, then torch.randn_like), so two calls on the same audio "
                "differ (0.7 to 0.9 on the tiny model) and no export can be compared with "
                "eager; sample=False, which its forward and generate also take, uses the "
                "encoder's output as is: the audio encoder graph and eager generate are "
                "given it",
            ),
        },
    )
)
