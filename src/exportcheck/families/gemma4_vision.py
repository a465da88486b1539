"""Gemma 4 as a vision LM (image-text-to-text): patches at their own positions, pooled.

The shipped config leaves ``vision_config`` None, so the task would have no tower to
export; the tiny model gets one from the vision config's defaults, shrunk as every
config is (:func:`vision_config`).

Gemma 4's processor cuts each image into patches of ``patch_size`` pixels, gives every
patch its ``(x, y)`` place in its image (``image_position_ids``) and pads every image to
one fixed patch count (a multiple of ``pooling_kernel_size ** 2``; padding patches at
``(-1, -1)``). The tower pools each ``k x k`` block of patches into one image token, by
position. ``get_image_features`` then cuts the pooled rows per image with sizes read in
Python (``.tolist()``), which would fix the image count into the graph, and the tower
drops the padding rows by a boolean mask (a data-dependent row count). The graph here
runs the tower's own modules and takes instead ``feature_index``: the pooled rows of the
real tokens, in order, computed processor-side from the grids (:func:`feature_index`).
The patch count stays static, as the processor fixes it (``max_soft_tokens``), so the
pooler's kernel, derived from it, is the config's.

The decoder reads per-layer embeddings looked up by token id beside the input
embeddings; on embeddings alone, it recovers the ids by an equality search over the
vocabulary (``nonzero``), which no graph of dynamic length keeps. The decoder step takes
the ids of its new positions too (``step_ids``), with the image tokens' set to the pad id
as the forward does before its lookup (:func:`step_ids`); the graph looks them up with the
model's own ``get_per_layer_inputs`` (:func:`step_kwargs`).
"""

from __future__ import annotations

from typing import Any

from ..dims import BATCH_MAX
from . import Family, register

#: the image tokens of every image as the processor pads it (the tiny model's setting of
#: the processor's max_soft_tokens; the published one is 280)
TOKENS_MAX = 16
#: the grids (image token rows x columns) of the images of each input set: the first
#: traced, the others unseen, the last at the bounds; an image token is a block of
#: pooling_kernel_size x pooling_kernel_size patches
GRIDS = [
    [(2, 3), (1, 1)],
    [(4, 4)],
    [(1, 2), (2, 1), (3, 3)],
    [(1, 4)],
    [(2, 2), (1, 1), (3, 2), (1, 3), (2, 1)],
    [(4, 2), (1, 1)],
    [(4, 4)] * BATCH_MAX,
]
#: the grid of both images of the generation prompt, in image tokens
GENERATION_GRID = (2, 2)
#: the vision config's model type and position table attribute, by model type
_VISION = {
    "gemma4": ("gemma4_vision", "position_embedding_size"),
    "gemma4_unified": ("gemma4_unified_vision", "mm_posemb_size"),
}


def vision_config(config: Any, shrink: Any) -> tuple[Any, str]:
    """``config`` with a vision config from the defaults, shrunk by ``shrink`` (the task's
    ``tiny_config``), when it has none, and a note saying so; a config with a vision
    config is returned as it is, without a note."""
    import copy

    from transformers import AutoConfig

    if getattr(config, "vision_config", None) is not None:
        return config, ""
    config = copy.deepcopy(config)
    kind, table = _VISION[config.model_type]
    vision = shrink(AutoConfig.for_model(kind))
    # the position table covers the patches of a side; the tiny images have 12 at most
    setattr(vision, table, 64)
    if kind == "gemma4_unified_vision":  # its embedder's widths, which the shrinking misses
        vision.mm_embed_dim = vision.output_proj_dims = 64
    config.vision_config = vision
    return config, (
        "vision config: the shipped config leaves vision_config None; the tiny model has a "
        "vision tower from the vision config's defaults, shrunk (position table of 64 "
        "patches a side)"
    )


def _pooled(model: Any) -> bool:
    """True for Gemma 4's tower, which pools blocks of patches into tokens; False for
    Gemma 4 Unified's embedder, whose patches are already the blocks (one token each)."""
    return getattr(getattr(model, "model", None), "vision_tower", None) is not None


def _kernel(model: Any) -> int:
    return int(model.config.vision_config.pooling_kernel_size) if _pooled(model) else 1


def patches_max(model: Any) -> int:
    """The patches of every image, as the processor pads them."""
    return TOKENS_MAX * _kernel(model) ** 2


