"""Unlimited-OCR: a global view of each image and its local crops, through a SAM encoder
and a CLIP encoder, their features laid out as the images' rows, each ended by a newline.

Unlimited-OCR's image processor (``UnlimitedOcrImageProcessor``) gives each image a global
view, resized to fit a square of ``size`` (1024 pixels) and padded to it, and, for an
image whose longer side exceeds ``tile_size`` (640 pixels), local crops: the image resized
to the grid of 2 to 32 tiles of ``tile_size`` whose aspect ratio is closest to its own
(``get_optimal_tiled_canvas``, the same function as DeepSeek-OCR 2's), one crop per tile,
row by row. It returns the global views ``pixel_values``, every crop one after the other
``pixel_values_local`` (absent when no image has any), each image's crop count
``num_local_patches`` and its grid ``patches_grid`` (columns, rows; ``[1, 1]`` without
crops). The vision tower runs SAM and its two stride-2 convolutions, then a CLIP encoder
on that map, and gives one feature row per cell of the map (16 x 16 for a global view, 10
x 10 for a crop). ``get_image_features`` loops over the images in Python: for each, the
crops' rows laid out as one picture (the grid's rows of crops, each crop's rows side by
side), every line of it ended by ``image_newline``, then the global view's lines, each
ended by ``image_newline``, then ``view_separator``; the processor writes as many image
tokens (``UnlimitedOcrProcessor.replace_image_token``). The graph here runs the model's
own tower and projector on both batches and takes instead ``feature_index``: for every
image token, in that order, its row among the global rows, the crop rows, the newline and
the separator (:func:`feature_index`), computed on the processor side from the grids and
checked against ``get_image_features`` on every input set. Images, crops and image tokens
are dynamic; the two resolutions are static, as the processor fixes them.

Every text layer is reference sliding-window attention: its cache layer
(``UnlimitedOcrDynamicReferenceSlidingWindowLayer``) keeps the prompt's keys and values
(``prefill_keys``, ``prefill_values``), never evicted, apart from a sliding window of the
tokens decoded after it (``keys``, ``values``), which right after the prompt is the empty
1-D tensor of its lazy initialization; ``prefill_length`` and
``prefill_cumulative_length`` count the prompt, ``cumulative_length`` the decoded tokens.
The cache flattens into both parts (:func:`exportcheck.caches.pytrees.register_length_slot`):
the prompt's states of dynamic length, the window's of a length of their own that may be
0 (the empty window as ``(batch, heads, 0, head_dim)``), and the counters are recomputed
from those lengths on unflatten. The decoder step's input sets hold 0 to 110 decoded
tokens beside the prompt (:data:`DECODED_TOKENS`); within its bounds the window never
fills, so nothing is evicted and its counter is its length. The generation stage runs
the prompt's first position eagerly, which makes that one position the layer's prompt and
sends the rest to the window: at these lengths attention sees the same positions as in
``generate``, which declares the whole prompt as prefill, and the tokens are compared.
"""

from __future__ import annotations

from typing import Any

from ..caches.pytrees import register_length_slot
from . import Family, register
from .deepseek_ocr2 import _crops, _processor_module

