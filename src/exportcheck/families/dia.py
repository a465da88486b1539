"""Dia: text to speech, in the speech sequence-to-sequence mapping."""

from __future__ import annotations

from . import Family, register

register(
    Family(
        name="dia",
        model_types=("dia",),
        task_known_failures={
            "automatic-speech-recognition": {
                "dia": (
                    r"DiaEncoder\.forward takes neither input_features nor input_values",
                    "text to speech, not speech recognition: DiaEncoder.forward "
                    "(transformers/models/dia/modeling_dia.py:452) embeds text token ids, "
                    "and DiaForConditionalGeneration (:756, output_modalities 'audio') "
                    "generates audio codebooks from them; transformers maps it under "
                    "MODEL_FOR_SPEECH_SEQ_2_SEQ_MAPPING_NAMES, but there is no audio to "
                    "encode, so the task's audio encoder graph does not apply",
                ),
            },
        },
    )
)
