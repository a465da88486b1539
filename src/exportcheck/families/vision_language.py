"""The image-text-to-text ledger: every model type of the task's mapping that is not green,
with the error it fails with and why, grouped by cause.

The task exports models that merge image features at placeholder tokens (see
:mod:`exportcheck.tasks.image_text_to_text`); the groups below are the models built
otherwise, the image inputs the task does not build yet, the variable-resolution
encoders whose export is data-dependent, and the tiny configs or models that fail on
their own.
"""

from __future__ import annotations

from . import Family, register

TASK = "image-text-to-text"

#: model types whose config names no image placeholder token
_NO_TOKEN = {
    "mistral4": "the mapping names Mistral4ForCausalLM, whose config is text-only",
    "pi0": "a vision-language-action policy: images and state prefix an action expert",
}
#: model types without get_image_features
_NO_FEATURES: dict[str, str] = {}
#: model types whose get_image_features requires other inputs than pixel values
_OTHER_INPUTS: dict[str, str] = {}
#: model types whose vision config sets no image size
_NO_SIZE: dict[str, str] = {}
#: variable-resolution encoders (flattened patches with image_grid_thw) that the grid
#: layout builds, failing at a later stage
_GRID: dict[str, tuple[str, str]] = {
    "inkling2": (
        r"eager is inconsistent: the decode step differs from a full forward",
        "its tower (vision_tower, fed token blocks with the patches' places after each "
        "image's class token precomputed, families/inkling2.py) matches eager on every set "
        "and generation agrees on both runtimes, but on the set at the bounds (batch 16, 64 "
        "new tokens, cache 256) eager's own decode step differs from its full forward by "
        "0.032, at 4 consecutive positions (49-52) of one row: in layer 1 that token's "
        "router logits for experts 0 and 2 are 1.2e-7 apart, their sigmoid scores equal in "
        "float32 in the decode step (0.516531467, top-2 takes expert 2) and one ulp apart in "
        "the full forward (top-2 takes expert 0): a tie of the untrained router, whose other "
        "expert the short convolution (kernel 4) carries over the next 3 tokens; "
        "inkling2_loop (this task) and inkling2_text (text-generation) pass",
    ),
}
#: image encoder-decoders (see :mod:`exportcheck.tasks._image_seq2seq`) not built yet
_ENCODER_DECODERS: dict[str, tuple[str, str]] = {
    "udop": (
        r"reads token ids with the image",
        "an encoder-decoder whose encoder reads text, layout boxes and image patches in one "
        "sequence; the task's image encoder-decoders take the image alone, or write its "
        "features over the prompt's placeholder tokens (T5Gemma 2, Florence-2), and this "
        "model names no placeholder token nor get_image_features",
    ),
}

_ENTRIES: dict[str, tuple[str, str]] = {
    **{
        t: (
            r"names no image placeholder token",
            f"no image_token_id or image_token_index in its config: {why}; the task's "
            "merge writes features over placeholder tokens, so this model needs a "
            "decomposition of its own",
        )
        for t, why in _NO_TOKEN.items()
    },
    **{
        t: (
            r"has no get_image_features",
            f"no get_image_features, the vision encoder graph the task exports: {why}",
        )
        for t, why in _NO_FEATURES.items()
    },
    **{
        t: (
            r"get_image_features takes \[",
            f"get_image_features requires {why}, which the task does not build from the "
            "config yet (only pixel_values, with image_grid_thw for patch sequences, or "
            "image_sizes for tiles that pack_image_features orders or for a Pixtral "
            "encoder's padded images)",
        )
        for t, why in _OTHER_INPUTS.items()
    },
    **{
        t: (
            r"sets no image_size",
            f"the task builds pixel_values at the vision config's image_size, and {why}",
        )
        for t, why in _NO_SIZE.items()
    },
    **_GRID,
    **_ENCODER_DECODERS,
    "diffusion_gemma": (
        r"DiffusionGemmaForBlockDiffusion has no get_image_features",
        "with its family's experts (families/diffusion_gemma.py) the model builds, but it "
        "is a block-diffusion model: an encoder of the prompt (which holds "
        "get_image_features, model.model.encoder) and a bidirectional decoder refining a "
        "canvas of canvas_length tokens, sampled at random when none is given; "
        "the outer model and its base model have no get_image_features, and generation "
        "is not a loop of causal decode steps; beyond it, its vision tower is Gemma 4's "
        "(patches at their own positions; families/gemma4_vision.py builds that tower's inputs)",
    ),
    "evolla": (
        r"Unrecognized configuration class",
        "a protein-text model: AutoModelForImageTextToText has no class for its config "
        "in transformers 5.24, though the mapping names it",
    ),
    "fast_vlm": (
        r"requires the timm library",
        "its vision tower is a timm model, and timm is not installed with the torch pin",
    ),
    "perception_lm": (
        r"requires the timm library",
        "its vision tower is a timm model, and timm is not installed with the torch pin",
    ),
}


def _base(model):
    return getattr(model, "model", model)


def _ernie_resampled(model, out):
    """ERNIE 4.5-VL's resampler on the tower's rows of images: each merged block's rows
    side by side through its spatial MLP, then its temporal MLP on each row beside the
    same image's row (its temporal slicing pairs frames two by two and, for an image's
    single frame, pairs it with itself), then its projection and norm."""
    import torch

    resampler = _base(model).resampler_model
    rows = out.last_hidden_state
    merged = rows.reshape(-1, rows.shape[-1] * resampler.spatial_merge_size**2)
    merged = resampler.spatial_linear(merged)
    merged = resampler.temporal_linear(torch.cat([merged, merged], dim=-1))
    return resampler.after_norm(resampler.mlp(merged))


