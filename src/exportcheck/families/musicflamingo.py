"""Music Flamingo: no feature extractor mapped, and an audio encoder that reads the ids."""

from __future__ import annotations

from . import Family, register

register(
    Family(
        name="musicflamingo",
        model_types=("musicflamingo",),
        known_failures={
            "musicflamingo": (
                r"no feature extractor is mapped to 'musicflamingo' in transformers and its "
                r"encoder takes input_features",
                "transformers 5.24 maps no feature extractor to musicflamingo "
                "(MusicFlamingoProcessor takes the checkpoint's), and beyond it "
                "MusicFlamingoModel.get_audio_features (transformers/models/musicflamingo/"
                "modeling_musicflamingo.py:220) requires input_ids besides the features "
                "and their mask (the audio tokens' positions give its rotary time "
                "embeddings): exportcheck's audio encoder graph takes the audio and one mask",
            ),
        },
    )
)
