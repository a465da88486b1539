"""image-text-to-text: vision-language models exported as the parts a runtime drives.

The model is built with ``AutoModelForImageTextToText``
(``MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES``). Its forward embeds the prompt's token
ids, runs the vision encoder and its projector (``get_image_features``), scatters the
image features over the positions of the image placeholder token and runs a causal LM on
the result. It is exported as three graphs and one merge, as a runtime drives them:

* ``vision_encoder``: the image inputs as the model's processor gives them -> the image
  features of every image, one row per image token;
* ``embed_tokens``: token ids -> input embeddings;
* the merge, in the driver: the features replace the embeddings of the image tokens, in
  order (``masked_scatter``, as the forward does); a prompt with another number of image
  tokens than there are feature rows is refused with a sentence saying so;
* ``decoder``: a decode step of the causal LM on input embeddings with the cache of the
  positions before -> logits and the grown cache.

Ten layouts of image inputs are built from the config, without a processor:

* ``pixels``: ``pixel_values`` ``(images, channels, height, width)`` at the vision
  config's ``image_size``. The resolution stays static: the processors of these models
  resize every image to that size (LLaVA, Gemma 3, PaliGemma, InternVL, ...). Dynamic:
  ``images``.
* ``stacked``: the same images, which ``get_image_features`` takes as the image list
  of one prompt, ``(1, images, channels, height, width)`` (Idefics 2 and 3, SmolVLM);
  ``generate`` gets one image per prompt row.
* ``instructed``: the ``pixels`` images with, for each, the prompt's tokens in the
  vocabulary of a Q-Former that reads them beside its queries (InstructBLIP):
  ``qformer_input_ids`` and ``qformer_attention_mask`` ``(images, length)``, right-padded
  as the processor's tokenizer pads them. Dynamic: ``images`` and the prompt length. A
  model that reads videos only (InstructBLIP-Video: ``get_video_features``, a video
  placeholder token) takes ``(videos, frames, channels, height, width)``, the frames as
  many as its processor samples (its family's ``frames``).
* ``naflex``: images of any size as NaFlex patch sequences (LFM2-VL): ``pixel_values``
  ``(images, patches, channels * patch ** 2)`` padded to the longest, with
  ``pixel_attention_mask`` and ``spatial_shapes`` (each image's grid), as the processor
  gives them, and ``grid_index``: the patch rows of each token's block, which the
  projector unshuffles into one token (:func:`naflex_grid_index`), for the real tokens
  only, where ``get_image_features`` cuts them per image with sizes read in Python.
  Checked at build time against ``get_image_features`` on every input set. Dynamic:
  ``images``, the patches and the tokens.
* ``grid``: the patches of images of varying resolution flattened into one sequence,
  ``pixel_values`` ``(patches, channels * temporal_patch_size * patch_size ** 2)`` with
  ``image_grid_thw`` ``(images, 3)`` (the Qwen2-VL family's processor), and what the
  processor side computes from the grids with transformers' own helpers
  (:func:`grid_inputs`: each patch's rotary position, the images' cumulative lengths,
  the windows of window attention, the taps of an interpolated position table, the
  order of a pixel shuffle's blocks). A tower of another name takes what it computes
  from the grids as recorded from its own calls of those helpers
  (:func:`recorded_grid_inputs`). The
  tower reads those instead of looping over the grids' values; its attention over the
  images runs as one masked attention (patch ``vision_segment_attention``). Dynamic: the
  image tokens (patches are a multiple of the merged block) and ``images``; each input
  set has grids of its own, the last at the declared bounds (4 images, 32 tokens).
* ``tiles``: images of any size cut into tiles as the any-resolution processors do
  (LLaVA-NeXT, LLaVA-OneVision): a base view and the grid of tiles the image's size picks
  from the config's ``image_grid_pinpoints``, every tile at the vision config's
  ``image_size``. The graph takes the tiles of every image, ``pixel_values``
  ``(tiles, channels, size, size)``, and ``feature_index``: the order of the feature
  rows, which ``get_image_features`` computes from ``image_sizes`` with Python loops
  (unpadding each image's grid and inserting a newline row after each of its rows of
  features). The index is what the model's own ``pack_image_features`` does to row
  numbers (:func:`tile_inputs`), checked at build time to give exactly what
  ``get_image_features`` returns on every input set. Dynamic: ``tiles`` and the feature
  rows; each input set has image sizes of its own, the last at the declared bounds (4
  images of 5 tiles).
* ``padded``: images of any size padded into one batch for a Pixtral encoder (Mistral
  3, LightOnOCR), ``pixel_values`` ``(images, channels, height, width)`` with height and
  width dynamic in patches, and what the encoder computes from ``image_sizes`` in Python
  loops (:func:`padded_inputs`): each image's patches in the padded convolution output,
  their 2-D rotary positions, the image each patch attends within, and the patches each
  merged token takes (the model's own patch merger run on patch numbers). Checked at
  build time against ``get_image_features`` on every input set, like ``tiles``.
* ``flat``: the flattened patches of each image, ``(images, patches, channels * patch **
  2)``, for an encoder that is one linear map of a patch (Fuyu): images and patches
  dynamic.
* ``patches``: the patches of every image one after the other, ``pixel_values``
  ``(patches, temporal_patch_size, patch_size, patch_size, channels)`` as the processor
  cuts them (Inkling), for an encoder of each patch alone into one image token: an image
  has as many tokens as patches, with no positions or grids. Declared by the family
  (``input_layouts`` ``layout``). Dynamic: the patches; each input set has images of
  patch counts of its own, the last at the declared bound (64 patches).
* ``flattened``: ``flattened_patches`` ``(images, patches, 2 + channels * patch ** 2)``
  as Pix2Struct-style processors give them (each patch led by its 1-based row and
  column, each image padded to the call's longest with zero rows, which the tower masks
  itself), built by :func:`exportcheck.tasks._image_seq2seq.flattened_patches`, for a
  tower that takes them alone (Kosmos-2.5, whose processor returns no patch mask beside
  them: the text mask takes its name). Declared by the family. Dynamic: images and
  patches; each set has padded images of counts of its own, the last at the bounds.

A model with multimodal rope (``get_rope_index``) gets a decoder step that takes
``position_ids`` ``(3, batch, seq_length)``: text positions in the checked sets, the
positions ``get_rope_index`` gives the prompt and its offset for every later token in
generation. A model whose forward requires the pixels on every call (BLIP-2,
InstructBLIP) gets a decoder step of the language model it hands the merged embeddings
to (:func:`exportcheck.tasks._audio_lm.text_lm`). A prefix LM (PaliGemma:
:func:`prefix_lm`), whose image tokens and prompt attend bidirectionally, gets a decoder
step that takes ``token_type_ids`` of its new tokens (0 prefix, 1 suffix), checked
against a full forward given the same prefix, and a generation that prefills the whole
prompt in one decoder call. A model with no placeholder token, whose forward writes the
features over a span of the prompt that a mask marks (a family's ``input_layouts`` entry
``image_span``: Kosmos-2's ``image_embeds_position_mask``), gets the same graphs; the
driver writes the rows at the mask's positions (:func:`merge_span`), and the generation
prompt is laid out by the family as its processor lays it out, the mask given to
``generate`` beside the ids. A text model that also reads that mask at every position
(Kosmos-2.5 adds a segment embedding of it; the family's ``step_span``) gets a decoder
step that takes ``image_embeds_position_mask`` of its new positions: the prefill's
chunks carry the prompt's, generated tokens 0, as ``generate`` passes none for them.

The decoder step is checked against a full forward over its prompt and new embeddings.
Generation: the vision encoder once, the merged prompt (text, the image's tokens, text),
then 8 greedy steps through each runtime against eager ``generate(do_sample=False)``
with the same image.
"""

from __future__ import annotations

import copy
import functools
import inspect
import re
from typing import Any

from ..dims import BATCH_MAX
from ..families import INPUT_LAYOUTS
from ..models import UntrainedModel, prepare_weights
from ..models.tiny import rescale_sections, tiny_config
from . import Component, Generation, Task, _audio_lm, _image_seq2seq, register

__all__ = ["ImageTextToText", "check_image_inputs", "image_token", "vision_layout"]

