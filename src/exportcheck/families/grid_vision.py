"""Variable-resolution vision encoders (the Qwen2-VL family): the patches of every image in
one sequence, each image attending to itself only."""

from __future__ import annotations

import inspect
import sys
from typing import Any

import torch

from ..patches import Patch
from . import Family, register

#: the variable-resolution models whose vision attention splits the patches per image
MODEL_TYPES = (
    "qwen2_vl",
    "qwen2_5_vl",
    "qwen2_5_omni_thinker",
    "qwen3_5",
    "qwen3_5_moe",
    "qwen3_vl",
    "qwen3_vl_moe",
    "qwen3_omni_moe_thinker",
    "qwen4_exp",
    "cosmos3_omni",
    "exaone4_5",
    "glm4v",
    "glm4v_moe",
    "glm46v",
    "glmga",
    "glm5_next",
    "glm_ocr",
    "hunyuan_vl",
    "hy_v4_vl",
    "cosmos3_edge",
    "lfm3_vl",
    "nemotron_h_omni",
    # an audio encoder attending within windows listed in cu_seqlens, as the towers above
    "qwen3_asr",
)


def _segment_attentions(model: Any) -> list[Any]:
    """The attention modules of ``model`` that take packed segments (``cu_seqlens``)."""
    return [
        m
        for m in (model.modules() if model is not None else ())
        if type(m).__name__.endswith("Attention")
        and "cu_seqlens" in inspect.signature(type(m).forward).parameters
    ]


def segment_attention(module, query, key, value, attention_mask, *args, **kwargs):
    """Attention over packed segments in one call: each position attends to the positions
    of its own segment, given by ``cu_seq_lens_q`` (the segments' cumulative lengths).

    ``query``, ``key`` and ``value`` are ``(1, heads, positions, head_dim)``; the result is
    ``(1, positions, heads, head_dim)``, as the attention functions of transformers
    return it, with no weights.
    """
    bounds = kwargs["cu_seq_lens_q"]
    positions = torch.arange(query.shape[2], device=query.device)
    # the segment of each position: how many segment starts are at or before it, the
    # leading 0 included (no slice of the bounds: a dynamic slice guards on its length)
    segment = (positions[:, None] >= bounds[None, :].to(positions.dtype)).sum(-1)
    allowed = segment[:, None] == segment[None, :]
    out = torch.nn.functional.scaled_dot_product_attention(
        query,
        key,
        value,
        attn_mask=allowed[None, None],
        scale=kwargs.get("scaling"),
        enable_gqa=key.shape[1] != query.shape[1],
    )
    return out.transpose(1, 2).contiguous(), None


class _SegmentInterfaces:
    """The attention functions of transformers, with the packed-segment call (one that
    passes ``cu_seq_lens_q``) answered by :func:`segment_attention`."""

    def __init__(self, functions: Any) -> None:
        self._functions = functions

    def get_interface(self, name: str, default: Any) -> Any:
        chosen = self._functions.get_interface(name, default)

        def attend(module, query, key, value, attention_mask, *args, **kwargs):
            if kwargs.get("cu_seq_lens_q") is not None:
                return segment_attention(module, query, key, value, attention_mask, **kwargs)
            return chosen(module, query, key, value, attention_mask, *args, **kwargs)

        return attend

    def __getattr__(self, name: str) -> Any:
        return getattr(self._functions, name)