#: the image processor's defaults: the global view's side, a local crop's side (pixels),
#: the fewest and most crops of an image that has crops
GLOBAL_SIDE, CROP_SIDE, CROPS_MIN, CROPS_MAX_IMAGE = 1024, 640, 2, 32
#: the processor's SAM patch side and downsampling: a global view of 16 x 16 feature rows,
#: a crop of 10 x 10
PATCH, DOWNSAMPLING = 16, 4
#: the tiny SAM's patch side: the views keep the processor's proportion (1024 / 640) in
#: feature rows, 8 x 8 and 5 x 5 (of 128 and 80 pixels)
TINY_PATCH, TINY_GLOBAL_ROWS, TINY_CROP_ROWS = 4, 8, 5
#: the images (width x height, pixels) of each input set: the first traced, the others
#: unseen, the last at the bounds; images with and without crops, and a call without any
IMAGES = [
    [(1000, 700), (500, 400)],
    [(500, 400)],
    [(600, 300), (700, 700), (1600, 800)],
    [(2000, 500), (800, 1300)],
    [(400, 400), (1000, 1000), (300, 900), (640, 480)],
    [(900, 600), (3000, 2000), (20, 200)],
    [(3000, 2000)] * 4,
]
#: images and crops of one call, at most
IMAGES_MAX, CROPS_MAX = 4, 128
#: the size of both images of the generation prompt (pixels): without crops, as the
#: decoder step is exported for caches of at most 111 tokens (its sliding window, 128)
GENERATION_IMAGE = (600, 500)
#: for each input set of the decoder step (the task's caches of 30, 30, 30, 60, 17 and 24
#: tokens, then 111 at its bounds), how many of the cached tokens the model decodes after
#: the prompt, its window: from none (the cache right after the prompt, as generate's
#: first step gets it) to 110 beside a prompt of one token (the form of the caches the
#: generation stage feeds the graph, whose first position is eager); the first set, the
#: traced one, holds some, as export fixes a length of 0 or 1 seen when tracing
DECODED_TOKENS = (6, 0, 12, 0, 9, 3, 110)
CACHE_WHY = (
    "every text layer is reference sliding-window attention, whose cache layer "
    "(UnlimitedOcrDynamicReferenceSlidingWindowLayer) keeps the prompt's states "
    "(prefill_keys, prefill_values), never evicted, apart from a window of the tokens "
    "decoded after it (keys, values: the empty 1-D tensor of the lazy initialization "
    "until one is); flattened as both parts, (batch, heads, length, head_dim) each, the "
    "prompt's of cache_length (1 to 111) tokens and the window's of decoded_length (0 to "
    "110, the window empty as (batch, heads, 0, head_dim)), its prefill_length, "
    "prefill_cumulative_length and cumulative_length recomputed from their lengths on "
    "unflatten; the decoder's sets hold 0 to 110 decoded tokens beside a prompt of 1 to "
    "60, and with at most 15 new ones the window (128) never fills within the declared "
    "bounds, so nothing is evicted and its counter is its length (beyond, the graph is "
    "not checked); the generation stage runs the prompt's first position eagerly on an "
    "empty cache, which makes that position the layer's prompt part and sends the rest of "
    "the prompt to the window, where at these lengths attention sees the same positions as "
    "in generate, which declares the whole prompt as prefill (its tokens are compared)"
)


def grid(width: int, height: int) -> tuple[int, int]:
    """(columns, rows) of the crops the processor cuts from an image of ``width x height``
    pixels, ``(0, 0)`` for none: none unless its longer side exceeds :data:`CROP_SIDE`,
    else the grid ``get_optimal_tiled_canvas`` picks among 2 to 32 tiles."""
    if max(width, height) <= CROP_SIDE:
        return 0, 0
    return _processor_module().get_optimal_tiled_canvas(
        (height, width), (CROP_SIDE, CROP_SIDE), CROPS_MIN, CROPS_MAX_IMAGE
    )


def sides(model: Any) -> tuple[int, int]:
    """(global view, local crop) sides in pixels for ``model``'s SAM: its feature rows a
    side times its patch and the downsampling."""
    unit = int(model.config.vision_config.sam_config.patch_size) * DOWNSAMPLING
    return TINY_GLOBAL_ROWS * unit, TINY_CROP_ROWS * unit


def feature_index(grids: list[tuple[int, int]], side: int, crop_side: int) -> Any:
    """For images of crop ``grids`` ((columns, rows), ``(0, 0)`` for none) and views of
    ``side x side`` and crops of ``crop_side x crop_side`` feature rows, every image token
    in the processor's order: its row among the global views' rows, then the crops' rows,
    then the newline's, then the separator's."""
    import torch

    base = len(grids) * side * side
    crops = sum(c * r for c, r in grids)
    newline = base + crops * crop_side * crop_side
    separator = newline + 1
    index, crop = [], 0
    for i, (columns, rows) in enumerate(grids):
        if columns * rows:
            tile = torch.arange(columns * rows).reshape(rows, 1, columns, 1)
            cell = torch.arange(crop_side * crop_side).reshape(1, crop_side, 1, crop_side)
            local = base + (crop + tile) * crop_side * crop_side + cell
            local = local.reshape(rows * crop_side, columns * crop_side)
            lines = torch.cat([local, torch.full((rows * crop_side, 1), newline)], 1)
            index.append(lines.reshape(-1))
            crop += columns * rows
        view = i * side * side + torch.arange(side * side).reshape(side, side)
        index.append(torch.cat([view, torch.full((side, 1), newline)], 1).reshape(-1))
        index.append(torch.tensor([separator]))
    return torch.cat(index)


def _rows(model: Any) -> tuple[int, int]:
    side, crop = sides(model)
    unit = int(model.config.vision_config.sam_config.patch_size) * DOWNSAMPLING
    return side // unit, crop // unit


