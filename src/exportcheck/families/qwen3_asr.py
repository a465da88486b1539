"""Qwen3-ASR: an audio projector whose output width is a config value of its own."""

from __future__ import annotations

from . import Family, register

_CU_SEQLENS = (
    "data-dependent windows: Qwen3ASREncoder.forward "
    "(transformers/models/qwen3_asr/modeling_qwen3_asr.py:396) packs the valid frames of "
    "every clip and builds the boundaries of its attention windows in "
    "get_audio_cu_seqlens (modeling_qwen3_asr.py:306-320), which reads the longest chunk "
    "with .item() and loops in Python over each clip's frame count (a tensor element) to "
    "list its windows: the number of windows is a value read from the mask, and "
    "torch.export cannot turn it into a size"
)

register(
    Family(
        name="qwen3_asr",
        model_types=("qwen3_asr",),
        config_fixes={
            "qwen3_asr": (
                {"audio_config.output_dim": 64},
                "Qwen3ASRMultiModalProjector ends in audio_config.output_dim (3584, the "
                "full text model's width), which the generic rules do not tie to the text "
                "model: the shrunk text model is 64 wide, and with 3584 the model's own "
                "forward fails 'Audio features and audio tokens do not match, tokens: 16, "
                "features: 16' (the placeholders' embeddings and the frames differ in width)",
            ),
        },
        task_known_failures={
            "text2text-generation": {
                "qwen3_asr": (
                    r"Could not extract specialized integer from data-dependent expression u1",
                    _CU_SEQLENS,
                )
            },
            "automatic-speech-recognition": {
                "qwen3_asr": (
                    r"Could not extract specialized integer from data-dependent expression u1",
                    _CU_SEQLENS,
                )
            },
        },
    )
)
