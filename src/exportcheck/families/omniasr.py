"""OmniASR: a raw waveform with a channel dimension."""

from __future__ import annotations

from . import Family, register

register(
    Family(
        name="omniasr",
        model_types=("omniasr_ctc",),
        input_layouts={
            "omniasr_ctc": (
                {"channel": True},
                "OmniASRFeatureExtractor returns (batch, 1, samples): a channel dimension "
                "that the first convolution of the audio tower reads as is",
            ),
        },
    )
)
