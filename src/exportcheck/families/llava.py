"""LLaVA: image features returned as a list of one tensor per image."""

from __future__ import annotations

from typing import Any

import torch

from ..patches import Patch
from ..patches.core import passthrough
from . import Family, register

MODULE = "transformers.models.llava.modeling_llava"


def llava_image_features(
    self,
    pixel_values,
    vision_feature_layer=None,
    vision_feature_select_strategy=None,
    image_sizes=None,
    **kwargs,
):
    """LlavaModel.get_image_features, the features of every image as one tensor of rows
    (in a tuple, which the forward concatenates as it does the original's list)."""
    if image_sizes is not None:
        return passthrough(
            llava_image_features.original, self, pixel_values, vision_feature_layer,
            vision_feature_select_strategy, image_sizes=image_sizes, **kwargs,
        )  # fmt: skip
    layer = (
        self.config.vision_feature_layer if vision_feature_layer is None else vision_feature_layer
    )
    strategy = vision_feature_select_strategy or self.config.vision_feature_select_strategy
    out = self.vision_tower(pixel_values, output_hidden_states=True, return_dict=True, **kwargs)
    states = [out.hidden_states[i] for i in ([layer] if isinstance(layer, int) else layer)]
    if strategy == "default":  # the class token is not an image token
        states = [s[:, 1:] for s in states]
    projected = self.multi_modal_projector(torch.cat(states, dim=-1))
    out.pooler_output = (projected.reshape(-1, projected.shape[-1]),)
    return out


def _install_llava_image_rows(patcher: Any, model: Any) -> None:
    """Return LLaVA's image features as one tensor instead of a list per image.

    Fixes: the vision encoder's export with a dynamic image count fails with "Constraints
    violated (images)": LlavaModel.get_image_features
    (transformers/models/llava/modeling_llava.py:163) returns ``list(image_features)``,
    which iterates the images, so the export specializes their count to the traced one.
    The replacement runs the same vision tower and projector and returns a tuple of one
    ``(images * tokens, hidden)`` tensor: ``torch.cat`` in the forward gives the same rows.

    Remove when: get_image_features keeps the features of fixed-size images as a tensor.
    """
    patcher.replace_in(MODULE, "LlavaModel", "get_image_features", llava_image_features)


LLAVA_IMAGE_ROWS = Patch(
    name="llava_image_rows",
    fixes="Constraints violated (images)",
    remove_when="LlavaModel.get_image_features keeps the features as a tensor",
    install=_install_llava_image_rows,
    model_types=("llava",),
)

register(Family(name="llava", model_types=("llava",), patches=(LLAVA_IMAGE_ROWS,)))