#: images of each ``pixels`` input set: every set a distinct count, the last at the bound
IMAGE_COUNTS = [2, 1, 3, 4, 5, 6, BATCH_MAX]
#: the grids (patch rows x columns) of each input set's images of the ``naflex`` layout
#: (even sides: the projector merges 2 x 2 blocks), the last at the bounds
NAFLEX_GRIDS = [
    [(4, 6), (6, 4)],
    [(4, 4)],
    [(6, 6), (4, 8), (2, 8)],
    [(8, 4), (4, 6), (6, 2), (2, 2)],
    [(8, 8), (2, 4), (6, 4), (4, 4), (2, 2)],
    [(4, 2), (6, 8), (4, 8), (2, 6), (8, 2), (6, 6)],
    [(8, 8)] * BATCH_MAX,
]
NAFLEX_PATCHES_MAX = 64
NAFLEX_GENERATION_GRID = (6, 4)
#: prompt lengths in the Q-Former's vocabulary of the ``instructed`` layout's sets (one per
#: image count but the last, which is at the bound)
QFORMER_LENGTHS = [6, 4, 9, 3, 7, 5]
QFORMER_LENGTH_MAX = 32
#: images and image tokens (merged patches) of one call, at most: the bounds the ``grid``
#: layout declares and checks (small, for the sweep's time; a deployment declares its own)
GRID_IMAGES_MAX = 4
GRID_TOKENS_MAX = 32
#: the grids ``(t, h, w)`` of the images of each ``grid`` input set, in image tokens (the
#: patches are ``h * merge`` by ``w * merge``): the first is traced, the others unseen,
#: the last at the declared bounds
GRIDS = [
    [(1, 2, 2), (1, 2, 3)],
    [(1, 3, 2)],
    [(1, 2, 2), (1, 1, 1), (1, 3, 3)],
    [(1, 4, 2)],
    [(1, 1, 2), (1, 2, 1), (1, 1, 1), (1, 2, 2)],
    [(1, 4, 4), (1, 3, 4)],
    [(1, 2, GRID_TOKENS_MAX // GRID_IMAGES_MAX // 2)] * GRID_IMAGES_MAX,
]
#: the images of each ``tiles`` input set, as (height, width) in units of the vision
#: config's image_size: the first is traced, the others unseen, the last at the bounds
#: (4 images of a 2 x 2 grid and a base view each)
TILE_IMAGES = [
    [(0.9, 1.8), (2.05, 0.8)],
    [(2.0, 2.0)],
    [(0.9, 1.8), (2.0, 2.0), (0.7, 0.7)],
    [(1.0, 3.0)],
    [(0.5, 0.5), (1.5, 1.2), (2.9, 1.0), (1.8, 0.9)],
    [(1.3, 2.6), (0.8, 0.6)],
    [(2.0, 2.0)] * 4,
]
TILES_MAX = 20
#: the size of both images of the generation prompt in the ``tiles`` layout
TILE_GENERATION_IMAGE = (0.9, 1.8)
#: the images of each ``padded`` input set, as (height, width) in patches (even: the
#: projector merges 2 x 2 patches): the first is traced, the last at the bounds
PADDED_IMAGES = [
    [(4, 6), (6, 2)],
    [(8, 8)],
    [(2, 4), (6, 4), (4, 2)],
    [(4, 8)],
    [(2, 2), (4, 4), (6, 2), (2, 6)],
    [(8, 4), (2, 2)],
    [(8, 8)] * 4,
]
#: the patches a side of a ``padded`` image, at most, and of the generation's images
PADDED_SIDE_MAX = 8
PADDED_GENERATION_IMAGE = (4, 6)
#: the patches of the images of each ``flat`` input set (all images of a call have as
#: many, as the processor pads them): every set a distinct count, the last at the bound
FLAT_PATCHES = [(2, 16), (1, 9), (3, 25), (4, 4), (2, 36), (1, 12), (4, 64)]
FLAT_PATCHES_MAX = 64
#: the patch count of each image of each ``patches`` input set: every set a distinct
#: total, the first traced, the last at the bound
PATCH_IMAGES = [[3, 2], [1], [4, 6, 2], [9], [2, 5, 7, 6], [16, 8], [16] * 4]
PATCHES_MAX = 64
#: the patches of each of the generation prompt's two images in the ``patches`` layout
PATCH_GENERATION_IMAGE = 6
#: the patch count of each image of each ``flattened`` input set (padded to the set's
#: longest): every set distinct image and patch counts, the last at the bounds
FLATTENED_IMAGES = [
    [12, 9],
    [16],
    [20, 6, 12],
    [24, 16, 9, 30],
    [8, 15, 27, 10, 4],
    [36, 12, 18, 25, 6, 20],
    [_image_seq2seq.PATCHES_MAX] * BATCH_MAX,
]
#: the patches of the generation prompt's two images (the second padded)
FLATTENED_GENERATION = (20, 14)
#: patches per side of the images of a fixed-resolution encoder: a larger image_size of
#: the tiny config is shrunk to this many patches
PATCHES_PER_SIDE = 8
#: text tokens before and after the image in the generation prompt
GENERATION_TEXT = (3, 2)
#: the generation prompt's length in the Q-Former's vocabulary (``instructed`` layout)
GENERATION_QFORMER = 5
_TOKEN_NAMES = ("image_token_id", "image_token_index")
#: the placeholder of a model that reads videos only (its features are written there)
_VIDEO_TOKEN_NAMES = ("video_token_id", "video_token_index")


def image_token(config: Any) -> int:
    """The id of the image placeholder token, or of the video placeholder token for a
    config that names no image token (a model that reads videos only).

    :raises ValueError: when the config names none
    """
    for name in (*_TOKEN_NAMES, *_VIDEO_TOKEN_NAMES):
        value = getattr(config, name, None)
        if isinstance(value, int):
            return value
    raise ValueError(
        f"{type(config).__name__} names no image placeholder token ({' or '.join(_TOKEN_NAMES)}): "
        "exportcheck exports models that merge image features at that token's positions"
    )


def video_frames(model: Any) -> int:
    """The frames of each video of a model that reads videos only (its family's
    ``input_layouts`` ``frames``: how many its processor samples), 0 for other models."""
    return int(_tower_layout(model).get("frames", 0))


def _image_function(model: Any) -> Any:
    name = "get_video_features" if video_frames(model) else "get_image_features"
    function = getattr(model, name, None)
    if function is None:  # the base model's, when the outer model does not forward it
        function = getattr(getattr(model, "model", None), name, None)
    if function is None:
        raise ValueError(
            f"{type(model).__name__} has no get_image_features: exportcheck exports "
            "vision-language models whose forward merges image features into the input "
            "embeddings, and this one consumes the image otherwise"
        )
    params = inspect.signature(function).parameters
    if all(p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in params.values()):
        inner = getattr(getattr(model, "model", None), "get_image_features", None)
        if inner is not None:
            return inner
    return function


def _packer(model: Any) -> Any:
    """``pack_image_features`` of an any-resolution model (of its base model, or of the
    model), None for other models. The base model's first: LLaVA-OneVision's outer
    model passes it an argument it does not take."""
    for owner in (getattr(model, "model", None), model):
        function = getattr(owner, "pack_image_features", None)
        if function is not None:
            return function
    return None


def _naflex(model: Any) -> bool:
    """True for a model whose tower takes NaFlex patch sequences and whose projector
    unshuffles each ``downsample_factor`` x ``downsample_factor`` block of patches into
    one token (LFM2-VL)."""
    base = getattr(model, "model", model)
    projector = getattr(base, "multi_modal_projector", None)
    factor = getattr(model.config, "downsample_factor", None)
    return hasattr(projector, "pixel_unshuffle") and isinstance(factor, int)


def naflex_images(model: Any, grids: list[tuple[int, int]], generator: Any) -> dict[str, Any]:
    """Images of ``grids`` as the NaFlex processor gives them (random patches, padded to
    the longest with zeros, mask 0 there), with the projector's grid of patch rows."""
    import torch

    vision = _vision_config(model.config)
    width = int(vision.num_channels) * int(vision.patch_size) ** 2
    length = max(h * w for h, w in grids)
    pixels = torch.zeros((len(grids), length, width))
    mask = torch.zeros((len(grids), length), dtype=torch.int64)
    for i, (h, w) in enumerate(grids):
        pixels[i, : h * w] = torch.randn((h * w, width), generator=generator)
        mask[i, : h * w] = 1
    shapes = torch.tensor(grids, dtype=torch.int64)
    return {
        "pixel_values": pixels,
        "pixel_attention_mask": mask,
        "spatial_shapes": shapes,
        "grid_index": naflex_grid_index(shapes, length, model.config.downsample_factor),
    }


def naflex_grid_index(spatial_shapes: Any, patches: int, factor: int) -> Any:
    """The rows of the tower's flattened output ``(images * patches, hidden)`` that the
    projector reads, as the grid it unshuffles: ``(factor, tokens * factor)``, where
    token ``t`` (image by image, its blocks row by row) takes ``[a, t * factor + b]``, the
    patch at row ``a`` and column ``b`` of its block. Only the images' real tokens, so
    that the projector's output rows are the image features in order."""
    import torch

    columns = []
    for image, (height, width) in enumerate(spatial_shapes.tolist()):
        rows = torch.arange(height // factor)[:, None] * factor
        cols = torch.arange(width // factor)[None, :] * factor
        corner = (rows * width + cols).reshape(-1)  # each token's first patch
        offset = torch.arange(factor)[:, None] * width + torch.arange(factor)[None, :]
        block = corner[:, None, None] + offset  # (tokens, a, b)
        columns.append(image * patches + block.permute(1, 0, 2).reshape(factor, -1))
    return torch.cat(columns, 1)


def _pixtral(model: Any) -> tuple[Any, Any] | None:
    """(vision tower, projector) of a model whose tower is a Pixtral encoder (a patch
    convolution, 2-D rotary positions, one sequence of every image's patches) and whose
    projector merges patches with a ``patch_merger``; None for other models."""
    base = getattr(model, "model", model)
    tower = next(
        (
            getattr(base, n)
            for n in ("vision_tower", "vision_encoder")
            if hasattr(getattr(base, n, None), "patch_positional_embedding")
        ),
        None,
    )
    projector = next(
        (
            getattr(base, n)
            for n in ("multi_modal_projector", "vision_projection")
            if hasattr(getattr(base, n, None), "patch_merger")
        ),
        None,
    )
    if tower is None or projector is None or not hasattr(tower, "patch_conv"):
        return None
    return tower, projector


def _patch_embedding(model: Any) -> Any:
    """The linear layer of a model whose image encoder is one linear map of flattened
    patches (Fuyu's ``vision_embed_tokens``), None for other models."""
    import torch

    found = getattr(getattr(model, "model", model), "vision_embed_tokens", None)
    return found if isinstance(found, torch.nn.Linear) else None


def vision_layout(model: Any) -> str:
    """``pixels``, ``stacked``, ``instructed``, ``naflex``, ``grid``, ``tiles``,
    ``padded``, ``flat`` or ``patches``: how ``get_image_features`` takes the image (see
    the module); the family's ``input_layouts`` ``layout`` when it declares one.

    :raises ValueError: for a function that requires other inputs
    """
    # no get_image_features (GIT): the family's own encoder, under the layout it declares
    family = _tower_layout(model)
    own = "get_video_features" if video_frames(model) else "get_image_features"
    built = "encoder" in family and "layout" in family
    if built and not any(hasattr(m, own) for m in (model, getattr(model, "model", None))):
        return family["layout"]
    params = inspect.signature(_image_function(model)).parameters
    if _tower_layout(model).get("layout") == "flattened" and "flattened_patches" in params:
        return "flattened"
    # the grids under the name the family declares (the grid layout builds them)
    grids = _tower_layout(model).get("grid_argument", "image_grid_thw")
    instructed = "qformer_input_ids" in params
    hybrid = "high_res_pixel_values" in params
    naflex = {"spatial_shapes", "pixel_attention_mask"} <= set(params) and _naflex(model)
    # arguments the family's own encoder inputs stand for (image_sizes: a gather index)
    standing = tuple(_tower_layout(model).get("image_arguments", ()))
    tiled = "image_sizes" in params and _packer(model) is not None
    padded = "image_sizes" in params and not tiled and _pixtral(model) is not None
    required = [
        name
        for name, p in params.items()
        if p.default is p.empty
        and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
        and name not in ("pixel_values", "image_grid_thw", grids)
        and not ((tiled or padded) and name == "image_sizes")
        and not (instructed and name == "qformer_input_ids")
        and not (hybrid and name == "high_res_pixel_values")
        and not (naflex and name in ("spatial_shapes", "pixel_attention_mask"))
        and name not in standing
    ]
    if "pixel_values" not in params or required:
        raise ValueError(
            f"{type(model).__name__}.get_image_features takes {list(params)}: exportcheck "
            "builds pixel_values, with image_grid_thw for patch sequences, image_sizes "
            "for tiles packed by pack_image_features or for a Pixtral encoder's padded "
            "images, qformer_input_ids for a Q-Former read with the prompt, "
            "high_res_pixel_values for a second encoder of the same images, spatial_shapes "
            "and pixel_attention_mask for a NaFlex tower whose projector unshuffles "
            "blocks of patches, and no other required input"
        )
    declared = _tower_layout(model).get("layout")
    if declared is not None:
        return declared
    if "image_grid_thw" in params:
        return "grid"
    if instructed:
        return "instructed"
    if hybrid:
        return "hybrid"
    if naflex:
        return "naflex"
    if tiled:
        return "tiles"
    if padded:
        return "padded"
    if _patch_embedding(model) is not None:
        return "flat"
    functions = [
        _image_function(model),
        getattr(getattr(model, "model", None), "get_image_features", None),
    ]
    source = "".join(inspect.getsource(f) for f in functions if f is not None)
    return "stacked" if re.search(r"batch_size, num_images, num_channels", source) else "pixels"


def _vision_config(config: Any) -> Any:
    """The vision config: ``vision_config``, a vision encoder-decoder's ``encoder``, a
    VQ-GAN's ``vq_config``, or the config itself."""
    found = getattr(config, "vision_config", None)
    if found is None and hasattr(getattr(config, "encoder", None), "image_size"):
        found = config.encoder
    if found is None and hasattr(getattr(config, "vq_config", None), "resolution"):
        found = config.vq_config  # images as the codes of a VQ-GAN (Chameleon)
    return found or config


def _get(config: Any, *names: str, default: Any = None) -> Any:
    for name in names:
        value = getattr(config, name, None)
        if value is not None:
            return value
    return default


def _side(value: Any) -> int:
    return int(value[0]) if isinstance(value, (list, tuple)) else int(value)


def check_image_inputs(
    layout: str,
    pixel_values: Any,
    channels: int,
    width: int,
    patch: tuple[int, ...] = (),
    frames: int = 0,
) -> None:
    """A ValueError that says what the vision encoder takes, unless ``pixel_values`` has
    the rank and channels (or patch width) of ``layout``; for ``patches``, ``patch`` is
    the shape of one patch, ``(temporal_patch_size, patch_size, patch_size, channels)``;
    for videos of ``frames`` frames, ``(videos, frames, channels, height, width)``."""
    shape = tuple(getattr(pixel_values, "shape", ()))
    if frames:
        ok = len(shape) == 5 and shape[1:3] == (frames, channels)
        wanted = (
            f"(videos, {frames}, {channels}, height, width): {frames} frames of each video, "
            "as the processor samples them"
        )
    elif layout == "patches":
        ok = len(shape) == 5 and shape[1:] == tuple(patch)
        frames, side, _, depth = patch
        wanted = (
            f"(patches, {', '.join(map(str, patch))}): the patches of every image one after "
            f"the other, each {frames} frames of {side}x{side} pixels with {depth} channels "
            "last, as the processor cuts them"
        )
    elif layout in ("pixels", "stacked", "tiles", "padded", "instructed", "hybrid"):
        ok = len(shape) == 4 and shape[1] == channels
        wanted = f"(images, {channels}, height, width)"
        if layout == "tiles":
            wanted = (
                f"(tiles, {channels}, height, width): the tiles of every image, as the "
                "processor cuts them (its pixel_values[i, :tiles of image i], concatenated)"
            )
    elif layout == "flat":
        ok = len(shape) == 3 and shape[2] == width
        wanted = f"(images, patches, {width}): each image's patches flattened"
    elif layout == "flattened":
        ok = len(shape) == 3 and shape[2] == 2 + width
        wanted = (
            f"(images, patches, {2 + width}): each patch's row and column then its pixels, "
            "each image padded with zero rows, as the processor gives flattened_patches"
        )
    elif layout == "naflex":
        ok = len(shape) == 3 and shape[2] == width
        wanted = (
            f"(images, patches, {width}): each image's patches flattened and padded to the "
            "longest, with pixel_attention_mask and spatial_shapes, as the processor gives "
            "them"
        )
    else:
        ok = len(shape) == 2 and shape[1] == width
        wanted = (
            f"(patches, {width}): the patches of every image flattened, as the processor "
            "gives them with image_grid_thw"
        )
    if not ok:
        raise ValueError(
            f"pixel_values must be {wanted}; got shape {shape}. Pass what the model's image "
            "processor returns (a single image as a batch of one: pixel_values[None])."
        )


@functools.cache
def _parts() -> dict[str, type]:
    import torch

    def features(out: Any) -> Any:
        """The feature rows of ``get_image_features``'s output, one per image token."""
        found = getattr(out, "pooler_output", None)
        if found is None:  # a linear patch embedding returns its rows as the last state
            found = getattr(out, "last_hidden_state", None)
        if found is None:
            found = out[0] if isinstance(out, tuple) and len(out) == 1 else out
        if isinstance(found, (list, tuple)):
            found = torch.cat([f.reshape(-1, f.shape[-1]) for f in found], 0)
        return found.reshape(-1, found.shape[-1])

    class PixelEncoder(torch.nn.Module):
        """pixel values of images of one resolution -> the image features."""

        layout = "pixels"

        def __init__(self, model: Any, channels: int, width: int) -> None:
            super().__init__()
            self.model = model
            self.channels, self.width = channels, width
            #: the frames of each video, for a model that reads videos only
            self.frames = video_frames(model)

        def forward(self, pixel_values: Any) -> Any:
            check_image_inputs(self.layout, pixel_values, self.channels, self.width)
            out = _image_function(self.model)(pixel_values=pixel_values)
            # a family whose get_image_features stops before the projector (Llama 4)
            post = _tower_layout(self.model).get("vision_output")
            return features(out) if post is None else post(self.model, out)

    class FlatEncoder(PixelEncoder):
        """the flattened patches of images, ``(images, patches, channels * patch ** 2)``
        as the processor gives them -> one feature row per patch."""

        layout = "flat"

        def forward(self, pixel_values: Any) -> Any:
            check_image_inputs(self.layout, pixel_values, self.channels, self.width)
            return features(_image_function(self.model)(pixel_values=pixel_values))

    class FlattenedEncoder(PixelEncoder):
        """``flattened_patches`` ``(images, patches, 2 + width)``, each patch led by its
        row and column, padding rows zero -> the image features; the tower masks the
        zero rows itself, so the processor's patches are all it takes."""

        layout = "flattened"

        def forward(self, flattened_patches: Any) -> Any:  # type: ignore[override]
            check_image_inputs(self.layout, flattened_patches, self.channels, self.width)
            return features(_image_function(self.model)(flattened_patches=flattened_patches))

    class PatchEncoder(PixelEncoder):
        """the patches of every image, ``(patches, temporal, patch, patch, channels)`` as
        the processor cuts them -> one feature row per patch (each patch encoded alone)."""

        layout = "patches"

        def __init__(self, model: Any, channels: int, width: int) -> None:
            super().__init__(model, channels, width)
            channels, temporal, patch, _ = _grid_sizes(model.config)
            self.patch = (temporal, patch, patch, channels)

        def forward(self, pixel_values: Any) -> Any:
            check_image_inputs(self.layout, pixel_values, self.channels, self.width, self.patch)
            return features(_image_function(self.model)(pixel_values=pixel_values))

    class StackedEncoder(PixelEncoder):
        """pixel values of images of one resolution -> the image features, the images given
        to ``get_image_features`` as the list of one prompt (``(1, images, ...)``)."""

        layout = "stacked"

        def forward(self, pixel_values: Any) -> Any:
            check_image_inputs("pixels", pixel_values, self.channels, self.width)
            return features(_image_function(self.model)(pixel_values=pixel_values[None]))

    class InstructedEncoder(PixelEncoder):
        """pixel values of images of one resolution and, for each image, the prompt's
        tokens in the Q-Former's vocabulary with their mask -> the image features (the
        Q-Former's query outputs, read with the prompt, then projected)."""

        layout = "instructed"

        def forward(  # type: ignore[override]
            self, pixel_values: Any, qformer_input_ids: Any, qformer_attention_mask: Any
        ) -> Any:
            check_image_inputs(
                self.layout, pixel_values, self.channels, self.width, frames=self.frames
            )
            if qformer_input_ids.shape[0] != pixel_values.shape[0]:
                raise ValueError(
                    f"qformer_input_ids holds {qformer_input_ids.shape[0]} prompts for "
                    f"{pixel_values.shape[0]} images: give each image the tokens of its "
                    "prompt in the Q-Former's vocabulary, as the processor does"
                )
            out = _image_function(self.model)(
                pixel_values=pixel_values,
                qformer_input_ids=qformer_input_ids,
                qformer_attention_mask=qformer_attention_mask,
            )
            return features(out)

    class HybridEncoder(PixelEncoder):
        """each image at two resolutions, for two encoders whose features are joined
        (DeepSeek-VL hybrid: a low- and a high-resolution tower) -> the image features."""

        layout = "hybrid"

        def forward(self, pixel_values: Any, high_res_pixel_values: Any) -> Any:  # type: ignore[override]
            check_image_inputs(self.layout, pixel_values, self.channels, self.width)
            check_image_inputs(self.layout, high_res_pixel_values, self.channels, self.width)
            if high_res_pixel_values.shape[0] != pixel_values.shape[0]:
                raise ValueError(
                    f"high_res_pixel_values holds {high_res_pixel_values.shape[0]} images and "
                    f"pixel_values {pixel_values.shape[0]}: give each image at both "
                    "resolutions, as the processor does"
                )
            out = _image_function(self.model)(
                pixel_values=pixel_values, high_res_pixel_values=high_res_pixel_values
            )
            return features(out)

    class NaflexEncoder(PixelEncoder):
        """patch sequences of images of any size, padded to the longest
        (``pixel_attention_mask``), with each image's grid (``spatial_shapes``) and the
        projector's grid of patch rows (:func:`naflex_grid_index`) -> the image features.

        The tower runs as ``get_image_features`` runs it; the blocks the projector
        unshuffles, which ``get_image_features`` lays out for the largest possible image
        and then cuts per image with sizes read in Python, are gathered for the real
        tokens only, by the precomputed index."""

        layout = "naflex"

        def forward(  # type: ignore[override]
            self,
            pixel_values: Any,
            pixel_attention_mask: Any,
            spatial_shapes: Any,
            grid_index: Any,
        ) -> Any:
            check_image_inputs(self.layout, pixel_values, self.channels, self.width)
            base = getattr(self.model, "model", self.model)
            out = base.vision_tower(
                pixel_values=pixel_values,
                spatial_shapes=spatial_shapes,
                pixel_attention_mask=pixel_attention_mask,
                return_dict=True,
            )
            rows = out.last_hidden_state.reshape(-1, out.last_hidden_state.shape[-1])
            features = base.multi_modal_projector(rows[grid_index][None])
            return features.reshape(-1, features.shape[-1])

    class GridEncoder(PixelEncoder):
        """the flattened patches of images, their grids and what the processor side
        computes from the grids (:func:`grid_inputs`) -> the image features.

        The vision tower is called with the precomputed tensors, which it takes instead
        of deriving them from the grids' values with Python loops; its merged output is
        what ``get_image_features`` returns, before splitting it per image. The optional
        inputs are those of towers with window attention (the windows' order and bounds)
        and with an interpolated position table (each patch's taps and weights), and of
        towers with a convolution over each image's grid (each patch's neighbours within
        its image, ``neighbour_index``)."""

        layout = "grid"

        def __init__(self, model: Any, channels: int, width: int) -> None:
            super().__init__(model, channels, width)
            #: a DeepStack tower: it also returns features of its early layers
            self.deepstack = deepstack_layers(model) > 0

        def forward(  # type: ignore[override]
            self,
            pixel_values: Any,
            image_grid_thw: Any,
            cu_seqlens: Any,
            vision_position_ids: Any = None,
            window_index: Any = None,
            cu_window_seqlens: Any = None,
            interp_indices: Any = None,
            interp_weights: Any = None,
            pixel_shuffle_index: Any = None,
            merge_order: Any = None,
            patch_index: Any = None,
            feature_index: Any = None,
            neighbour_index: Any = None,
        ) -> Any:
            check_image_inputs(self.layout, pixel_values, self.channels, self.width)
            optional = {
                "window_index": window_index,
                "cu_window_seqlens": cu_window_seqlens,
                "interp_indices": interp_indices,
                "interp_weights": interp_weights,
                "pixel_shuffle_index": pixel_shuffle_index,
                "patch_index": patch_index,
                "neighbour_index": neighbour_index,
            }
            tower = vision_tower(self.model)
            # a family's vision_call runs the tower's steps on the precomputed tensors
            call = _tower_layout(self.model).get("vision_call")
            run = tower if call is None else functools.partial(call, self.model)
            out = run(
                tower_pixels(self.model, pixel_values.to(tower.dtype)),
                grid_thw=image_grid_thw,
                position_ids=vision_position_ids,
                cu_seqlens=cu_seqlens,
                **{k: v for k, v in optional.items() if v is not None},
            )
            post = _tower_layout(self.model).get("vision_output")
            # the orders a family's steps after the tower take: the patches' (merge_order)
            # and the feature rows' with the rows it adds (feature_index)
            orders = {"merge_order": merge_order, "feature_index": feature_index}
            orders = {k: v for k, v in orders.items() if v is not None}
            if orders:
                return post(self.model, out, **orders)
            if post is not None:
                return post(self.model, out)
            if not self.deepstack:
                return out.pooler_output
            return {"features": out.pooler_output, "deepstack": torch.stack(out.deepstack_features)}

    class TileEncoder(PixelEncoder):
        """the tiles of images of any size and the order of their feature rows
        (:func:`tile_inputs`) -> the image features.

        The steps of ``get_image_features`` before its per-image packing run on the tiles
        (the vision tower, the chosen layers, the projector); the packing, which
        ``get_image_features`` computes from ``image_sizes`` with Python loops, is one
        gather of those rows and the newline row in the order ``feature_index`` gives."""

        layout = "tiles"

        def forward(self, pixel_values: Any, feature_index: Any) -> Any:  # type: ignore[override]
            check_image_inputs(self.layout, pixel_values, self.channels, self.width)
            rows = tile_features(self.model, pixel_values)
            rows = rows.reshape(-1, rows.shape[-1])
            newline = _newline(self.model)
            if newline is not None:
                rows = torch.cat([rows, newline[None].to(rows.dtype)], 0)
            return rows[feature_index]

    class GatherMerger(torch.nn.Module):
        """A Pixtral projector's patch merger on precomputed indices: the
        ``merge x merge`` patches of every merged token gathered by ``index``
        ``(tokens, merge * merge)`` and laid out as ``unfold`` lays them out (each
        feature's patches together), then the merger's own linear layer."""

        def __init__(self, layer: Any, index: Any) -> None:
            super().__init__()
            self.layer, self.index = layer, index

        def forward(self, features: Any, image_sizes: Any = None) -> Any:
            gathered = features[self.index]
            return self.layer(gathered.transpose(1, 2).reshape(gathered.shape[0], -1))

    class PaddedEncoder(PixelEncoder):
        """images of any size padded into one batch (a Pixtral encoder), with what the
        processor side computes from ``image_sizes`` (:func:`padded_inputs`) -> the image
        features.

        The tower's steps run as its forward runs them, with the data-dependent parts
        given: each image's patches cut from the padded convolution output
        (``patch_index``), their 2-D rotary positions, the image each patch belongs to
        (attention stays within an image) and the patches each merged token takes
        (``merge_index``); the projector runs its own forward around the merger."""

        layout = "padded"

        def forward(  # type: ignore[override]
            self,
            pixel_values: Any,
            patch_index: Any,
            vision_position_ids: Any,
            patch_image: Any,
            merge_index: Any,
        ) -> Any:
            check_image_inputs(self.layout, pixel_values, self.channels, self.width)
            tower, projector = _pixtral(self.model)
            embeds = tower.patch_conv(pixel_values.to(tower.patch_conv.weight.dtype))
            rows = embeds.flatten(2).transpose(1, 2).reshape(-1, embeds.shape[1])
            rows = tower.ln_pre(rows[patch_index][None])
            rotary = tower.patch_positional_embedding(rows, vision_position_ids)
            same = patch_image[:, None] == patch_image[None, :]
            low = torch.finfo(rows.dtype).min
            mask = torch.zeros(same.shape, dtype=rows.dtype).masked_fill(~same, low)
            states = [rows]
            for block in tower.transformer.layers:
                states.append(block(states[-1], mask[None, None], position_embeddings=rotary))
            layer = getattr(self.model.config, "vision_feature_layer", None)
            if layer is None:
                chosen = states[-1]
            elif isinstance(layer, int):
                chosen = states[layer]
            else:
                chosen = torch.cat([states[i] for i in layer], -1)
            merger = projector.patch_merger
            projector.patch_merger = GatherMerger(merger.merging_layer, merge_index)
            try:
                return projector(chosen.squeeze(0), None)
            finally:
                projector.patch_merger = merger

    return {
        "pixels": PixelEncoder,
        "stacked": StackedEncoder,
        "instructed": InstructedEncoder,
        "hybrid": HybridEncoder,
        "naflex": NaflexEncoder,
        "grid": GridEncoder,
        "tiles": TileEncoder,
        "padded": PaddedEncoder,
        "flat": FlatEncoder,
        "patches": PatchEncoder,
        "flattened": FlattenedEncoder,
    }


def padded_inputs(model: Any, sizes: Any, height: int, width: int) -> dict[str, Any]:
    """What a Pixtral encoder computes from ``image_sizes`` ``(images, 2)`` for images
    padded to ``height x width`` pixels: for each image's patches (row by row, image
    after image) its row in the padded convolution output flattened, its (row, column)
    rotary position and its image; and ``merge_index``, the patches of every merged
    token, from the model's own patch merger run on patch numbers (its linear layer
    left out)."""
    import torch

    tower, projector = _pixtral(model)
    patch = tower.patch_size
    rows, columns = height // patch, width // patch
    index, positions, images = [], [], []
    for i, (h, w) in enumerate(sizes.tolist()):
        r, c = torch.meshgrid(torch.arange(h // patch), torch.arange(w // patch), indexing="ij")
        index.append(i * rows * columns + r.flatten() * columns + c.flatten())
        positions.append(torch.stack([r.flatten(), c.flatten()], -1))
        images.append(torch.full((r.numel(),), i))
    count = sum(len(x) for x in index)
    merger = projector.patch_merger
    layer = merger.merging_layer
    merger.merging_layer = torch.nn.Identity()
    try:
        numbers = merger(torch.arange(count, dtype=torch.float64)[:, None], sizes)
    finally:
        merger.merging_layer = layer
    return {
        "patch_index": torch.cat(index),
        "vision_position_ids": torch.cat(positions),
        "patch_image": torch.cat(images),
        "merge_index": numbers.round().to(torch.int64),
    }


def padded_images(
    model: Any, images: list[tuple[int, int]], generator: Any, channels: int
) -> tuple[dict[str, Any], Any]:
    """The ``padded`` input set of ``images`` (sizes in patches) and the ``image_sizes``
    the processor gives with it."""
    import torch

    patch = _pixtral(model)[0].patch_size
    sizes = torch.tensor([(h * patch, w * patch) for h, w in images])
    height, width = int(sizes[:, 0].max()), int(sizes[:, 1].max())
    pixels = torch.randn((len(images), channels, height, width), generator=generator)
    for i, (h, w) in enumerate(sizes.tolist()):  # the processor pads with zeros
        pixels[i, :, h:] = 0
        pixels[i, :, :, w:] = 0
    return {"pixel_values": pixels, **padded_inputs(model, sizes, height, width)}, sizes


def _newline(model: Any) -> Any:
    """The learned newline row of an any-resolution model, None when it has none."""
    for owner in (getattr(model, "model", None), model):
        found = getattr(owner, "image_newline", None)
        if found is not None:
            return found
    return None


def tile_features(model: Any, pixel_values: Any) -> Any:
    """``(tiles, tokens, width)``: what ``get_image_features`` of an any-resolution model
    computes for each tile before splitting them per image and packing them: the vision
    tower's chosen hidden states (one layer, or several concatenated), without the class
    token under the ``default`` strategy, through the projector."""
    import torch

    base = getattr(model, "model", model)
    config = model.config
    out = base.vision_tower(pixel_values, output_hidden_states=True, return_dict=True)
    layer = config.vision_feature_layer
    if isinstance(layer, int):
        chosen = out.hidden_states[layer]
    else:
        chosen = torch.cat([out.hidden_states[i] for i in layer], -1)
    if getattr(config, "vision_feature_select_strategy", None) == "default":
        chosen = chosen[:, 1:]
    return base.multi_modal_projector(chosen)


def tile_counts(model: Any, sizes: Any) -> list[int]:
    """The tiles of each image of ``sizes`` ``(images, 2)``, base view included, from the
    model's modeling module's ``image_size_to_num_patches``."""
    import sys

    module = sys.modules[type(getattr(model, "model", model)).__module__]
    return [
        int(
            module.image_size_to_num_patches(
                image_size=size,
                grid_pinpoints=model.config.image_grid_pinpoints,
                patch_size=_pixel_sizes(model.config)[1],
            )
        )
        for size in sizes
    ]


def tile_inputs(model: Any, sizes: Any, tokens: int) -> tuple[list[int], Any]:
    """The tiles of each image of ``sizes`` ``(images, 2)`` (height, width in pixels) and
    ``feature_index``: for every feature row ``get_image_features`` returns, its row in
    the tiles' features flattened (``tiles * tokens`` rows) followed by the newline row.

    Both come from the model's own code: the tile counts from its modeling module's
    ``image_size_to_num_patches``, the index from ``pack_image_features`` run on the row
    numbers instead of features (a newline numbered after the last row), so that
    unpadding, reordering and newline rows are whatever the model does."""
    import torch

    config = model.config
    counts = tile_counts(model, sizes)
    rows = sum(counts) * tokens
    numbers = torch.arange(rows, dtype=torch.float64).reshape(sum(counts), tokens, 1)
    pack = _packer(model)
    params = inspect.signature(pack).parameters
    given: dict[str, Any] = {}
    if _newline(model) is not None:
        given["image_newline"] = torch.tensor([float(rows)], dtype=torch.float64)
    for name in ("vision_feature_select_strategy", "vision_aspect_ratio"):
        if name in params and getattr(config, name, None) is not None:
            given[name] = getattr(config, name)
    packed = pack(list(torch.split(numbers, counts)), sizes, **given)[0]
    if isinstance(packed, (list, tuple)):
        packed = torch.cat(list(packed))
    packed = packed.reshape(-1)
    if not (packed == packed.round()).all() or packed.min() < 0 or packed.max() > rows:
        raise ValueError(
            f"pack_image_features does more than reorder rows for image_sizes "
            f"{sizes.tolist()}: on row numbers it returns values that are no row numbers "
            "(an interpolation?), so its order cannot be precomputed"
        )
    return counts, packed.to(torch.int64)


def tile_images(
    model: Any, images: list[tuple[float, float]], generator: Any, channels: int, side: int
) -> tuple[dict[str, Any], Any]:
    """The ``tiles`` input set of ``images`` (sizes in units of ``side``) and the
    ``image_sizes`` the processor would give with it."""
    import torch

    sizes = torch.tensor([(round(h * side), round(w * side)) for h, w in images])
    with torch.no_grad():
        tokens = tile_features(model, torch.zeros((1, channels, side, side))).shape[1]
    counts, index = tile_inputs(model, sizes, tokens)
    tiles = torch.randn((sum(counts), channels, side, side), generator=generator)
    return {"pixel_values": tiles, "feature_index": index}, sizes


def processor_tiles(pixel_values: Any, sizes: Any, model: Any) -> dict[str, Any]:
    """The tiles of a ``tiles`` input set as the processor gives them: ``pixel_values``
    ``(images, most tiles, channels, size, size)``, each image's tiles then zeros, and
    ``image_sizes``."""
    import torch

    counts = tile_counts(model, sizes)
    padded = torch.zeros((len(counts), max(counts), *pixel_values.shape[1:]))
    for i, part in enumerate(torch.split(pixel_values, counts)):
        padded[i, : counts[i]] = part
    return {"pixel_values": padded, "image_sizes": sizes}


def rope_index(model: Any) -> Any:
    """``get_rope_index`` of a model with multimodal rope (of the model or of its base
    model): the prompt's positions and every row's offset, None for other models."""
    for owner in (model, getattr(model, "model", None)):
        function = getattr(owner, "get_rope_index", None)
        if function is not None:
            return function
    return None


def _tower_layout(model: Any) -> dict[str, Any]:
    """The family's ``input_layouts`` entry of a variable-resolution model whose tower is
    not named ``visual``: ``vision_tower`` (its attribute) and ``vision_output`` (the steps
    ``get_image_features`` takes after it, ``(model, tower output) -> features``; for
    images of one resolution, the steps the forward takes after ``get_image_features``,
    ``(model, its output) -> features``); or of a
    model that declares its ``layout``. A tower that cannot take every tensor computed from
    the grids precomputed also names ``vision_call`` ``(model, patches, grid_thw=...,
    position_ids=..., cu_seqlens=..., **optional) -> tower output`` (its steps on those
    tensors), ``grid_inputs`` ``(model, grids) -> tensors`` (them, ``patch_index`` among
    the optional ones) and ``processor_grid`` ``(model, grids) -> grids`` (the grids in the
    units its processor gives them to ``generate``). ``processor_extras`` ``(model,
    processor's grids) -> tensors`` adds what else its processor gives ``generate`` beside
    the pixels and grids (each image's merge size). A model that takes the grids under
    another name than ``image_grid_thw`` names it ``grid_argument``, and one whose image
    token covers other than ``spatial_merge_size`` patches a side names ``merge_size``
    ``(config) -> int``. A family that builds its vision encoder's inputs itself (Gemma 4:
    patches at their own positions) names ``encoder`` ``(model, channels, width) ->
    module``, ``image_sets`` ``(model, generator) -> (sets, labels)``, ``image_shapes``
    ``(model) -> (dynamic shapes, note)``, ``generation_image`` ``(model, generator) ->
    inputs`` and ``processor_names`` (those of them its processor gives ``generate``), or
    ``processor_image`` ``(model, inputs) -> what its processor gives generate`` (Emu3:
    the padded pixels and ``image_sizes``), and ``image_arguments``: the arguments
    ``get_image_features`` requires that its encoder's inputs stand for;
    ``prepare_config`` ``(config, tiny_config) -> (config, note)`` completes a config
    that lacks what the task builds, and ``step_ids`` / ``step_kwargs`` make the decoder
    step take ids beside the embeddings, those of every position it sees with
    ``step_ids_seen`` (:func:`exportcheck.tasks._audio_lm.merged_lm`), and
    ``deepstack_layers`` ``(model) -> int`` gives a family's encoder that returns
    DeepStack features a decoder step taking them (:func:`deepstack_layers`), and
    ``cache_max`` (int) the decoder step's cache bound, for a family whose one image
    takes more tokens than the task's bound, and ``decoded_tokens`` ``(counts, note)``,
    for a cache that keeps the prompt apart from the tokens decoded after it: how many of
    each decoder input set's cached tokens the model decodes after the prompt
    (:func:`exportcheck.tasks._audio_lm.merged_lm`), and what the row's notes say of it."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    return INPUT_LAYOUTS.get(model_type, ({}, ""))[0]


def tower_pixels(model: Any, pixel_values: Any) -> Any:
    """The flattened patches ``(patches, width)`` in the shape the tower takes them: as
    they are, or as the family's ``vision_input`` ``(model, patches) -> tensor`` lays them
    out (a tower that takes ``(1, patches, channels, patch, patch)``)."""
    reshape = _tower_layout(model).get("vision_input")
    return pixel_values if reshape is None else reshape(model, pixel_values)


def processor_patches(model: Any, pixel_values: Any) -> Any:
    """The flattened patches ``(patches, width)`` as the model's processor gives them to
    ``generate``: as they are, or as the family's ``processor_pixels`` lays them out."""
    reshape = _tower_layout(model).get("processor_pixels")
    return pixel_values if reshape is None else reshape(model, pixel_values)


def processor_grid_images(model: Any, image: dict[str, Any]) -> dict[str, Any]:
    """A grid layout's pixels and grids as the model's processor gives them to
    ``generate``: :func:`processor_patches`, and the grids in the processor's units when
    the family names ``processor_grid``."""
    image = {**image, "pixel_values": processor_patches(model, image["pixel_values"])}
    grid = _tower_layout(model).get("processor_grid")
    if grid is not None:
        image["image_grid_thw"] = grid(model, image["image_grid_thw"])
    extras = _tower_layout(model).get("processor_extras")
    if extras is not None:  # what else the processor gives from the grids
        image.update(extras(model, image["image_grid_thw"]))
    name = _tower_layout(model).get("grid_argument")
    if name is not None:  # the model takes the grids under another name
        image[name] = image.pop("image_grid_thw")
    return image


def vision_tower(model: Any) -> Any:
    """The vision tower of a variable-resolution model (``visual``, or the attribute its
    family names, of the model or of its base model), None when it has none."""
    name = _tower_layout(model).get("vision_tower", "visual")
    for owner in (model, getattr(model, "model", None)):
        tower = getattr(owner, name, None)
        if tower is not None:
            return tower
    return None


#: transformers' helpers that compute a tower's inputs from the grids, and the keyword
#: under which the tower takes each of their results precomputed
_GRID_HELPERS = {
    "get_vision_cu_seqlens": ("cu_seqlens",),
    "get_vision_attention_seqlens": ("cu_seqlens", None),
    "get_vision_position_ids": ("position_ids",),
    "get_vision_window_index": ("window_index", "cu_window_seqlens"),
    "get_vision_interpolation_indices_and_weights": ("interp_indices", "interp_weights"),
    "get_vision_pixel_shuffle_index": ("pixel_shuffle_index",),
}


def recorded_grid_inputs(model: Any, grid: Any, width: int) -> dict[str, Any]:
    """What the tower computes from the grids, recorded from one eager call of the tower
    on patches of those grids: each result of transformers' helpers
    (:data:`_GRID_HELPERS`) under the keyword the tower takes it precomputed. For a tower
    whose helpers take options of its own (a temporal axis in the positions, one window
    per clip), the record is what the tower itself would compute."""
    import sys

    import torch

    tower = vision_tower(model)
    module = sys.modules[type(tower).__module__]
    seen: dict[str, Any] = {}
    originals = {n: getattr(module, n) for n in _GRID_HELPERS if hasattr(module, n)}

    def recording(name: str, function: Any) -> Any:
        def call(*args: Any, **kwargs: Any) -> Any:
            out = function(*args, **kwargs)
            keys = _GRID_HELPERS[name]
            for key, value in zip(keys, out if len(keys) > 1 else (out,), strict=True):
                if key is not None and torch.is_tensor(value):
                    seen.setdefault(key, value)
            return out

        return call

    patches = torch.zeros((int(grid.prod(-1).sum()), width), dtype=tower.dtype)
    try:
        for name, function in originals.items():
            setattr(module, name, recording(name, function))
        with torch.no_grad():
            tower(tower_pixels(model, patches), grid_thw=grid)
    finally:
        for name, function in originals.items():
            setattr(module, name, function)
    out = {"vision_position_ids": seen.pop("position_ids"), **seen}
    return out


def deepstack_layers(model: Any) -> int:
    """How many of the language model's first layers get a DeepStack tower's early-layer
    features (as many as the tower gives, or as the language model has), 0 for other
    models; a family's ``deepstack_layers`` ``(model) -> int`` counts them for a tower
    of another shape."""
    counted = _tower_layout(model).get("deepstack_layers")
    if counted is not None:
        return counted(model)
    tower = vision_tower(model)
    mergers = getattr(tower, "deepstack_merger_list", None) if tower is not None else None
    if not mergers:
        return 0
    return min(len(mergers), len(_audio_lm.text_layers(model)))


def _window(tower: Any) -> tuple[int, int] | None:
    """(window size, patch size) of a tower with window attention, None without."""
    size = getattr(tower, "window_size", None)
    patch = getattr(tower, "patch_size", None)
    return (size, patch) if isinstance(size, int) and isinstance(patch, int) else None


def grid_inputs(model: Any, grid: Any) -> dict[str, Any]:
    """What the processor side computes from the grids ``(images, 3)`` for the vision
    tower, with transformers' own helpers: the rotary position of every patch, the
    cumulative lengths of the images, and for window attention the windows' order and
    bounds."""
    from transformers import vision_utils

    layout = _tower_layout(model)
    if "grid_inputs" in layout:  # the family computes them from the grids
        return layout["grid_inputs"](model, grid)
    if "vision_tower" in layout:
        extras = layout.get("grid_extras")
        return {
            **recorded_grid_inputs(model, grid, _grid_width(model.config)),
            **(extras(model, grid) if extras is not None else {}),
        }
    tower = vision_tower(model)
    merge = tower.spatial_merge_size
    out = {
        "vision_position_ids": vision_utils.get_vision_position_ids(grid, merge),
        "cu_seqlens": vision_utils.get_vision_cu_seqlens(grid),
    }
    window = _window(tower)
    if window is not None:
        out["window_index"], out["cu_window_seqlens"] = vision_utils.get_vision_window_index(
            grid, merge, *window
        )
    side = getattr(tower, "num_grid_per_side", None)
    if isinstance(side, int):
        out["interp_indices"], out["interp_weights"] = (
            vision_utils.get_vision_interpolation_indices_and_weights(
                grid,
                side,
                mode=getattr(tower, "interpolation_mode", "bilinear"),
                align_corners=bool(getattr(tower, "interpolation_align_corners", False)),
                spatial_merge_size=tower.config.spatial_merge_size,
            )
        )
    return out


def _grid_sizes(config: Any) -> tuple[int, int, int, int]:
    """(channels, temporal patch, patch, spatial merge) of a patch-sequence encoder."""
    vision = _vision_config(config)
    channels = int(_get(vision, "in_channels", "num_channels", "in_chans", default=3))
    # a config that names no temporal patch size patches one frame at a time
    temporal = int(_get(vision, "temporal_patch_size", "patch_temporal", default=1))
    patch = _side(_get(vision, "patch_size", "spatial_patch_size", default=14))
    merge = int(_get(vision, "spatial_merge_size", "merge_size", default=2))
    declared = INPUT_LAYOUTS.get(getattr(config, "model_type", None), ({}, ""))[0]
    if "merge_size" in declared:  # the family's patches a side of one image token
        merge = int(declared["merge_size"](config))
    return channels, temporal, patch, merge


def _grid_width(config: Any) -> int:
    """The width of one flattened patch: channels x temporal x patch x patch."""
    channels, temporal, patch, _ = _grid_sizes(config)
    return channels * temporal * patch * patch


def _pixel_sizes(config: Any) -> tuple[int, int]:
    """(channels, side) of a fixed-resolution encoder."""
    vision = _vision_config(config)
    channels = int(_get(vision, "num_channels", "in_channels", default=3))
    size = _get(vision, "image_size", "resolution", default=None)
    if size is None:
        raise ValueError(
            f"{type(vision).__name__} sets no image_size: exportcheck builds pixel_values "
            "at the resolution the model's processor resizes images to"
        )
    return channels, _side(size)


def _image_sets(
    layout: str, model: Any, config: Any, generator: Any
) -> tuple[list[dict[str, Any]], list[str], list[Any]]:
    """The vision encoder's input sets, their labels and, for ``tiles``, the
    ``image_sizes`` of each set (the processor's, which the graph does not take)."""
    import torch

    sizes: list[Any] = []
    if layout == "tiles":
        channels, side = _pixel_sizes(config)
        sets, labels = [], []
        for images in TILE_IMAGES:
            feeds, given = tile_images(model, images, generator, channels, side)
            sets.append(feeds)
            sizes.append(given)
            labels.append(
                f"images={len(images)} tiles={feeds['pixel_values'].shape[0]} sizes="
                + ",".join(f"{h}x{w}" for h, w in given.tolist())
            )
        _check_tiles(model, sets, sizes)
    elif layout == "padded":
        channels = _pixel_sizes(config)[0]
        sets, labels = [], []
        for images in PADDED_IMAGES:
            feeds, given = padded_images(model, images, generator, channels)
            sets.append(feeds)
            sizes.append(given)
            labels.append(
                f"images={len(images)} patches={feeds['patch_index'].shape[0]} sizes="
                + ",".join(f"{h}x{w}" for h, w in given.tolist())
            )
        _check_encoder(model, "padded", sets, sizes)
    elif layout == "naflex":
        sets, labels = [], []
        for grids in NAFLEX_GRIDS:
            feeds = naflex_images(model, grids, generator)
            sets.append(feeds)
            sizes.append(feeds["spatial_shapes"])
            shown = ",".join(f"{h}x{w}" for h, w in grids)
            if len(set(grids)) == 1 and len(grids) > 1:
                shown = f"{len(grids)} of {grids[0][0]}x{grids[0][1]}"
            labels.append(
                f"images={len(grids)} patches={feeds['pixel_values'].shape[1]} grids={shown}"
            )
        _check_encoder(model, "naflex", sets, sizes)
    elif layout == "flat":
        width = _patch_embedding(model).in_features
        sets = [
            {"pixel_values": torch.randn((n, patches, width), generator=generator)}
            for n, patches in FLAT_PATCHES
        ]
        labels = [f"images={n} patches={patches}" for n, patches in FLAT_PATCHES]
    elif layout == "flattened":
        sets, labels = [], []
        for counts in FLATTENED_IMAGES:
            given = _image_seq2seq.flattened_patches(config, counts, generator)
            sets.append({"flattened_patches": given["flattened_patches"]})
            shown = ",".join(map(str, counts))
            if len(set(counts)) == 1 and len(counts) > 1:
                shown = f"{len(counts)} of {counts[0]}"
            labels.append(f"images={len(counts)} patches={shown}")
    elif layout == "patches":
        channels, temporal, patch, _ = _grid_sizes(config)
        sets = [
            {
                "pixel_values": torch.randn(
                    (sum(images), temporal, patch, patch, channels), generator=generator
                )
            }
            for images in PATCH_IMAGES
        ]
        labels = [
            f"images={len(images)} patches={sum(images)} per image=" + ",".join(map(str, images))
            for images in PATCH_IMAGES
        ]
    elif layout != "grid":
        channels, side = _pixel_sizes(config)
        frames = video_frames(model)
        per_image = (frames, channels, side, side) if frames else (channels, side, side)
        sets = [
            {"pixel_values": torch.randn((n, *per_image), generator=generator)}
            for n in IMAGE_COUNTS
        ]
        labels = [f"images={n} {side}x{side}" for n in IMAGE_COUNTS]
        if frames:
            labels = [f"videos={n} frames={frames} {side}x{side}" for n in IMAGE_COUNTS]
        if layout == "hybrid":
            high = _side(config.high_res_vision_config.image_size)
            for feeds in sets:
                shape = (feeds["pixel_values"].shape[0], channels, high, high)
                feeds["high_res_pixel_values"] = torch.randn(shape, generator=generator)
            labels = [f"{lab} high-res {high}x{high}" for lab in labels]
        if layout == "instructed":
            lengths = [*QFORMER_LENGTHS, QFORMER_LENGTH_MAX]
            for feeds, length in zip(sets, lengths, strict=True):
                images = feeds["pixel_values"].shape[0]
                feeds.update(qformer_prompts(config, images, length, generator))
            labels = [f"{lab} prompt={n}" for lab, n in zip(labels, lengths, strict=True)]
    else:
        channels, temporal, patch, merge = _grid_sizes(config)
        width = channels * temporal * patch * patch
        sets, labels = [], []
        for grids in GRIDS:
            thw = torch.tensor([(t, h * merge, w * merge) for t, h, w in grids], dtype=torch.int64)
            patches = int(thw.prod(-1).sum())
            sets.append(
                {
                    "pixel_values": torch.randn((patches, width), generator=generator),
                    "image_grid_thw": thw,
                    **grid_inputs(model, thw),
                }
            )
            labels.append(
                f"images={len(grids)} patches={patches} grids="
                + ",".join(f"{h}x{w}" for _, h, w in thw.tolist())
            )
    labels[-1] += " at bounds"
    return sets, labels, sizes


def qformer_prompts(config: Any, images: int, length: int, generator: Any) -> dict[str, Any]:
    """Each image's prompt in the Q-Former's vocabulary, as the processor tokenizes it:
    random ids of ``length`` tokens, the first row right-padded by two when it is long
    enough (the tokenizer pads after the text)."""
    import torch

    from ._tokens import random_ids

    ids = random_ids(config.qformer_config, (images, length), generator)
    mask = torch.ones_like(ids)
    if length > 2:
        mask[0, -2:] = 0
        ids[0, -2:] = config.qformer_config.pad_token_id or 0
    return {"qformer_input_ids": ids, "qformer_attention_mask": mask}


def _check_tiles(model: Any, sets: list[dict[str, Any]], sizes: list[Any]) -> None:
    """:func:`_check_encoder` for the ``tiles`` layout."""
    _check_encoder(model, "tiles", sets, sizes)


def _processor_images(layout: str, feeds: dict[str, Any], sizes: Any, model: Any) -> dict:
    """A ``tiles``, ``padded`` or ``naflex`` input set as the processor gives it."""
    if layout == "tiles":
        return processor_tiles(feeds["pixel_values"], sizes, model)
    if layout == "naflex":
        return {k: v for k, v in feeds.items() if k != "grid_index"}
    return {"pixel_values": feeds["pixel_values"], "image_sizes": sizes}


def _check_encoder(model: Any, layout: str, sets: list[dict[str, Any]], sizes: list[Any]) -> None:
    """A ValueError unless the ``tiles`` or ``padded`` encoder, which takes precomputed
    what ``get_image_features`` computes from ``image_sizes``, gives what the model's own
    ``get_image_features`` gives with the processor's inputs, on every set."""
    import torch

    if layout == "naflex":
        width = sets[0]["pixel_values"].shape[-1]
        encoder = _parts()[layout](model, 0, width)
    else:
        encoder = _parts()[layout](model, _pixel_sizes(model.config)[0], 0)
    for i, (feeds, given) in enumerate(zip(sets, sizes, strict=True)):
        with torch.no_grad():
            mine = encoder(**feeds)
            out = _image_function(model)(**_processor_images(layout, feeds, given, model))
        found = getattr(out, "pooler_output", out)
        if isinstance(found, (list, tuple)):
            found = torch.cat([f.reshape(-1, f.shape[-1]) for f in found])
        if mine.shape != found.shape or not torch.allclose(mine, found, atol=1e-6, rtol=0):
            why = {
                "tiles": "pack_image_features does more than reorder rows for these sizes "
                "(an interpolation?), so its order cannot be precomputed",
                "naflex": "the projector's blocks are not the patch rows the index gives",
            }.get(
                layout,
                "the encoder computes more from image_sizes than the patches' rows, "
                "positions, images and merged groups given precomputed",
            )
            raise ValueError(
                f"the images of input set {i} (image_sizes {given.tolist()}) give other "
                f"features ({tuple(mine.shape)}) through the precomputed inputs than "
                f"through get_image_features ({tuple(found.shape)}): {why}"
            )


def _modeling_source(config: Any) -> str:
    """The source of the modeling module beside ``config``'s configuration module ("" if
    there is none)."""
    import importlib

    name = type(config).__module__.replace(".configuration_", ".modeling_")
    try:
        return inspect.getsource(importlib.import_module(name))
    except (ImportError, OSError, TypeError):
        return ""


#: the weight initialisation deviation given to a vision sub-config that sets a tiny one
INIT_RANGE = 0.02


def _usable_init_ranges(config: Any) -> list[str]:
    """Sub-configs that initialise their weights with a deviation under 1e-6 (SAM-style
    and BLIP vision towers: 1e-10, as trained weights replace them) get
    :data:`INIT_RANGE`: untrained, their outputs are about 1e-20 and the image features
    do not depend on the image, so the checks could not see an error on its path."""
    notes = []

    def visit(owner: Any, prefix: str) -> None:
        for name, sub in vars(owner).items():
            if not (hasattr(sub, "to_dict") and hasattr(sub, "model_type")):
                continue
            value = getattr(sub, "initializer_range", None)
            if isinstance(value, float) and value < 1e-6:
                sub.initializer_range = INIT_RANGE
                notes.append(
                    f"{prefix}{name}.initializer_range {value:g} -> {INIT_RANGE}: untrained "
                    "weights that small make the image features about 1e-20, the same for "
                    "every image"
                )
            visit(sub, f"{prefix}{name}.")

    visit(config, "")
    return notes


def fit_config(config: Any) -> list[str]:
    """Make the tiny config's vision-to-text sizes agree, as the checkpoints' do; returns a
    note for each change.

    * ``mrope_section``: the rotary frequencies given to time, height and width; their
      sum must be half the rotary dimensions. A config without it takes the modeling
      code's default, sized for the published head dim: the tiny head dim gets sections
      of the same proportions.
    * ``initializer_range`` of a vision sub-config, when tiny (:func:`_usable_init_ranges`).
    * ``mm_tokens_per_image``: Gemma 3 pools the patches of each side by
      ``patches // sqrt(tokens)``; the tiny vision config has fewer patches per side than
      the published token count, so the tokens become the square of half its patches.
    """
    import re

    notes = []
    text = config.get_text_config(decoder=True)
    source = _modeling_source(config) + _modeling_source(text)
    rope = getattr(text, "rope_parameters", None)
    if "mrope_section" in source and isinstance(rope, dict) and "rope_type" in rope:
        heads = getattr(text, "num_attention_heads", 1)
        head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
        partial = rope.get("partial_rotary_factor", getattr(text, "partial_rotary_factor", 1.0))
        half = int(head_dim * (partial or 1.0)) // 2
        found = re.search(r"mrope_section\", \[(\d+), (\d+), (\d+)\]", source)
        old = list(
            rope.get("mrope_section")
            or ([int(x) for x in found.groups()] if found else [16, 24, 24])
        )
        if sum(old) != half:
            new = rescale_sections(old, half)
            rope["mrope_section"] = new
            notes.append(
                f"rope mrope_section {old} -> {new}: the sections of time, height and width "
                f"sum to half the tiny model's rotary dimensions ({half})"
            )
    notes.extend(_usable_init_ranges(config))
    vision = _vision_config(config)
    size, patch = getattr(vision, "image_size", None), getattr(vision, "patch_size", None)
    if isinstance(patch, (list, tuple)) and len(set(patch)) == 1:
        patch = patch[0]
    side = size[0] if isinstance(size, (list, tuple)) and len(set(size)) == 1 else size
    shuffle = getattr(config, "scale_factor", None)
    if isinstance(side, int) and isinstance(patch, int):
        too_many = side > PATCHES_PER_SIDE * patch
        unshuffled = isinstance(shuffle, int) and (side // patch) % shuffle != 0
        if too_many or unshuffled:
            fitted = PATCHES_PER_SIDE * patch
            vision.image_size = [fitted] * len(size) if isinstance(size, (list, tuple)) else fitted
            why = (
                f"a multiple of the {shuffle}x{shuffle} patches the pixel shuffle groups"
                if unshuffled and not too_many
                else "few image tokens for the tiny model"
            )
            notes.append(
                f"vision_config.image_size {size} -> {vision.image_size}: {PATCHES_PER_SIDE} "
                f"patches per side, {why} (the position table is sized from it)"
            )
            pinpoints = getattr(config, "image_grid_pinpoints", None)
            if pinpoints and all(v % side == 0 for point in pinpoints for v in point):
                config.image_grid_pinpoints = [[v // side * fitted for v in p] for p in pinpoints]
                notes.append(
                    f"image_grid_pinpoints scaled by {fitted}/{side}: the grids of tiles an "
                    "image can be cut into stay the same, in tiles of the new image_size"
                )
    width = getattr(vision, "out_hidden_size", None)
    if isinstance(width, int) and width != text.hidden_size:
        vision.out_hidden_size = text.hidden_size
        notes.append(
            f"vision_config.out_hidden_size {width} -> {text.hidden_size}: the vision tower's "
            "merger writes rows of the language model's width, which the tiny text config "
            "shrank"
        )
    layers = getattr(vision, "num_hidden_layers", None)
    for name in ("vision_feature_layers", "vision_feature_layer"):
        chosen = getattr(config, name, None)
        if isinstance(layers, int) and isinstance(chosen, (list, tuple)):
            # hidden_states holds the embeddings and each layer's output: layers + 1
            kept = [max(-(layers + 1), min(i, layers)) for i in chosen]
            if kept != list(chosen):
                setattr(config, name, kept)
                notes.append(
                    f"{name} {list(chosen)} -> {kept}: the layers read are clamped to the "
                    f"tiny vision encoder's {layers} (as many, so the projector's width stays)"
                )
    tokens = getattr(config, "mm_tokens_per_image", None)
    size, patch = getattr(vision, "image_size", None), getattr(vision, "patch_size", None)
    if isinstance(tokens, int) and isinstance(size, int) and isinstance(patch, int):
        side = size // patch
        if side % round(tokens**0.5):
            fitted = (side // 2) ** 2
            config.mm_tokens_per_image = fitted
            notes.append(
                f"mm_tokens_per_image {tokens} -> {fitted}: the tiny vision encoder has "
                f"{side} patches per side, pooled to {side // 2} tokens per side"
            )
    start = _vision_start(config, source)
    if start is not None and getattr(config, "vision_start_token_id", None) is None:
        config.vision_start_token_id = start
        notes.append(
            f"vision_start_token_id {start}: get_rope_index finds each image by the token "
            "before it, and this config (as shipped) does not name that token; it gets a "
            "free id of the tiny vocabulary, and the prompt puts it before the image tokens "
            "as the chat template does"
        )
    return notes


def _vision_start(config: Any, source: str) -> int | None:
    """A free token id for the token the chat template puts before an image, when the
    model's ``get_rope_index`` reads ``config.vision_start_token_id``; None otherwise."""
    if "self.config.vision_start_token_id" not in source:
        return None
    given = getattr(config, "vision_start_token_id", None)
    if isinstance(given, int):
        return given
    text = config.get_text_config(decoder=True)
    used = {
        value
        for holder in (config, text)
        for name, value in vars(holder).items()
        if name.endswith(("_token_id", "_token_index")) and isinstance(value, int)
    }
    free = text.vocab_size - 1
    while free in used:
        free -= 1
    return free


class ImageTextToText(Task):
    """Vision-language LMs: vision encoder, token embedding and decoder step with cache."""

    name = "image-text-to-text"
    mapping = "MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES"
    auto_class = "AutoModelForImageTextToText"
    rank = 45
    new_tokens = _audio_lm.NEW_TOKENS
    status_intro = (
        "Every vision-language model of the installed transformers "
        "(``MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES``), built untrained from a tiny "
        "config and exported as the parts a runtime drives: the vision encoder (pixel "
        "values, with ``image_grid_thw`` for the Qwen2-VL family's patch sequences, and "
        "what the processor side computes from the grids or the image sizes -> one "
        "feature row per image token), the token embedding and the decoder step on input "
        "embeddings with its cache. Each graph runs on seven input sets of distinct shapes "
        "(one left-padded prompt, new image counts and grids, one set at the declared "
        "bounds) against eager PyTorch; the decoder step is first checked against a full "
        "forward. Then 8 tokens are generated greedily through each runtime (the vision "
        "encoder once, its features merged at the image tokens, each step's cache fed "
        "back) and compared with eager ``generate(do_sample=False)`` on the same image."
    )

    def build(self, config: Any, *, seed: int = 0) -> UntrainedModel:
        import torch
        import transformers

        # a family whose shipped config lacks what the task builds (a vision config)
        prepare = INPUT_LAYOUTS.get(config.model_type, ({}, ""))[0].get("prepare_config")
        prepared = ""
        if prepare is not None:
            config, prepared = prepare(config, tiny_config)
        fitted = fit_config(config)
        if prepared:
            fitted.append(prepared)
        if _image_seq2seq.is_encoder_decoder(config):
            m = _ENCODER_DECODER.build(config, seed=seed)
            m.notes[:0] = [
                f"image encoder-decoder: {type(m.model).__name__}'s decoder cross-attends "
                "to the image encoder's states; exported as encoder, decoder_init and "
                "decoder, as the text and speech encoder-decoders",
                *fitted,
            ]
            return m
        torch.manual_seed(seed)
        model = getattr(transformers, self.auto_class).from_config(config)
        # float(), not to(float32): a complex buffer (Llama 4's vision rotary table) keeps
        # its imaginary part, which to() would drop
        model = model.float().eval()
        prepare_weights(model, config)
        # -1: a model whose features fill a masked span has no placeholder id to avoid
        token = -1 if image_span(model) is not None else image_token(config)
        if token == -1:
            fitted.append(f"image span mask: {INPUT_LAYOUTS[config.model_type][1]}")
        layout = vision_layout(model)
        if layout == "flat":
            channels, width = 0, _patch_embedding(model).in_features
        elif layout == "naflex":
            vision = _vision_config(config)
            channels, width = 0, int(vision.num_channels) * int(vision.patch_size) ** 2
        elif layout == "patches":
            channels, width = _grid_sizes(config)[0], _grid_width(config)
        elif layout == "flattened":  # the pixels of a patch, after its row and column
            channels, width = 0, int(_vision_config(config).patch_embed_hidden_size)
        elif "encoder" in _tower_layout(model):  # the family builds its encoder and sets
            channels, width = 0, 0
        elif layout != "grid":
            channels, side = _pixel_sizes(config)
            width = 0
        else:
            channels = _grid_sizes(config)[0]
            width = _grid_width(config)
        if layout == "grid":
            tower = vision_tower(model)
            if tower is None:
                raise ValueError(
                    f"{type(model).__name__} has no vision tower named visual: exportcheck "
                    "feeds a variable-resolution encoder the positions and image bounds "
                    "precomputed from the grids, through that tower"
                )
        tower_layout = _tower_layout(model) if layout == "grid" else {}
        if "vision_tower" in tower_layout:
            fitted.append(
                f"vision tower {tower_layout['vision_tower']}: "
                f"{INPUT_LAYOUTS[config.model_type][1]}; what it computes from the grids is "
                + (
                    "computed by its family from each set's grids"
                    if "grid_inputs" in tower_layout
                    else "recorded from its own calls of transformers' helpers on each set's grids"
                )
            )
        family = _tower_layout(model)
        encoder = (family["encoder"] if "encoder" in family else _parts()[layout])(
            model, channels, width
        )
        generator = torch.Generator().manual_seed(seed)
        if "image_sets" in family:
            image_sets, image_labels = family["image_sets"](model, generator)
            image_labels[-1] += " at bounds"
            image_sizes = []
        else:
            image_sets, image_labels, image_sizes = _image_sets(layout, model, config, generator)
        encoder.image_sizes = image_sizes
        images = torch.export.Dim("images", min=1, max=BATCH_MAX)
        if layout == "padded":
            patch = _pixtral(model)[0].patch_size
            patches = torch.export.Dim("patches", min=1)
            image_shapes = {
                "pixel_values": {
                    0: torch.export.Dim("images", min=1, max=GRID_IMAGES_MAX),
                    2: patch * torch.export.Dim("patch_rows", min=1, max=PADDED_SIDE_MAX),
                    3: patch * torch.export.Dim("patch_columns", min=1, max=PADDED_SIDE_MAX),
                },
                "patch_index": {0: patches},
                "vision_position_ids": {0: patches},
                "patch_image": {0: patches},
                "merge_index": {0: torch.export.Dim("image_tokens", min=1)},
            }
            resolution = (
                "images of any size (a Pixtral encoder): pixel_values padded to the largest "
                f"image of the call, height and width dynamic in patches of {patch}; what the "
                "encoder computes from image_sizes with Python loops is given precomputed "
                "(each image's patches in the padded convolution output, their 2-D rotary "
                "positions, the image of each patch for attention within an image, and the "
                "patches of each merged token, from the model's own patch merger run on "
                "patch numbers), checked to give get_image_features' features on every "
                "input set"
            )
        elif layout == "tiles":
            image_shapes = {
                "pixel_values": {0: torch.export.Dim("tiles", min=1, max=TILES_MAX)},
                "feature_index": {0: torch.export.Dim("feature_rows", min=1)},
            }
            resolution = (
                "images of any size, as tiles of the vision config's image_size "
                f"({side}x{side}): a base view and the grid each image's size picks from "
                "image_grid_pinpoints; the graph takes the tiles of every image (dynamic "
                "tiles) and the order of the feature rows (dynamic), which "
                "pack_image_features computes from image_sizes with Python loops and which "
                "is computed here by that function on row numbers, checked to give exactly "
                "get_image_features' features on every input set"
            )
        elif layout == "naflex":
            patches = torch.export.Dim("patches", min=2, max=NAFLEX_PATCHES_MAX)
            factor = config.downsample_factor
            image_shapes = {
                "pixel_values": {0: images, 1: patches},
                "pixel_attention_mask": {0: images, 1: patches},
                "spatial_shapes": {0: images},
                "grid_index": {1: factor * torch.export.Dim("image_tokens", min=1)},
            }
            resolution = (
                "images of any size as NaFlex patch sequences: each image its own grid of "
                "patches (spatial_shapes), padded to the longest (pixel_attention_mask), "
                "images and patches dynamic; the blocks of "
                f"{factor} x {factor} patches the projector unshuffles into one token, which "
                "get_image_features cuts per image with sizes read in Python, are given as "
                "a precomputed index of the real tokens' patch rows (grid_index), checked to "
                "give get_image_features' features on every input set"
            )
        elif layout == "flat":
            image_shapes = {
                "pixel_values": {
                    0: images,
                    1: torch.export.Dim("patches", min=1, max=FLAT_PATCHES_MAX),
                }
            }
            resolution = (
                "images of any resolution as the processor flattens them, pixel_values "
                f"(images, patches, {width}): the encoder is one linear map of each patch, "
                "so images and patches are both dynamic"
            )
        elif layout == "patches":
            _, temporal, patch, _ = _grid_sizes(config)
            image_shapes = {
                "pixel_values": {0: torch.export.Dim("patches", min=1, max=PATCHES_MAX)}
            }
            resolution = (
                "images of any size as the processor cuts them into patches of "
                f"{temporal} frames of {patch}x{patch} pixels: pixel_values (patches, "
                f"{temporal}, {patch}, {patch}, {channels}) of every image one after the "
                "other, patches dynamic; the encoder takes each patch alone to one image "
                "token, so an image has as many tokens as patches"
            )
            fitted.append(f"image layout patches: {INPUT_LAYOUTS[config.model_type][1]}")
        elif layout == "flattened":
            patches = torch.export.Dim("patches", min=2, max=_image_seq2seq.PATCHES_MAX)
            image_shapes = {"flattened_patches": {0: images, 1: patches}}
            resolution = (
                "images of any size as flattened patches (images, patches, "
                f"{2 + width}): each patch its row and column then its pixels, each image "
                "padded to the call's longest with zero rows, which the tower masks "
                "itself; images and patches dynamic"
            )
        elif "image_shapes" in family:
            image_shapes, resolution = family["image_shapes"](model)
            fitted.append(f"image layout {layout}: {INPUT_LAYOUTS[config.model_type][1]}")
        elif layout != "grid":
            image_shapes: dict[str, Any] = {"pixel_values": {0: images}}
            resolution = (
                f"pixel_values {side}x{side} static: the model's processor resizes every "
                "image to its vision config's image_size"
            )
            if layout == "hybrid":
                high = _side(config.high_res_vision_config.image_size)
                image_shapes["high_res_pixel_values"] = {0: images}
                resolution += (
                    f", and high_res_pixel_values {high}x{high} static for the second, "
                    "high-resolution encoder of the same images"
                )
            if video_frames(model):
                resolution += (
                    f"; videos of {video_frames(model)} frames (static, as many as its "
                    "processor samples of each video), num_query_tokens feature rows per "
                    "frame, written over its video token"
                )
            if layout == "instructed":
                prompt = torch.export.Dim("qformer_length", min=1, max=QFORMER_LENGTH_MAX)
                for name in ("qformer_input_ids", "qformer_attention_mask"):
                    image_shapes[name] = {0: images, 1: prompt}
                fitted.append(
                    "instructed Q-Former: the vision encoder also takes each image's "
                    "prompt in the Q-Former's vocabulary and its mask (right-padded, "
                    "dynamic length), which the Q-Former reads beside its queries"
                )
        else:
            # the tower merges merge x merge patches into one token
            merge = _grid_sizes(config)[3]
            patches = torch.export.Dim("image_tokens", min=1, max=GRID_TOKENS_MAX) * merge**2
            images = torch.export.Dim("images", min=1, max=GRID_IMAGES_MAX)
            dynamic = torch.export.Dim.DYNAMIC
            image_shapes = {
                "pixel_values": {0: patches},
                "image_grid_thw": {0: images},
                "vision_position_ids": {0: patches},
                "cu_seqlens": {0: images + 1},
            }
            extras = {
                "window_index",
                "cu_window_seqlens",
                "interp_indices",
                "interp_weights",
                "pixel_shuffle_index",
                "merge_order",
                "patch_index",
                "feature_index",
                "neighbour_index",
            }
            for name in sorted(extras & set(image_sets[0])):
                # windows and feature rows (with the rows a projector adds): as many as
                # the grids give; taps, shuffle, merge order and patch index: one per patch
                per_patch = name.startswith(
                    ("interp", "pixel_shuffle", "merge_order", "patch_index", "neighbour_index")
                )
                image_shapes[name] = {0: patches if per_patch else dynamic}
            if "vision_position_ids" not in image_sets[0]:  # a tower without rotary positions
                del image_shapes["vision_position_ids"]
            resolution = (
                "images of any resolution: their patches flattened into one sequence of "
                "dynamic length, with the grids and what the processor side computes from "
                "them ("
                + (
                    "each patch's rotary position, "
                    if "vision_position_ids" in image_sets[0]
                    else ""
                )
                + "the images' bounds"
                + (", the windows' order and bounds" if "window_index" in image_sets[0] else "")
                + (", the position table's taps" if "interp_weights" in image_sets[0] else "")
                + (
                    ", the order of the pixel shuffle's blocks"
                    if "pixel_shuffle_index" in image_sets[0]
                    else ""
                )
                + (
                    ", the order in which the projector merges the patches"
                    if "merge_order" in image_sets[0]
                    else ""
                )
                + (
                    ", each patch's place in the tower's sequence"
                    if "patch_index" in image_sets[0]
                    else ""
                )
                + (
                    ", the order of the feature rows with the rows the projector adds"
                    if "feature_index" in image_sets[0]
                    else ""
                )
                + (
                    ", each patch's neighbours under a convolution over its image"
                    if "neighbour_index" in image_sets[0]
                    else ""
                )
                + ") as inputs"
            )
        notes = [
            f"vision LM: {type(model).__name__} merges its vision encoder's features into "
            "a causal LM's input embeddings at the image token's positions; exported as "
            "vision_encoder, embed_tokens and decoder, the merge done by the driver as the "
            "forward does it",
            resolution,
            *fitted,
        ]
        batch = torch.export.Dim("batch", min=1, max=BATCH_MAX)
        rows = 3 if rope_index(model) is not None else 0
        if rows:
            notes.append(
                "multimodal rope: the decoder step takes position_ids (3, batch, "
                "seq_length), time, height and width; text tokens have one position on "
                "all three, image tokens their place in the image, as get_rope_index gives"
            )
        counted = layout == "grid" or "deepstack_layers" in family
        deepstack = deepstack_layers(model) if counted else 0
        if deepstack:
            notes.append(
                "DeepStack: the vision encoder also returns the features of its early "
                f"layers, and the decoder step takes those of the {deepstack} layers the "
                "tiny language model has (deepstack_embeds: each layer's features at the "
                "image tokens' positions, zero elsewhere), added to the output of its first "
                "layers as the forward adds them at the image tokens"
            )
        decoded = family.get("decoded_tokens")
        if decoded is not None:
            notes.append(f"decoder cache: {decoded[1]}")
        _check_reads_pixels(encoder, image_sets[0])
        m = _audio_lm.merged_lm(
            self.name,
            model,
            config,
            notes,
            Component("vision_encoder", encoder, image_sets, image_shapes, image_labels),
            token,
            generator,
            batch,
            position_rows=rows,
            deepstack=deepstack,
            step_ids=family.get("step_ids"),
            step_kwargs=family.get("step_kwargs"),
            step_ids_seen=bool(family.get("step_ids_seen")),
            cache_max=family.get("cache_max"),
            decoded_tokens=None if decoded is None else decoded[0],
        )
        if prefix_lm(model):
            _as_prefix_lm(m)
        if step_span(model):
            _as_span_step(m)
        return m

    def components(self, m: UntrainedModel) -> list[Component]:
        return list(m.components)

    def check_eager(self, m: UntrainedModel, atol: float) -> list[dict[str, Any]]:
        if _is_seq2seq(m):
            return _ENCODER_DECODER.check_eager(m, atol)
        if prefix_lm(m.model):
            return _prefix_check_eager(m, atol)
        if step_span(m.model):
            return _span_check_eager(m, atol)
        return _audio_lm.check_eager(m, atol)

    def generation_inputs(self, m: UntrainedModel) -> dict[str, Any]:
        """The prompt of the generation stage: two rows, each text tokens, the image
        tokens of one image (as many as the encoder returns rows for it) and text tokens;
        and both images under the vision encoder graph's input names (an encoder-decoder:
        its encoder's inputs for two images)."""
        import torch

        if _is_seq2seq(m):
            return _ENCODER_DECODER.generation_inputs(m)
        encoder = next(c for c in m.components if c.name == "vision_encoder")
        generator = torch.Generator().manual_seed(4321)
        first = encoder.input_sets[0]
        built = _tower_layout(m.model).get("generation_image")
        if built is not None:  # the family builds its images
            image = built(m.model, generator)
        elif encoder.module.layout == "tiles":
            channels, side = _pixel_sizes(m.config)
            image, _ = tile_images(m.model, [TILE_GENERATION_IMAGE] * 2, generator, channels, side)
        elif encoder.module.layout == "padded":
            channels = _pixel_sizes(m.config)[0]
            image, _ = padded_images(m.model, [PADDED_GENERATION_IMAGE] * 2, generator, channels)
        elif encoder.module.layout == "naflex":
            image = naflex_images(m.model, [NAFLEX_GENERATION_GRID] * 2, generator)
        elif encoder.module.layout == "patches":
            shape = (2 * PATCH_GENERATION_IMAGE, *first["pixel_values"].shape[1:])
            image = {"pixel_values": torch.randn(shape, generator=generator)}
        elif encoder.module.layout == "flattened":
            given = _image_seq2seq.flattened_patches(m.config, [*FLATTENED_GENERATION], generator)
            image = {"flattened_patches": given["flattened_patches"]}
        elif encoder.module.layout in ("pixels", "stacked", "flat", "instructed", "hybrid"):
            shape = (2, *first["pixel_values"].shape[1:])
            image = {"pixel_values": torch.randn(shape, generator=generator)}
            if encoder.module.layout == "hybrid":
                shape = (2, *first["high_res_pixel_values"].shape[1:])
                image["high_res_pixel_values"] = torch.randn(shape, generator=generator)
            if encoder.module.layout == "instructed":
                image.update(qformer_prompts(m.config, 2, GENERATION_QFORMER, generator))
        else:
            grid = first["image_grid_thw"][:1].repeat(2, 1)
            patches = int(grid.prod(-1).sum())
            width = first["pixel_values"].shape[1]
            image = {
                "pixel_values": torch.randn((patches, width), generator=generator),
                "image_grid_thw": grid,
                **grid_inputs(m.model, grid),
            }
        with torch.no_grad():
            out = encoder.module(**copy.deepcopy(image))
        rows = (out["features"] if isinstance(out, dict) else out).shape[0] // 2
        span = image_span(m.model)
        if span is not None:  # laid out by the family, as its processor lays it out
            text = m.config.get_text_config(decoder=True)
            words = _audio_lm._text_ids(text, (2, sum(GENERATION_TEXT)), generator, -1)
            return {**span(m.model, rows, words), "image": image}
        token = image_token(m.config)
        text = m.config.get_text_config(decoder=True)
        before, after = GENERATION_TEXT
        start = getattr(m.config, "vision_start_token_id", None)
        index = rope_index(m.model)
        marked = index is not None and "vision_start_token_id" in inspect.getsource(index)
        ids = torch.cat(
            [
                _audio_lm._text_ids(text, (2, before - marked), generator, token),
                *([torch.full((2, 1), start)] if marked else []),
                torch.full((2, rows), token),
                _audio_lm._text_ids(text, (2, after), generator, token),
            ],
            1,
        )
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "image": image}

    def processor_inputs(self, m: UntrainedModel) -> dict[str, Any]:
        """The generation prompt as the model's processor gives it to ``generate`` or the
        forward: ids, mask, the pixels and the grids (not what exportcheck's vision
        encoder graph takes precomputed from them)."""
        import torch

        feeds = self.generation_inputs(m)
        if _is_seq2seq(m):
            return feeds
        given = {k: v for k, v in feeds.items() if k != "image"}
        text = _tower_layout(m.model).get("processor_text")
        if text is not None:  # the ids and mask as the family's processor gives them
            given = text(m.model, given)
        given_names = (
            "pixel_values",
            "image_grid_thw",
            "qformer_input_ids",
            "qformer_attention_mask",
            "pixel_attention_mask",
            "spatial_shapes",
            "high_res_pixel_values",
            "flattened_patches",
        )
        given_names += tuple(_tower_layout(m.model).get("processor_names", ()))
        image = {k: v for k, v in feeds["image"].items() if k in given_names}
        layout = vision_layout(m.model)
        if layout == "stacked":  # one image per prompt
            image["pixel_values"] = image["pixel_values"][:, None]
        elif layout == "tiles":
            _, side = _pixel_sizes(m.config)
            size = [round(v * side) for v in TILE_GENERATION_IMAGE]
            image = processor_tiles(image["pixel_values"], torch.tensor([size] * 2), m.model)
        elif layout == "padded":
            patch = _pixtral(m.model)[0].patch_size
            size = [v * patch for v in PADDED_GENERATION_IMAGE]
            image["image_sizes"] = torch.tensor([size] * 2)
        elif layout == "grid":
            image = processor_grid_images(m.model, image)
        convert = _tower_layout(m.model).get("processor_image")
        if convert is not None:  # the family's encoder inputs as its processor gives them
            image = convert(m.model, feeds["image"])
        if "mm_token_type_ids" in inspect.signature(m.model.forward).parameters:
            # what the processor returns beside the ids: 1 on image tokens
            given["mm_token_type_ids"] = (given["input_ids"] == image_token(m.config)).int()
        if prefix_lm(m.model):  # the prompt is the prefix: 0 on every token
            given["token_type_ids"] = torch.zeros_like(given["input_ids"])
        return {**given, **image}

    def generate_eager(self, m: UntrainedModel) -> Generation:
        from .text_generation import greedy_generate

        if _is_seq2seq(m):
            return _ENCODER_DECODER.generate_eager(m)
        return greedy_generate(m.model, self.processor_inputs(m), self.new_tokens)

    def generate(self, m: UntrainedModel, call: Any, forced: Any) -> Generation:
        import torch

        if _is_seq2seq(m):
            return _ENCODER_DECODER.generate(m, call, forced)

        feeds = self.generation_inputs(m)
        if image_span(m.model) is not None:
            return _span_generate(m, call, forced, feeds)
        token = image_token(m.config)
        if prefix_lm(m.model):
            return _prefix_generate(m, call, forced, feeds, token)
        positions = None
        index = rope_index(m.model)
        if index is not None:
            ids = feeds["input_ids"]
            given = {}
            if "mm_token_type_ids" in inspect.signature(index).parameters:
                given["mm_token_type_ids"] = (ids == token).int()
            name = _tower_layout(m.model).get("grid_argument")
            if name is None:
                given["image_grid_thw"] = feeds["image"]["image_grid_thw"]
            else:  # the grids as the processor gives them, under the model's name
                given[name] = processor_grid_images(m.model, dict(feeds["image"]))[name]
            positions = index(ids, attention_mask=feeds["attention_mask"], **given)
            # some return float positions (a video's time in seconds); an image's are
            # whole numbers, given in the dtype the decoder graph declares
            step = next(c for c in m.components if c.name == "decoder")
            declared = step.input_sets[0]["position_ids"].dtype
            if positions[0].dtype != declared:
                cast = positions[0].to(declared)
                if not torch.equal(cast.to(positions[0].dtype), positions[0]):
                    raise ValueError(
                        f"get_rope_index gave positions that are not whole numbers for the "
                        f"decoder graph's {declared} position_ids"
                    )
                positions = (cast, positions[1].to(declared))
        return _audio_lm.merged_generate(
            m,
            call,
            forced,
            "vision_encoder",
            feeds["image"],
            feeds,
            token,
            "feature rows",
            positions=positions,
        )


def prefix_lm(model: Any) -> bool:
    """True for a prefix LM (PaliGemma): its text config sets
    ``use_bidirectional_attention`` (PaliGemmaConfig sets it when unset) and its forward
    takes ``token_type_ids``, 0 on the prefix (image tokens and prompt), which attends
    bidirectionally within itself, 1 on the suffix (generated tokens), causal."""
    text = model.config.get_text_config(decoder=True)
    return getattr(text, "use_bidirectional_attention", None) is True and (
        "token_type_ids" in inspect.signature(model.forward).parameters
    )


@functools.cache
def _prefix_decoder() -> type:
    import torch

    class PrefixDecoder(_audio_lm._parts()["decoder"]):
        """A decode step of a prefix LM that also takes ``token_type_ids`` of its new
        tokens ``(batch, seq_length)``: 0 on prefix tokens, which attend to every prefix
        token of the call (and causally to the cache), 1 on suffix tokens, causal. The
        forward reads ``token_type_ids`` only on a call without a cache (its mask is
        causal over one), so the step builds that mask itself, with transformers' own
        ``create_causal_mask`` and the same blocks (the cached positions in none), and
        passes it as the 4-D mask the forward takes as is. A prefix spread over two
        calls cannot attend to its later part: the driver prefills it in one call."""

        def forward(  # type: ignore[override]
            self, inputs_embeds: Any, attention_mask: Any, token_type_ids: Any, cache: Any
        ) -> dict[str, Any]:
            from transformers.masking_utils import create_causal_mask

            # each position's block over cache + new, -1 on the cached ones; indexed so
            # that no tensor is as long as the cache (the export would guard it != 1)
            length = attention_mask.shape[1]
            index = torch.arange(length, device=attention_mask.device)
            index = index - (length - inputs_embeds.shape[1])
            types = token_type_ids.gather(1, index.clamp(min=0).expand_as(attention_mask))
            blocks = torch.where((index >= 0) & (types == 0), 0, -1)
            mask = create_causal_mask(
                config=self.model.config.get_text_config(),
                inputs_embeds=inputs_embeds,
                attention_mask=attention_mask,
                cache=cache,
                block_sequence_ids=blocks,
            )
            return super().forward(inputs_embeds, mask, cache)

    return PrefixDecoder


def _as_prefix_lm(m: UntrainedModel) -> None:
    """Make ``m``'s decoder step a :func:`_prefix_decoder` step: each set's cached prompt
    is a prefix (recomputed with ``token_type_ids`` 0: without them the forward attends
    bidirectionally when nothing is padded and causally when something is), its new
    tokens suffix (1), as generated tokens are.

    :raises ValueError: for a text model with sliding-window layers, which the one 4-D
        mask the step passes would give full attention
    """
    import torch

    from .text_generation import _contiguous

    text = m.config.get_text_config(decoder=True)
    if getattr(text, "sliding_window", None) is not None:
        raise ValueError(
            f"{type(m.model).__name__} is a prefix LM with sliding-window layers: the "
            "decoder step builds the prefix mask of full attention only"
        )
    step = next(c for c in m.components if c.name == "decoder")
    step.module = _prefix_decoder()(m.model)
    for i, feeds in enumerate(step.input_sets):
        mask = m.prompt_masks[i]
        with torch.no_grad():
            out = m.model(
                inputs_embeds=m.prompts[i],
                attention_mask=mask,
                token_type_ids=torch.zeros_like(mask),
                use_cache=True,
            )
        new = feeds["inputs_embeds"].shape[:2]
        given = {
            "inputs_embeds": feeds.pop("inputs_embeds"),
            "attention_mask": feeds.pop("attention_mask"),
            "token_type_ids": torch.ones(new, dtype=torch.int64),
            "cache": _contiguous(_audio_lm._cache_of(out)),
        }
        feeds.clear()  # the same dict is m.inputs or one of m.other_inputs
        feeds.update(given)
    shapes = step.dynamic_shapes
    shapes["token_type_ids"] = dict(shapes["inputs_embeds"])
    shapes["cache"] = shapes.pop("cache")  # the inputs' order, as the forward's
    m.notes.append(
        "prefix LM: the image tokens and the prompt attend bidirectionally to each other, "
        "generated tokens causally; the decoder step takes token_type_ids of its new "
        "tokens (0 prefix, 1 suffix), its sets cache a prefix prompt and add suffix "
        "tokens, and the generation prefills the whole prefix in one decoder call"
    )


def _prefix_check_eager(m: UntrainedModel, atol: float) -> list[dict[str, Any]]:
    """The prefix LM's step against one forward over prompt + new embeddings given the
    same prefix: ``token_type_ids`` 0 on the prompt, the step's own on the new tokens."""
    import torch

    step = next(c for c in m.components if c.name == "decoder")
    out = []
    for i, feeds in enumerate(step.input_sets):
        new = feeds["inputs_embeds"]
        types = torch.cat([torch.zeros_like(m.prompt_masks[i]), feeds["token_type_ids"]], 1)
        with torch.no_grad():
            got = step.module(**copy.deepcopy(feeds))["logits"]
            whole = m.model(
                inputs_embeds=torch.cat([m.prompts[i], new], 1),
                attention_mask=feeds["attention_mask"],
                token_type_ids=types,
                use_cache=False,
            ).logits[:, -new.shape[1] :]
        diff = float((got.double() - whole.double()).abs().max())
        out.append({"input_set": i, "abs": diff, "ok": diff <= atol})
    return out


def _prefix_generate(
    m: UntrainedModel, call: Any, forced: Any, feeds: dict[str, Any], token: int
) -> Generation:
    """A prefix LM's generation: the vision encoder once, the prompt's embeddings with
    the features merged, the whole prompt (the prefix) through the decoder graph in one
    call, then one step per token (suffix). The graph takes a cache: an eager call on one
    position that the graph's mask then leaves out, as a left-padding position, gives it
    one (the prompt's own first position, run alone, would not see the rest of the
    prefix)."""
    import torch

    ids, mask = feeds["input_ids"], feeds["attention_mask"]
    step = next(c for c in m.components if c.name == "decoder")
    bound = getattr(step.dynamic_shapes["inputs_embeds"][1], "max", ids.shape[1])
    if ids.shape[1] > bound:
        raise ValueError(
            f"the prompt's {ids.shape[1]} positions are a prefix, which a prefix LM prefills "
            f"in one decoder call, and the decoder graph takes at most {bound}"
        )
    features = call("vision_encoder", feeds["image"])
    embeds = call("embed_tokens", {"input_ids": ids})
    merged = _audio_lm.merge(embeds, ids, token, features, "feature rows")
    with torch.no_grad():
        padding = m.model(inputs_embeds=merged[:, :1], use_cache=True)
    seen = torch.cat([torch.zeros_like(mask[:, :1]), mask], 1)
    out = call(
        "decoder",
        {
            "inputs_embeds": merged,
            "attention_mask": seen,
            "token_type_ids": torch.zeros_like(ids),
            "cache": _audio_lm._cache_of(padding),
        },
    )
    logits = [out["logits"][:, -1].detach().float()]
    for t in range(_audio_lm.NEW_TOKENS - 1):
        token_ids = forced[:, t : t + 1]
        seen = torch.cat([seen, torch.ones_like(token_ids)], 1)
        given = {
            "inputs_embeds": call("embed_tokens", {"input_ids": token_ids}),
            "attention_mask": seen,
            "token_type_ids": torch.ones_like(token_ids),
        }
        out = call("decoder", {**given, "cache": out["cache"]})
        logits.append(out["logits"][:, -1].detach().float())
    return Generation(
        tokens=torch.stack([s.argmax(-1) for s in logits], 1),
        logits=logits,
        calls=3 + 2 * (_audio_lm.NEW_TOKENS - 1),
        prefill=(
            f"vision encoder once, its feature rows merged into the prompt's embeddings, "
            f"all {ids.shape[1]} positions (the prefix) through the decoder graph in one "
            "call, after one masked-out position eager for its cache"
        ),
    )


def image_span(model: Any) -> Any:
    """The family's ``input_layouts`` entry ``image_span`` of a model with no placeholder
    token, whose forward writes the image features over a span of the prompt that a mask
    it takes beside the ids marks (1 on the span); None for other models. It is
    ``(model, rows, text) -> feeds``: the prompt as the model's processor lays it out for
    one image of ``rows`` feature rows per row of ``text`` ``(batch, length)`` (random
    text ids), ``input_ids``, ``attention_mask`` and the span mask under the name the
    model's ``generate`` takes it (the one other entry). A family whose processor gives
    ``generate`` other ids (GIT: the text after the span) names ``processor_text``
    ``(model, feeds) -> ids and mask``, and one whose span attends to itself both ways
    ``span_both_ways``: the generation prefills the span in one decoder call."""
    return _tower_layout(model).get("image_span")


def merge_span(embeds: Any, span: Any, features: Any) -> Any:
    """``embeds`` with the rows of ``features`` written, in order (row by row of the
    batch), at the positions where ``span`` ``(batch, length)`` is 1, as a forward that
    marks its image span with a mask writes them.

    :raises ValueError: when the mask marks another number of positions than there are
        feature rows
    """
    # == 1: Kosmos-2.5's processor marks the tags around the span -1, written over by none
    where = span == 1
    if int(where.sum()) != features.shape[0]:
        raise ValueError(
            f"the image span mask marks {int(where.sum())} positions and the vision encoder "
            f"returned {features.shape[0]} feature rows: mark one position per feature row, "
            "as the model's processor does"
        )
    return embeds.masked_scatter(where[..., None].expand_as(embeds), features.to(embeds.dtype))


def step_span(model: Any) -> bool:
    """True for a model whose text model reads the image span mask at every position, not
    only where it writes the features (the family's ``input_layouts`` entry ``step_span``:
    Kosmos-2.5 adds a segment embedding of ``mask != 0`` to each position's, 0 where no
    mask is given, as ``generate`` gives none for generated tokens). Its decoder step
    takes the mask of its new positions: a prefill chunk holding the span reads it."""
    return bool(_tower_layout(model).get("step_span")) and image_span(model) is not None


@functools.cache
def _span_decoder() -> type:
    class SpanDecoder(_audio_lm._parts()["decoder"]):
        """A decode step that also takes ``image_embeds_position_mask`` of its new
        positions ``(batch, seq_length)``, which the text model reads at each position
        (:func:`step_span`); no features are written: the driver merged them."""

        def forward(  # type: ignore[override]
            self,
            inputs_embeds: Any,
            attention_mask: Any,
            image_embeds_position_mask: Any,
            cache: Any,
        ) -> dict[str, Any]:
            out = self.model(
                inputs_embeds=inputs_embeds,
                attention_mask=attention_mask,
                image_embeds_position_mask=image_embeds_position_mask,
                cache=cache,
                use_cache=True,
            )
            return {"logits": out.logits, "cache": _audio_lm._cache_of(out)}

    return SpanDecoder


def span_pattern(batch: int, length: int) -> Any:
    """The span mask of a decoder set's new positions, as a prefill chunk holding the
    span carries the processor's: a tag (-1) first, the span (1), a tag last when there
    are three positions or more; the last row of a batch of several 0 everywhere, as a
    chunk of text or a generated token."""
    import torch

    span = torch.ones((batch, length), dtype=torch.int64)
    span[:, 0] = -1 if length > 1 else 1
    if length > 2:
        span[:, -1] = -1
    if batch > 1:
        span[-1] = 0
    return span


def _as_span_step(m: UntrainedModel) -> None:
    """Make ``m``'s decoder step a :func:`_span_decoder` step: each set's new positions
    get :func:`span_pattern` (its cached prompt read as text, the mask 0 there)."""
    step = next(c for c in m.components if c.name == "decoder")
    step.module = _span_decoder()(m.model)
    for feeds in step.input_sets:
        given = {
            "inputs_embeds": feeds.pop("inputs_embeds"),
            "attention_mask": feeds.pop("attention_mask"),
        }
        given["image_embeds_position_mask"] = span_pattern(*given["inputs_embeds"].shape[:2])
        given["cache"] = feeds.pop("cache")
        feeds.clear()  # the same dict is m.inputs or one of m.other_inputs
        feeds.update(given)
    shapes = step.dynamic_shapes
    shapes["image_embeds_position_mask"] = dict(shapes["inputs_embeds"])
    shapes["cache"] = shapes.pop("cache")  # the inputs' order, as the forward's
    m.notes.append(
        "image span read at every position: the text model adds an embedding of "
        "image_embeds_position_mask != 0 to each position, so the decoder step takes the "
        "mask of its new positions (the prompt's in the prefill, 0 for generated tokens)"
    )


def _span_check_eager(m: UntrainedModel, atol: float) -> list[dict[str, Any]]:
    """The span step against one forward over prompt + new embeddings with the span mask
    0 on the prompt (read as text when it was cached) and the step's own after."""
    import torch

    step = next(c for c in m.components if c.name == "decoder")
    out = []
    for i, feeds in enumerate(step.input_sets):
        new = feeds["inputs_embeds"]
        span = feeds["image_embeds_position_mask"]
        span = torch.cat([torch.zeros_like(m.prompt_masks[i]), span], 1)
        with torch.no_grad():
            got = step.module(**copy.deepcopy(feeds))["logits"]
            whole = _audio_lm.text_lm(m.model)(
                inputs_embeds=torch.cat([m.prompts[i], new], 1),
                attention_mask=feeds["attention_mask"],
                image_embeds_position_mask=span,
                use_cache=False,
            ).logits[:, -new.shape[1] :]
        diff = float((got.double() - whole.double()).abs().max())
        out.append({"input_set": i, "abs": diff, "ok": diff <= atol})
    return out


def _span_generate(m: UntrainedModel, call: Any, forced: Any, feeds: dict[str, Any]) -> Generation:
    """The generation of a model whose features fill a masked span (:func:`image_span`):
    the vision encoder once, the prompt's embeddings with its rows written at the mask
    (:func:`merge_span`), the first position eager (the decoder graph takes a cache), the
    rest through the decoder graph, then one step per token."""
    import torch

    ids, mask = feeds["input_ids"], feeds["attention_mask"]
    (span,) = [v for k, v in feeds.items() if k not in ("input_ids", "attention_mask", "image")]
    step = next(c for c in m.components if c.name == "decoder")
    bound = getattr(step.dynamic_shapes["inputs_embeds"][1], "max", ids.shape[1])
    features = call("vision_encoder", feeds["image"])
    embeds = torch.cat(
        [
            call("embed_tokens", {"input_ids": ids[:, start : start + bound]})
            for start in range(0, ids.shape[1], bound)
        ],
        1,
    )
    merged = merge_span(embeds, span, features)
    # the mask of each call's positions, for a step that reads it (step_span)
    read = step_span(m.model)
    # a span that attends to itself both ways (GIT's image prefix) is prefilled from its
    # first position in one call, after one position eager that the mask leaves out
    both = bool(_tower_layout(m.model).get("span_both_ways"))
    if both and int(span.nonzero()[:, 1].max()) >= bound:
        raise ValueError(
            f"the image span ends at position {int(span.nonzero()[:, 1].max())} and attends "
            f"to itself both ways, so it is prefilled in one decoder call, which takes at "
            f"most {bound} positions: give the model fewer image tokens"
        )
    with torch.no_grad():
        first = _audio_lm.text_lm(m.model)(
            inputs_embeds=merged[:, :1],
            attention_mask=torch.ones_like(mask[:, :1]) if both else mask[:, :1],
            use_cache=True,
            **({"image_embeds_position_mask": span[:, :1]} if read else {}),
        )
    if both:
        mask = torch.cat([torch.zeros_like(mask[:, :1]), mask], 1)
    out, cache, chunks = None, _audio_lm._cache_of(first), 0
    for start in range(0 if both else 1, merged.shape[1], bound):
        end = min(start + bound, merged.shape[1])
        given = {
            "inputs_embeds": merged[:, start:end],
            "attention_mask": mask[:, : end + int(both)],
        }
        if read:
            given["image_embeds_position_mask"] = span[:, start:end]
        out = call("decoder", {**given, "cache": cache})
        cache, chunks = out["cache"], chunks + 1
    logits = [out["logits"][:, -1].detach().float()]
    seen = mask
    for t in range(_audio_lm.NEW_TOKENS - 1):
        token_ids = forced[:, t : t + 1]
        seen = torch.cat([seen, torch.ones_like(token_ids)], 1)
        given = {
            "inputs_embeds": call("embed_tokens", {"input_ids": token_ids}),
            "attention_mask": seen,
        }
        if read:
            given["image_embeds_position_mask"] = torch.zeros_like(token_ids)
        out = call("decoder", {**given, "cache": out["cache"]})
        logits.append(out["logits"][:, -1].detach().float())
    return Generation(
        tokens=torch.stack([s.argmax(-1) for s in logits], 1),
        logits=logits,
        calls=1 + -(-ids.shape[1] // bound) + chunks + 2 * (_audio_lm.NEW_TOKENS - 1),
        prefill=(
            "vision encoder once, its feature rows written at the prompt's image span mask, "
            + (
                f"one masked-out position eager for a cache, its {ids.shape[1]} positions"
                if both
                else f"the first of its {ids.shape[1]} positions eager, the rest"
            )
            + " through the decoder graph"
            + (f" in {chunks} chunks of at most {bound} positions" if chunks > 1 else "")
        ),
    )


#: the least change of the image features, for other pixels, that shows the untrained
#: encoder reads the image: ten times the default tolerance of the checks
PIXELS_MATTER = 1e-3


def _check_reads_pixels(encoder: Any, feeds: dict[str, Any]) -> None:
    """A ValueError when the untrained vision encoder's features move by less than
    :data:`PIXELS_MATTER` for other values of one of its pixel inputs: its graphs would
    be checked on outputs that do not depend on the image."""
    import torch

    def run(given: dict[str, Any]) -> list[Any]:
        with torch.no_grad():
            out = encoder(**copy.deepcopy(given))
        # a DeepStack encoder: its early layers' features must move with the image too
        return [out["features"], out["deepstack"]] if isinstance(out, dict) else [out]

    def other(name: str, value: Any) -> Any:
        if name != "flattened_patches":
            return torch.rand_like(value)
        # other pixels in the real patches; each patch's row and column, and the
        # padding rows (zero, which the tower masks), kept
        real = value.abs().sum(-1, keepdim=True) > 0
        pixels = torch.where(real, torch.rand_like(value[..., 2:]), value[..., 2:])
        return torch.cat([value[..., :2], pixels], -1)

    first = run(feeds)
    # features that are all zero beside DeepStack ones are so by design (Granite 4 Vision:
    # the forward zeroes the input embeddings at the image tokens, and the image enters
    # at the layers DeepStack targets); every other part must move
    checked = [i for i, part in enumerate(first) if i > 0 or len(first) == 1 or bool(part.any())]
    for name, value in feeds.items():
        if not ("pixel_values" in name or name == "flattened_patches"):
            continue
        if not torch.is_floating_point(value):
            continue
        again = run({**feeds, name: other(name, value)})
        moved = min(float((first[i] - again[i]).abs().max()) for i in checked)
        if moved < PIXELS_MATTER:
            raise ValueError(
                f"{type(encoder.model).__name__}'s untrained vision encoder returns "
                f"features that move by {moved:.2g} for other {name}: its graphs would be "
                "checked on outputs that do not depend on the image"
            )


def _is_seq2seq(m: UntrainedModel) -> bool:
    """True when ``m`` was built as an image encoder-decoder."""
    return bool(m.components) and m.components[0].name == "encoder"


_ENCODER_DECODER = _image_seq2seq.ImageSeq2Seq()

register(ImageTextToText())