def feature_index(grids: list[tuple[int, int]]) -> Any:
    """The rows ``(images * TOKENS_MAX)`` of the real tokens, image by image: the pooler
    (or the unpooled embedder) writes an image's tokens first, row by row."""
    import torch

    rows = [i * TOKENS_MAX + torch.arange(h * w) for i, (h, w) in enumerate(grids)]
    return torch.cat(rows)


def images(model: Any, grids: list[tuple[int, int]], generator: Any) -> dict[str, Any]:
    """Images of ``grids`` (in tokens) as the processor gives them (random pixels in
    [0, 1], each patch flattened, padded with zero patches at ``(-1, -1)``), with
    ``feature_index``."""
    import torch

    vision = model.config.vision_config
    k = _kernel(model)
    side = int(vision.patch_size) * (1 if _pooled(model) else int(vision.pooling_kernel_size))
    width = 3 * side**2
    length = patches_max(model)
    pixels = torch.zeros((len(grids), length, width))
    positions = torch.full((len(grids), length, 2), -1, dtype=torch.int64)
    for i, (rows, columns) in enumerate(grids):
        h, w = rows * k, columns * k
        pixels[i, : h * w] = torch.rand((h * w, width), generator=generator)
        y, x = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
        positions[i, : h * w] = torch.stack([x.reshape(-1), y.reshape(-1)], -1)
    return {
        "pixel_values": pixels,
        "image_position_ids": positions,
        "feature_index": feature_index(grids),
    }


def image_sets(model: Any, generator: Any) -> tuple[list[dict[str, Any]], list[str]]:
    """The vision encoder's input sets and labels, each checked to give exactly the rows
    of ``get_image_features`` (a ValueError otherwise): the index must pick the pooled
    rows the model's own boolean mask and per-image split keep."""
    sets = [images(model, grids, generator) for grids in GRIDS]
    check(model, sets)
    labels = [
        f"images={len(grids)} token grids="
        + (f"{grids[0][0]}x{grids[0][1]} each" if len(set(grids)) == 1 < len(grids) else "")
        + (",".join(f"{h}x{w}" for h, w in grids) if len(set(grids)) > 1 or len(grids) == 1 else "")
        for grids in GRIDS
    ]
    return sets, labels


def check(model: Any, sets: list[dict[str, Any]]) -> None:
    import torch

    encoder = _encoder_class()(model)
    for i, feeds in enumerate(sets):
        with torch.no_grad():
            got = encoder(**feeds)
            out = model.model.get_image_features(
                feeds["pixel_values"], feeds["image_position_ids"]
            ).pooler_output
        want = torch.cat(list(out))
        if got.shape != want.shape or not torch.equal(got, want):
            raise ValueError(
                f"the positioned encoder's rows differ from get_image_features on input set "
                f"{i}: shapes {tuple(got.shape)} and {tuple(want.shape)}"
            )


def image_shapes(model: Any) -> tuple[dict[str, Any], str]:
    import torch

    images = torch.export.Dim("images", min=1, max=BATCH_MAX)
    shapes = {
        "pixel_values": {0: images},
        "image_position_ids": {0: images},
        "feature_index": {0: torch.export.Dim("image_tokens", min=1)},
    }
    k = _kernel(model)
    pooled = (
        f"(static, so the pooler's {k} x {k} kernel is the config's)"
        if _pooled(model)
        else "(static; each patch is one image token, embedded without a tower)"
    )
    resolution = (
        f"images of any size as patches at their own (x, y) positions, each image padded to "
        f"{patches_max(model)} patches as the processor pads them {pooled}, images dynamic; "
        "the rows of the real tokens, which get_image_features keeps by a boolean mask and "
        "cuts per image with sizes read in Python, are given as a precomputed index "
        "(feature_index), checked against get_image_features on every input set"
    )
    return shapes, resolution


def generation_image(model: Any, generator: Any) -> dict[str, Any]:
    return images(model, [GENERATION_GRID] * 2, generator)


