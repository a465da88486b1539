"""Image classifiers whose untrained logits barely depend on the image, even with the
weights at a fan-in scale (see ``exportcheck.tasks.image_classification``): the checks
refuse to run on them rather than compare outputs an error on the image's path would not
change."""

from __future__ import annotations

from . import Family, register

_ERROR = r"untrained logits move by .* between two images"

register(
    Family(
        name="vanishing",
        model_types=("efficientnet", "pp_lcnet"),
        task_known_failures={
            "image-classification": {
                "efficientnet": (
                    _ERROR,
                    "untrained, its logits move by about 1e-42 between two images (batch-norm "
                    "scales drawn with a deviation of 0.02, 39 blocks); with its convolutions "
                    "and linear layers at a fan-in scale and batch-norm scales at 1 they move "
                    "by 4e-4, under the 1e-3 the checks need to see an error on the image's "
                    "path: every block gates its channels with a sigmoid of untrained "
                    "squeeze-and-excitation weights, which halves them, block after block",
                ),
                "pp_lcnet": (
                    _ERROR,
                    "untrained, its logits move by 3e-7 between two images, with its "
                    "convolutions and linear layers at a fan-in scale and batch-norm scales "
                    "at 1 too: its hard-swish layers and hard-sigmoid squeeze-and-excitation "
                    "gates shrink the activations stage after stage (from 0.4 after the stem "
                    "to 6e-7 before the head, measured on 64-pixel images)",
                ),
            },
        },
    )
)