def _adapted(model, out):
    """Muse's steps after its tower: adapter, projection, norm."""
    base = _base(model)
    adapted = base.vision_projection(base.vision_adapter(out.last_hidden_state))
    return base.perception_emb_norm(adapted)


def _paddle_processor_patches(model, pixel_values):
    """The flattened patches as PaddleOCR-VL's image processor gives them:
    ``(patches, channels, patch, patch)``."""
    vision = model.config.vision_config
    side = vision.patch_size
    return pixel_values.reshape(-1, vision.num_channels, side, side)


def _paddle_patches(model, pixel_values):
    """The patches as PaddleOCR-VL's tower takes them: the processor's layout as one
    sequence of every image's patches, ``(1, patches, channels, patch, patch)``, as
    get_image_features unsqueezes it."""
    return _paddle_processor_patches(model, pixel_values)[None]


def merge_block_order(model, grid):
    """The order in which a projector that merges each image's ``merge x merge`` blocks
    takes the tower's rows (PaddleOCR-VL's reshape and transpose, HunYuan-VL's strided
    convolution): in each image, its blocks row by row, each block's patches row by row.
    Returned under ``merge_order``, one index per patch, for the grids ``(images, 3)``."""
    import torch

    merge = model.config.vision_config.spatial_merge_size
    orders, offset = [], 0
    for t, h, w in grid.tolist():
        index = torch.arange(t * h * w).reshape(t, h // merge, merge, w // merge, merge)
        orders.append(index.transpose(2, 3).reshape(-1) + offset)
        offset += t * h * w
    return {"merge_order": torch.cat(orders)}


def _paddle_projected(model, out, merge_order):
    """PaddleOCR-VL's projector on the rows gathered by ``merge_order``: its per-row norm,
    then each block's ``merge x merge`` rows side by side through its two layers (what its
    forward computes image by image in a Python loop)."""
    projector = _base(model).projector
    rows = out.last_hidden_state
    rows = projector.pre_norm(rows.reshape(-1, rows.shape[-1]))[merge_order]
    merge = model.config.vision_config.spatial_merge_size
    blocks = rows.reshape(-1, merge * merge * rows.shape[-1])
    return projector.linear_2(projector.act(projector.linear_1(blocks)))


#: variable-resolution towers under another name than ``visual`` or with other steps
#: around them, with the steps ``get_image_features`` takes after them (before it splits
#: the rows per image): ``vision_tower`` (the attribute), ``vision_output`` ((model, tower
#: output, **grid extras) -> features), ``vision_input`` ((model, flattened patches) -> the
#: patches as the tower takes them), ``processor_pixels`` (the same, as the processor
#: gives them to ``generate``) and ``grid_extras`` ((model, grids) -> more tensors
#: computed from the grids, inputs of the graph); or ``layout``, the task's layout of a
#: model whose image inputs are not recognised from its code
_TOWERS = {
    "inkling_mm_model": (
        {"layout": "patches"},
        "its processor cuts each image into patches of temporal_patch_size frames of "
        "patch_size x patch_size pixels, channels last, (patches, T, P, P, C), every "
        "image's one after the other; its tower encodes each patch alone (an MLP that "
        "folds time and space into depth) into one image token",
    ),
    "paddleocr_vl": (
        {
            "vision_tower": "visual",
            "vision_input": _paddle_patches,
            "processor_pixels": _paddle_processor_patches,
            "vision_output": _paddle_projected,
            "grid_extras": merge_block_order,
        },
        "its tower, visual, takes the patches as (1, patches, channels, patch, patch) and "
        "merges none; its projector then takes each image's merge x merge blocks in a "
        "Python loop over the images, which here is one gather by merge_order, "
        "precomputed from the grids",
    ),
    **{
        t: (
            {"vision_tower": "vision_tower", "vision_output": _adapted},
            "its tower is vision_tower, and get_image_features passes its last hidden "
            "states through vision_adapter, vision_projection and perception_emb_norm",
        )
        for t in ("muse_spark", "muse_glimmer")
    },
    "ernie4_5_vl_moe": (
        {"vision_tower": "vision_tower", "vision_output": _ernie_resampled},
        "its tower is vision_tower, and get_image_features passes its last hidden states "
        "through resampler_model, whose temporal step pairs each image's rows with "
        "themselves (an image is one frame) by offsets it computes in a Python loop over "
        "the grids; for images that pairing is the rows beside themselves",
    ),
    "instructblipvideo": (
        {"frames": 4},
        "a model that reads videos only: its processor samples 4 frames of each video "
        "(it works with 4 frames only) and writes its video token num_query_tokens times "
        "per frame; get_video_features reads the frames, (videos, 4, channels, height, "
        "width), with each video's prompt in the Q-Former's vocabulary",
    ),
    "dots3_note": (
        {"vision_tower": "vision_tower"},
        "its tower is vision_tower, whose pooled output get_image_features splits per image",
    ),
    "hyperclovax_vision_v2": (
        {
            "vision_tower": "vision_model",
            "vision_output": lambda model, out: _base(model).projector(out.pooler_output),
        },
        "its tower is vision_model, and get_image_features projects its merged output",
    ),
    "minimax_m3_vl": (
        {
            "vision_tower": "vision_tower",
            "vision_output": lambda model, out: _base(model).multi_modal_projector(
                out.last_hidden_state.squeeze(0)
            ),
        },
        "its tower is vision_tower, and get_image_features merges and projects its last "
        "hidden states with multi_modal_projector",
    ),
}

register(
    Family(
        name="vision_language",
        model_types=tuple(sorted({*_ENTRIES, *_TOWERS})),
        task_known_failures={TASK: _ENTRIES},
        input_layouts=_TOWERS,
    )
)
