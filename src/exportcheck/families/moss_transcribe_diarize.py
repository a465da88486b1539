"""MOSS transcribe-diarize: an audio encoder that needs two masks."""

from __future__ import annotations

from . import Family, register

register(
    Family(
        name="moss_transcribe_diarize",
        model_types=("moss_transcribe_diarize",),
        known_failures={
            "moss_transcribe_diarize": (
                r"get_audio_features requires \['padding_mask'\] besides input_features "
                r"and input_features_mask",
                "MossTranscribeDiarizeModel.get_audio_features (transformers/models/"
                "moss_transcribe_diarize/modeling_moss_transcribe_diarize.py:398) takes the "
                "mask of the features of each 30 s window and the mask of each clip's raw "
                "samples (padding_mask, with config.audio_chunk_size it maps windows back to "
                "clips); exportcheck's audio encoder graph takes the audio and one mask",
            ),
        },
    )
)