def _encoder_class() -> type:
    import torch

    class PositionedEncoder(torch.nn.Module):
        """patches at their positions -> the image features of the real tokens: the
        tower's patch embedder, encoder and pooler, the rows of ``feature_index``, then
        the model's standardisation and projection into the text space."""

        layout = "positioned"

        def __init__(self, model: Any, channels: int = 0, width: int = 0) -> None:
            super().__init__()
            self.model = model

        def forward(self, pixel_values: Any, image_position_ids: Any, feature_index: Any) -> Any:
            base = self.model.model
            if not _pooled(self.model):  # Gemma 4 Unified: one embedder, a token a patch
                out = base.embed_vision(pixel_values, image_position_ids).pooler_output
                return out.reshape(-1, out.shape[-1]).index_select(0, feature_index)
            tower = base.vision_tower
            padding = (image_position_ids == -1).all(dim=-1)
            states = tower.patch_embedder(pixel_values, image_position_ids, padding)
            states = tower.encoder(
                inputs_embeds=states,
                attention_mask=~padding,
                pixel_position_ids=image_position_ids,
            ).last_hidden_state
            length = pixel_values.shape[1] // tower.config.pooling_kernel_size**2
            pooled, _ = tower.pooler(
                hidden_states=states,
                pixel_position_ids=image_position_ids,
                padding_positions=padding,
                output_length=length,
            )
            rows = pooled.reshape(-1, pooled.shape[-1]).index_select(0, feature_index)
            if tower.config.standardize:
                rows = (rows - tower.std_bias.float()) * tower.std_scale.float()
            return base.embed_vision(inputs_embeds=rows.to(pixel_values.dtype))

    return PositionedEncoder


def encoder(model: Any, channels: int = 0, width: int = 0) -> Any:
    return _encoder_class()(model, channels, width)


def step_ids(model: Any, ids: Any) -> Any:
    """The ids the decoder step takes for per-layer embeddings: those of the placeholders
    (image, video and audio, the model's own ``get_placeholder_mask``) set to the text pad
    id, as the forward sets them before its lookup; on embeddings alone it does the same
    (the placeholders' rows become the pad's), so prompts of any ids agree."""
    import torch

    pad = model.config.get_text_config().pad_token_id
    image, video, audio = model.model.get_placeholder_mask(input_ids=ids)
    return torch.where(image | video | audio, pad, ids)


def step_kwargs(model: Any, ids: Any) -> dict[str, Any]:
    """What the forward takes for :func:`step_ids`: the per-layer embeddings, looked up
    by the language model's own ``get_per_layer_inputs``."""
    return {"per_layer_inputs": model.model.language_model.get_per_layer_inputs(ids)}


def image_types(model: Any, ids: Any) -> Any:
    """What Gemma 4 Unified's decoder step takes of the ids of every position it sees:
    their ``mm_token_type_ids`` as the processor gives them, 1 on image tokens. Its
    sliding layers let an image's tokens attend to each other both ways (blocks numbered
    from those types, indexed by absolute position, so over the cache's positions too);
    generated tokens are text, attending causally."""
    return (ids == model.config.image_token_id).to(ids.dtype)


def type_kwargs(model: Any, types: Any) -> dict[str, Any]:
    return {"mm_token_type_ids": types}


UNIFIED_LAYOUT = {
    "layout": "positioned",
    "prepare_config": vision_config,
    "encoder": encoder,
    "image_sets": image_sets,
    "image_shapes": image_shapes,
    "generation_image": generation_image,
    "processor_names": ("image_position_ids",),
    "step_ids": image_types,
    "step_kwargs": type_kwargs,
    "step_ids_seen": True,
}
LAYOUT = {
    "layout": "positioned",
    "prepare_config": vision_config,
    "encoder": encoder,
    "image_sets": image_sets,
    "image_shapes": image_shapes,
    "generation_image": generation_image,
    "processor_names": ("image_position_ids",),
    "step_ids": step_ids,
    "step_kwargs": step_kwargs,
}
WHY = (
    "patches at their own positions, each image padded to the processor's patch count, "
    "pooled by position into tokens; the real tokens' rows precomputed (feature_index); "
    "the decoder step takes the ids its per-layer embeddings are looked up from"
)

UNIFIED_WHY = (
    "patches at their own positions, each a token (no tower: one embedder of the patches), "
    "each image padded to the processor's patch count; the real patches' rows precomputed "
    "(feature_index)"
)

register(
    Family(
        name="gemma4_vision",
        model_types=("gemma4", "gemma4_unified"),
        input_layouts={"gemma4": (LAYOUT, WHY), "gemma4_unified": (UNIFIED_LAYOUT, UNIFIED_WHY)},
    )
)
