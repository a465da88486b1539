"""Nemotron 3.5 Transcribe (nemo_speechlm): a diarization head whose input width must
match its audio encoder's."""

from __future__ import annotations

from . import Family, register

register(
    Family(
        name="nemotron3_5_transcribe",
        model_types=("nemo_speechlm",),
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
        task_known_failures={
            "text2text-generation": {
                "nemo_speechlm": (
                    r"Guard failed: input_features\.size\(\)\[1\] // 8 == 21",
                    "the audio encoder runs in chunks counted with Python ranges over the "
                    "number of frames: Nemotron3_5TranscribeAudioModel._get_chunks "
                    "(modeling_nemotron3_5_transcribe.py:614-630) and the diarization "
                    "model's forward (models/nemotron3_diarization/"
                    "modeling_nemotron3_diarization.py:795, 'for start_idx in "
                    "range(num_lookback_frames, end_chunk_idx, chunk_length)'), so "
                    "torch.export fixes the frame count to the traced clip's (21 encoder "
                    "frames) and the ExportedProgram refuses every other length; the ONNX "
                    "graph has no such check and matches eager on all seven sets, since "
                    "one chunk (500 frames) covers every checked clip. Replacing "
                    "_get_chunks by its one-chunk result moves the guard to the "
                    "diarization loop",
                ),
            },
        },
    )
)
