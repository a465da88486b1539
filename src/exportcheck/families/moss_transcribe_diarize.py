"""MOSS Transcribe Diarize: an audio LM whose audio encoder declares an argument it never
reads."""

from __future__ import annotations

from . import Family, register

register(
    Family(
        name="moss_transcribe_diarize",
        model_types=("moss_transcribe_diarize",),
        input_layouts={
            "moss_transcribe_diarize": (
                {"unread_audio_arguments": ("padding_mask",)},
                "MossTranscribeDiarizeModel.get_audio_features "
                "(transformers/models/moss_transcribe_diarize/"
                "modeling_moss_transcribe_diarize.py:398-433) requires padding_mask, the "
                "raw audio's sample mask, but computes the frames from input_features and "
                "input_features_mask alone (its body never reads padding_mask; forward "
                "passes None when it is not given, :468, :493): the audio encoder graph "
                "passes None",
            ),
        },
    )
)