def _install_segment_attention(patcher: Any, model: Any) -> None:
    """Run the vision encoder's attention over every image's patches in one call.

    Fixes: the export of the vision encoder fails with "Could not guard on data-dependent
    expression": outside flash attention, the vision attention
    (transformers/models/qwen2_vl/modeling_qwen2_vl.py:400-418, and its copies) splits
    the packed patches per image with ``torch.split(..., lengths.tolist())`` and runs
    one attention per image, a Python loop over the values of ``cu_seqlens``.

    The replacement takes the branch the modeling code has for flash attention, which
    passes ``cu_seqlens`` to the attention function, and answers that call with one
    scaled-dot-product attention under a block-diagonal mask (a position attends to the
    positions of its own image): the same result within float rounding, any number of
    images of any sizes in one graph. Only the configs of those attention modules take
    that branch (the vision tower's, or Qwen3-ASR's audio encoder's, which splits its
    frames per attention window the same way); the language model keeps its attention.

    Remove when: the vision attention runs packed segments without a Python loop.
    """
    attentions = _segment_attentions(model)
    vision = {id(m.config) for m in attentions}
    for name in sorted({type(m).__module__ for m in attentions}):
        module = sys.modules[name]

        def flash_for_vision(config=None, *args, **kwargs):
            if id(config) in vision:
                return True
            return flash_for_vision.original(config, *args, **kwargs)

        patcher.replace(module, "is_flash_attention_requested", flash_for_vision)
        functions = module.ALL_ATTENTION_FUNCTIONS
        if not isinstance(functions, _SegmentInterfaces):  # not already, by an outer use
            patcher.replace(module, "ALL_ATTENTION_FUNCTIONS", _SegmentInterfaces(functions))


VISION_SEGMENT_ATTENTION = Patch(
    name="vision_segment_attention",
    fixes="Could not guard on data-dependent expression",
    remove_when="the vision attention runs packed segments without a Python loop over them",
    install=_install_segment_attention,
    model_types=MODEL_TYPES,
)

#: the models whose vision tower slices the image bounds (GLM-4V: lengths of the images
#: from ``cu_seqlens[1:] - cu_seqlens[:-1]``)
SLICING_TYPES = ("glm4v", "glm4v_moe", "glm46v", "glmga", "glm5_next")


def _slices_bounds(model: Any) -> bool:
    """True when a vision tower of ``model`` slices ``cu_seqlens`` in its forward."""
    for m in model.modules() if model is not None else ():
        if type(m).__name__.endswith(("VisionModel", "VisionTransformer")):
            try:
                if "cu_seqlens[1:]" in inspect.getsource(type(m).forward):
                    return True
            except (OSError, TypeError):
                continue
    return False


def _install_size_oblivious_bounds(patcher: Any, model: Any) -> None:
    """Export the image bounds without assuming two images or more.

    Fixes: the exported vision encoder refuses one image with "Guard failed: -1 +
    cu_seqlens.size()[0] >= 2": the GLM-4V vision tower computes the images' lengths as
    ``cu_seqlens[1:] - cu_seqlens[:-1]``
    (transformers/models/glm4v/modeling_glm4v.py:748), and torch.export, deciding whether
    the slice of a dynamic length is contiguous, guards that its length is not 0 or 1, so
    the program takes two images or more.

    The replacement sets torch's ``backed_size_oblivious`` while the vision encoder of
    such a model is exported (not its decoder): sizes are reasoned about without that
    0/1 case, and the program takes one image as well (checked on the input sets of one
    image).

    Remove when: the tower derives the images' lengths without slicing a dynamic length.
    """
    # the vision encoder graph only (the task's grid encoder): the decoder of the same
    # model keeps the usual reasoning
    if getattr(model, "layout", None) == "grid" and _slices_bounds(model):
        from torch.fx.experimental import _config

        patcher.enter(_config.patch(backed_size_oblivious=True))


SIZE_OBLIVIOUS_BOUNDS = Patch(
    name="size_oblivious_bounds",
    fixes="Guard failed: -1 + cu_seqlens.size()[0] >= 2",
    remove_when="the vision tower derives the images' lengths without a dynamic slice",
    install=_install_size_oblivious_bounds,
    model_types=SLICING_TYPES,
)

register(
    Family(
        name="grid_vision",
        model_types=MODEL_TYPES,
        patches=(VISION_SEGMENT_ATTENTION, SIZE_OBLIVIOUS_BOUNDS),
    )
)