def grids_of(model: Any, image: dict[str, Any]) -> list[tuple[int, int]]:
    """Each image's crop grid, read back from the encoder's inputs ``image``: the crop rows
    of its first line and its lines before its global view in ``feature_index``; a
    ValueError unless :func:`feature_index` gives that index again for them."""
    import torch

    side, crop_side = _rows(model)
    index = image["feature_index"]
    images = image["pixel_values"].shape[0]
    newline = images * side * side + _crops(image) * crop_side * crop_side
    grids: list[tuple[int, int]] | None = []
    start = 0
    for i in range(images):
        found = (index == i * side * side).nonzero()
        if len(found) != 1 or int(found[0, 0]) < start:
            grids = None
            break
        local = int(found[0, 0]) - start
        if local == 0:
            grids.append((0, 0))
        else:
            breaks = (index[start:] == newline).nonzero()
            width = int(breaks[0, 0]) if len(breaks) else 0
            if width % crop_side or local % (width + 1) or (local // (width + 1)) % crop_side:
                grids = None
                break
            grids.append((width // crop_side, local // (width + 1) // crop_side))
        start = int(found[0, 0]) + side * (side + 1) + 1
    again = None if grids is None else feature_index(grids, side, crop_side)
    if (
        again is None
        or again.shape != index.shape
        or not torch.equal(again, index)
        or sum(c * r for c, r in grids) != _crops(image)
    ):
        raise ValueError(
            "feature_index is not the processor's order of any crop grids for these "
            f"{images} images and {_crops(image)} crops: build it with feature_index()"
        )
    return grids


def processor_image(model: Any, image: dict[str, Any]) -> dict[str, Any]:
    """The encoder's inputs ``image`` as the processor gives them to ``generate``: the
    global views, the crops (absent without any), ``num_local_patches`` and
    ``patches_grid`` (lists, as the processor leaves them; ``[1, 1]`` without crops)."""
    grids = grids_of(model, image)
    given = {"pixel_values": image["pixel_values"]}
    if _crops(image):
        given["pixel_values_local"] = image["pixel_values_local"]
    given["num_local_patches"] = [c * r for c, r in grids]
    given["patches_grid"] = [[c, r] if c * r else [1, 1] for c, r in grids]
    return given


def images(model: Any, sizes: list[tuple[int, int]], generator: Any) -> dict[str, Any]:
    """The encoder's inputs for images of ``sizes`` (width x height, pixels): random
    global views and crops at the tower's two resolutions (:func:`sides`), as many crops
    as the processor cuts (:func:`grid`), and :func:`feature_index`."""
    import torch

    channels = int(model.config.vision_config.sam_config.num_channels)
    side, crop = sides(model)
    grids = [grid(w, h) for w, h in sizes]
    crops = sum(c * r for c, r in grids)
    return {
        "pixel_values": torch.randn((len(sizes), channels, side, side), generator=generator),
        "pixel_values_local": torch.randn((crops, channels, crop, crop), generator=generator),
        "feature_index": feature_index(grids, *_rows(model)),
    }


def check(model: Any, feeds: dict[str, Any]) -> None:
    """A ValueError unless the encoder gives on ``feeds`` what the model's own
    ``get_image_features`` gives on the processor's inputs for them: the same rows in the
    same order, equal to float precision (1e-5)."""
    import torch

    given = processor_image(model, feeds)
    with torch.no_grad():
        got = encoder(model)(**feeds)
        out = model.model.get_image_features(**given)
    want = torch.cat(list(out.pooler_output))
    if got.shape != want.shape or not torch.allclose(got, want, atol=1e-5, rtol=0):
        moved = float((got - want).abs().max()) if got.shape == want.shape else None
        raise ValueError(
            f"the crops' and global views' features for patches_grid "
            f"{given['patches_grid']} differ from get_image_features': "
            f"shapes {tuple(got.shape)} and {tuple(want.shape)}, max abs diff {moved}"
        )


def image_sets(model: Any, generator: Any) -> tuple[list[dict[str, Any]], list[str]]:
    """The vision encoder's input sets of :data:`IMAGES` and their labels, each checked to
    give the features of ``get_image_features`` (:func:`check`)."""
    sets, labels = [], []
    for sizes in IMAGES:
        feeds = images(model, sizes, generator)
        check(model, feeds)
        sets.append(feeds)
        grids = [grid(w, h) for w, h in sizes]
        shown = ",".join(f"{w}x{h}:{c}x{r}" for (w, h), (c, r) in zip(sizes, grids, strict=True))
        if len(set(sizes)) == 1 < len(sizes):
            shown = f"{len(sizes)} of {sizes[0][0]}x{sizes[0][1]}:{grids[0][0]}x{grids[0][1]}"
        labels.append(
            f"images={len(sizes)} crops={sum(c * r for c, r in grids)} "
            f"tokens={feeds['feature_index'].shape[0]} sizes:grids={shown}"
        )
    return sets, labels


def image_shapes(model: Any) -> tuple[dict[str, Any], str]:
    import torch

    side, crop = sides(model)
    shapes = {
        "pixel_values": {0: torch.export.Dim("images", min=1, max=IMAGES_MAX)},
        "pixel_values_local": {0: torch.export.Dim("crops", min=0, max=CROPS_MAX)},
        "feature_index": {0: torch.export.Dim("image_tokens", min=1)},
    }
    resolution = (
        f"global views {side}x{side} and local crops {crop}x{crop} static (the processor "
        "pads every global view to its size, 1024, and resizes every crop to its "
        "tile_size, 640: 16 x 16 and 10 x 10 feature rows; the tiny SAM's patches of 4 "
        "pixels give 8 x 8 and 5 x 5, in the same proportion); images, crops (none when no "
        "image of the call has any: the tower also runs on one blank crop, whose rows it "
        "drops) and image tokens dynamic; the order of the feature rows, which "
        "get_image_features builds from num_local_patches and patches_grid with a Python "
        "loop (each image's crops as one picture, then its global view, every line ended by "
        "image_newline, then view_separator), is given as a precomputed index of the "
        "global, crop, newline and separator rows (feature_index), checked against "
        "get_image_features on every input set"
    )
    return shapes, resolution


def generation_image(model: Any, generator: Any) -> dict[str, Any]:
    return images(model, [GENERATION_IMAGE] * 2, generator)


def _encoder_class() -> type:
    import torch

    class GridEncoder(torch.nn.Module):
        """global views, local crops and ``feature_index`` -> the image features: the
        model's own tower and projector on each batch, its newline and view separator,
        their rows gathered in the order ``feature_index`` gives."""

        layout = "crops"

        def __init__(self, model: Any, channels: int = 0, width: int = 0) -> None:
            super().__init__()
            self.model = model

        def features(self, pixels: Any) -> Any:
            base = self.model.model
            return base.multi_modal_projector(base.vision_tower(pixels).last_hidden_state)

        def forward(self, pixel_values: Any, pixel_values_local: Any, feature_index: Any) -> Any:
            # one blank crop after the given ones, whose rows are dropped: the tower
            # never runs on an empty batch when the call's images have no crops
            blank = pixel_values_local.new_zeros((1, *pixel_values_local.shape[1:]))
            crops = self.features(torch.cat([pixel_values_local, blank]))[:-1]
            views = self.features(pixel_values)
            base = self.model.model
            found = torch.cat(
                [
                    views.reshape(-1, views.shape[-1]),
                    crops.reshape(-1, crops.shape[-1]),
                    base.image_newline[None],
                    base.view_separator[None],
                ]
            )
            return found[feature_index]

    return GridEncoder


def encoder(model: Any, channels: int = 0, width: int = 0) -> Any:
    return _encoder_class()(model, channels, width)


LAYOUT = {
    "layout": "crops",
    "encoder": encoder,
    "image_sets": image_sets,
    "image_shapes": image_shapes,
    "generation_image": generation_image,
    "processor_image": processor_image,
    "decoded_tokens": (DECODED_TOKENS, CACHE_WHY),
}
WHY = (
    "a global view and local crops of each image: the crops' rows laid out as one picture, "
    "every line ended by a newline, before the global view's lines and the view separator, "
    "by a precomputed index (feature_index) instead of the loop get_image_features runs "
    "over the crop grids in Python"
)


def _setup() -> None:
    # Every text layer is a reference sliding-window layer: the prompt's states in
    # prefill_keys and prefill_values, kept out of the window, prefill_length and
    # prefill_cumulative_length their length once the prompt is in; the window in keys
    # and values, the empty 1-D tensor of the lazy initialization until a token is decoded
    register_length_slot("prefill_keys", "keys", ("prefill_length", "prefill_cumulative_length"))
    register_length_slot("prefill_values", "values")


register(
    Family(
        name="unlimited_ocr",
        model_types=("unlimited_ocr",),
        config_fixes={
            "unlimited_ocr": (
                {
                    "vision_config.sam_config.patch_size": TINY_PATCH,
                    "vision_config.sam_config.image_size": TINY_GLOBAL_ROWS
                    * TINY_PATCH
                    * DOWNSAMPLING,
                    "vision_config.sam_config.mlp_dim": 128,
                    "vision_config.sam_config.output_channels": 32,
                    "vision_config.sam_config.downsample_channels": [64, 64],
                },
                "SAM's second downsampling convolution must give the CLIP encoder's width "
                "(64), which takes its map as patch embeddings, and its neck is shrunk (32 "
                "channels, MLP of 128); SAM's patches of 4 pixels at an image_size of 128 "
                "give the global view 8 x 8 feature rows and an 80-pixel crop 5 x 5, the "
                "processor's 16 x 16 and 10 x 10 in proportion",
            )
        },
        input_layouts={"unlimited_ocr": (LAYOUT, WHY)},
        setup=_setup,
    )
)
