"""Llama 4's image-text model: the vision widths of its tiny config fitted to one another,
its image features taken after the projector, and its forward's output repaired.

Llama 4's vision tower pixel-shuffles its patch rows (ratio 0.5: four neighbours' features
side by side), so its adapter MLP reads ``hidden_size / ratio**2`` features and maps them
to ``projector_input_dim``, then ``projector_output_dim`` to itself, and the model's
``multi_modal_projector`` maps ``vision_output_dim`` features to the text width. The
config class's defaults (intermediate 5632, 7680, 4096, 4096) match a tower of 1408; the
tiny config shrinks the tower and leaves them, so the config fix sets them to what the
shrunk tower gives. ``get_image_features`` stops at the adapter, and the forward applies
the projector to its rows before merging them: the exported vision encoder ends with it
(``vision_output``). Its vision tower's rotary table is a complex buffer, which the task's
build keeps complex (``float()``, not ``to(float32)``, which drops the imaginary part);
torch.onnx converts its complex products as they are.
"""

from __future__ import annotations

from typing import Any

from ..patches import Patch
from ..patches.core import module_of
from . import Family, register

MODULE = "transformers.models.llama4.modeling_llama4"
#: the tiny tower's width (tiny_config's), the pixel shuffle's ratio, the adapter's and
#: projector's width
TINY_VISION_WIDTH, SHUFFLE_RATIO, PROJECTOR_WIDTH = 64, 0.5, 128


def projected(model: Any, out: Any) -> Any:
    """The image features as the forward merges them: the rows ``get_image_features``
    returns (the vision adapter's), through ``multi_modal_projector``."""
    rows = out.last_hidden_state
    return model.multi_modal_projector(rows.reshape(-1, rows.shape[-1]))


def _with_image_outputs() -> Any:
    def forward(*args: Any, **kwargs: Any) -> Any:
        out = forward.original(*args, **kwargs)  # the language model's own, bound
        if not isinstance(out, tuple) and not hasattr(out, "image_outputs"):
            out.image_outputs = None
        return out

    return forward


def _install_image_outputs(patcher: Any, model: Any) -> None:
    """Give the language model's output the ``image_outputs`` field the forward reads.

    Fixes: every forward of ``Llama4ForConditionalGeneration`` (transformers 5.24), eager
    included, ends with ``AttributeError: 'MoeCausalLMOutputWithPast' object has no
    attribute 'image_outputs'``: building its own output, it reads ``image_outputs`` from
    its language model's (``Llama4ForCausalLM``), which has no such field. The replacement
    (of the ``forward`` of each such language model in ``model``, not of the class: a
    text-only Llama4ForCausalLM is left alone) sets it to None on that output; the logits,
    the cache and everything the forward computes are unchanged, and neither
    ``generate`` nor a check reads the field.

    Since eager fails without it, :func:`exportcheck.validate` computes its eager
    reference with it (``corrects_eager``).

    Remove when: Llama4ForConditionalGeneration.forward builds its output from what it has.
    """
    modeling = module_of(MODULE)
    modules = getattr(model, "modules", None)  # None: patches entered for no model
    if modeling is None or modules is None:
        return
    for found in modules():
        if isinstance(found, modeling.Llama4ForConditionalGeneration):
            patcher.replace(found.language_model, "forward", _with_image_outputs())


IMAGE_OUTPUTS = Patch(
    name="llama4_image_outputs",
    fixes="'MoeCausalLMOutputWithPast' object has no attribute 'image_outputs'",
    remove_when="Llama4ForConditionalGeneration.forward builds its output from what it has",
    install=_install_image_outputs,
    model_types=("llama4",),
    corrects_eager=True,
)


LAYOUT = {"vision_output": projected}

register(
    Family(
        name="llama4",
        model_types=("llama4",),
        config_fixes={
            "llama4": (
                {
                    "vision_config.intermediate_size": int(TINY_VISION_WIDTH / SHUFFLE_RATIO**2),
                    "vision_config.projector_input_dim": PROJECTOR_WIDTH,
                    "vision_config.projector_output_dim": PROJECTOR_WIDTH,
                    "vision_config.vision_output_dim": PROJECTOR_WIDTH,
                },
                "the pixel shuffle (ratio 0.5) gives the adapter four tower rows of 64 "
                "side by side (256 features); its two layers and the projector then take "
                "128 features, as the config class's 4096 / 4096 / 4096 for its tower of 1408",
            )
        },
        input_layouts={
            "llama4": (
                LAYOUT,
                "get_image_features stops at the vision adapter: the encoder ends with "
                "the projector the forward applies",
            )
        },
        patches=(IMAGE_OUTPUTS,),
    )
)
