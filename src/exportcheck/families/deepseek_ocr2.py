"""DeepSeek-OCR 2: a global view of each image and its local crops, through a SAM encoder
and a Qwen2 encoder reading learned queries, their features ordered crops first, then the
global view, then a separator.

DeepSeek-OCR 2's image processor (``DeepseekOcr2ImageProcessorPil``) gives each image a
global view, resized to fit a square of ``size`` (1024 pixels) and padded to it, and, for
an image whose longer side exceeds ``tile_size`` (768 pixels), local crops: the image
resized to the grid of 2 to 6 tiles of ``tile_size`` whose aspect ratio is closest to its
own (``get_optimal_tiled_canvas``), one crop per tile. It returns the global views
``pixel_values`` ``(images, 3, 1024, 1024)``, every crop one after the other
``pixel_values_local`` ``(crops, 3, 768, 768)`` (absent when no image has any) and each
image's crop count, ``num_local_patches``. The vision tower (``DeepseekOcr2VisionModel``)
runs SAM and its two stride-2 convolutions, then a Qwen2 encoder over those rows and a set
of learned queries, and keeps the queries' rows: 256 for a view of more than 144 rows
(``query_1024_resolution``), 144 for a crop (``query_768_resolution``), as the processor
counts the image tokens (``DeepseekOcr2Processor.replace_image_token``: the global view's,
each crop's and one more). ``get_image_features`` runs the tower and projector on both
batches, then loops over the images in Python to lay out, for each, its crops' rows, its
global rows and ``view_separator``, which fixes the image count into the graph. The graph
here runs the model's own tower and projector on both batches and takes instead
``feature_index``: for every image token, in the processor's order, its row among the
global rows, the crop rows and the separator's row (:func:`feature_index`), computed on
the processor side from the crop counts and checked against ``get_image_features`` on
every input set. Images, crops (none at all when no image of a call has any: the tower
also runs on one blank crop, whose rows it drops) and image tokens are dynamic; the
two resolutions are static, as the processor fixes them.
"""

from __future__ import annotations

from typing import Any

from . import Family, register

#: the image processor's defaults: the global view's side, a local crop's side (pixels),
#: the fewest and most crops of an image that has crops
GLOBAL_SIDE, CROP_SIDE, CROPS_MIN, CROPS_MAX_IMAGE = 1024, 768, 2, 6
#: SAM's patch side and its neck's downsampling after the patches (two stride-2 convolutions)
PATCH, DOWNSAMPLING = 16, 4
#: the tiny SAM's patch side: the views keep the processor's sides in proportion
#: (1024 / 768) and SAM's rows per view side (64 and 48), 8 times smaller in pixels
TINY_PATCH = 2
#: the images (width x height, pixels) of each input set: the first traced, the others
#: unseen, the last at the bounds; images with and without crops, and a call without any
IMAGES = [
    [(1000, 700), (500, 400)],
    [(500, 400)],
    [(600, 300), (700, 700), (1600, 800)],
    [(2000, 500), (800, 1300)],
    [(400, 400), (1000, 1000), (300, 900), (640, 480)],
    [(900, 600), (3000, 2000), (20, 200)],
    [(1200, 800)] * 4,
]
#: images and crops of one call, at most (small, for the sweep's time)
IMAGES_MAX, CROPS_MAX = 4, 24
#: the size of both images of the generation prompt (pixels): 2 crops each, so each
#: prompt row holds 2 x 144 + 256 + 1 = 545 image tokens
GENERATION_IMAGE = (1000, 500)
#: the decoder step's cache bound (tokens): the model's global view alone takes 257 image
#: tokens (its 256 learned queries, fixed by the model, not the config, and the
#: separator), more than the task's usual 256, and the generation prompt 550
CACHE_MAX = 640


def _processor_module() -> Any:
    import importlib

    return importlib.import_module(
        "transformers.models.deepseek_ocr2.image_processing_pil_deepseek_ocr2"
    )


def crop_count(width: int, height: int) -> int:
    """The local crops the processor cuts from an image of ``width x height`` pixels: none
    unless its longer side exceeds :data:`CROP_SIDE`, else the tiles of the grid its own
    ``get_optimal_tiled_canvas`` picks among 2 to 6 tiles of :data:`CROP_SIDE`."""
    if max(width, height) <= CROP_SIDE:
        return 0
    columns, rows_ = _processor_module().get_optimal_tiled_canvas(
        (height, width), (CROP_SIDE, CROP_SIDE), CROPS_MIN, CROPS_MAX_IMAGE
    )
    return columns * rows_


def sides(model: Any) -> tuple[int, int]:
    """(global view, local crop) sides in pixels for ``model``'s SAM: its ``image_size``
    (whose position table the global view fits) and the crop in the processor's
    proportion (768 / 1024)."""
    side = int(model.config.vision_config.sam_config.image_size)
    return side, side * CROP_SIDE // GLOBAL_SIDE


def rows(model: Any) -> tuple[int, int]:
    """The feature rows (image tokens) of a global view and of a local crop: the tower's
    learned queries for each resolution (256 and 144, the processor's
    ``ceil(1024 / 16 / 4) ** 2`` and ``ceil(768 / 16 / 4) ** 2``)."""
    tower = model.model.vision_tower
    return (
        int(tower.query_1024_resolution.num_embeddings),
        int(tower.query_768_resolution.num_embeddings),
    )


def feature_index(counts: list[int], global_rows: int, crop_rows: int) -> Any:
    """For images of ``counts`` crops each, every image token in the processor's order
    (each image's crops, crop by crop, then its global view, then the separator): its row
    among the global views' rows ``(images * global_rows)``, then the crops' rows, then
    the separator's row (the last)."""
    import torch

    base = len(counts) * global_rows
    separator = base + sum(counts) * crop_rows
    index, crop = [], 0
    for i, count in enumerate(counts):
        first = base + crop * crop_rows
        index.append(torch.arange(first, first + count * crop_rows))
        index.append(torch.arange(i * global_rows, (i + 1) * global_rows))
        index.append(torch.tensor([separator]))
        crop += count
    return torch.cat(index)


def _crops(image: dict[str, Any]) -> int:
    local = image.get("pixel_values_local")
    return 0 if local is None else int(local.shape[0])


def crop_counts(model: Any, image: dict[str, Any]) -> list[int]:
    """Each image's crop count, read back from the encoder's inputs ``image``: the crop
    rows before each global view's first row in ``feature_index``; a ValueError unless
    :func:`feature_index` gives that index again for them."""
    import torch

    global_rows, crop_rows = rows(model)
    index = image["feature_index"]
    images = image["pixel_values"].shape[0]
    counts: list[int] | None = []
    before = 0
    for i in range(images):
        found = (index == i * global_rows).nonzero()
        if len(found) != 1:
            counts = None
            break
        local = int(found[0, 0]) - i * (global_rows + 1)
        if local < before or (local - before) % crop_rows:
            counts = None
            break
        counts.append((local - before) // crop_rows)
        before = local
    again = None if counts is None else feature_index(counts, global_rows, crop_rows)
    if (
        again is None
        or again.shape != index.shape
        or not torch.equal(again, index)
        or sum(counts) != _crops(image)
    ):
        raise ValueError(
            "feature_index is not the processor's order of any crop counts for these "
            f"{images} images and {_crops(image)} crops: build it with feature_index()"
        )
    return counts


def processor_image(model: Any, image: dict[str, Any]) -> dict[str, Any]:
    """The encoder's inputs ``image`` as the processor gives them to ``generate``: the
    global views, the crops (absent without any) and ``num_local_patches``
    (:func:`crop_counts`)."""
    import torch

    counts = crop_counts(model, image)
    given = {"pixel_values": image["pixel_values"]}
    if sum(counts):
        given["pixel_values_local"] = image["pixel_values_local"]
    given["num_local_patches"] = torch.tensor(counts, dtype=torch.int64)
    return given


def images(model: Any, sizes: list[tuple[int, int]], generator: Any) -> dict[str, Any]:
    """The encoder's inputs for images of ``sizes`` (width x height, pixels): random
    global views and crops at the tower's two resolutions (:func:`sides`), as many crops
    as the processor cuts (:func:`crop_count`), and :func:`feature_index`."""
    import torch

    channels = int(model.config.vision_config.sam_config.num_channels)
    side, crop = sides(model)
    counts = [crop_count(w, h) for w, h in sizes]
    return {
        "pixel_values": torch.randn((len(sizes), channels, side, side), generator=generator),
        "pixel_values_local": torch.randn((sum(counts), channels, crop, crop), generator=generator),
        "feature_index": feature_index(counts, *rows(model)),
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
    # the blank crop makes the crops' batch one longer than get_image_features' own:
    # batched kernels may round differently, so the rows match to float precision
    if got.shape != want.shape or not torch.allclose(got, want, atol=1e-5, rtol=0):
        moved = float((got - want).abs().max()) if got.shape == want.shape else None
        raise ValueError(
            f"the crops' and global views' features for num_local_patches "
            f"{given['num_local_patches'].tolist()} differ from get_image_features': "
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
        counts = [crop_count(w, h) for w, h in sizes]
        shown = ",".join(f"{w}x{h}:{c}" for (w, h), c in zip(sizes, counts, strict=True))
        if len(set(sizes)) == 1 < len(sizes):
            shown = f"{len(sizes)} of {sizes[0][0]}x{sizes[0][1]}:{counts[0]}"
        labels.append(
            f"images={len(sizes)} crops={sum(counts)} "
            f"tokens={feeds['feature_index'].shape[0]} sizes:crops={shown}"
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
        "tile_size, 768; the tiny SAM's patches of 2 pixels keep both in proportion and "
        "SAM's 64 and 48 rows a side, so the tower keeps its 256 and 144 queries); images, "
        "crops (none when no image of the call has any: the tower also runs on one blank "
        "crop, whose rows it drops) and image tokens dynamic; the order of the "
        "feature rows, which get_image_features builds from num_local_patches with a "
        "Python loop (each image's crops, its global view, then view_separator), is given "
        "as a precomputed index of the global, crop and separator rows (feature_index), "
        "checked against get_image_features on every input set"
    )
    return shapes, resolution


def generation_image(model: Any, generator: Any) -> dict[str, Any]:
    return images(model, [GENERATION_IMAGE] * 2, generator)


def _encoder_class() -> type:
    import torch

    class CropEncoder(torch.nn.Module):
        """global views, local crops and ``feature_index`` -> the image features: the
        model's own tower and projector on each batch and its view separator, their rows
        gathered in the order ``feature_index`` gives."""

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
            separator = self.model.model.view_separator[None]
            found = torch.cat(
                [views.reshape(-1, views.shape[-1]), crops.reshape(-1, crops.shape[-1]), separator]
            )
            return found[feature_index]

    return CropEncoder


def encoder(model: Any, channels: int = 0, width: int = 0) -> Any:
    return _encoder_class()(model, channels, width)


LAYOUT = {
    "layout": "crops",
    "encoder": encoder,
    "image_sets": image_sets,
    "image_shapes": image_shapes,
    "generation_image": generation_image,
    "processor_image": processor_image,
    "cache_max": CACHE_MAX,
}
WHY = (
    "a global view and local crops of each image: the crops' rows put before each "
    "image's global rows and the view separator by a precomputed index (feature_index) "
    "instead of the loop get_image_features runs over num_local_patches in Python"
)

register(
    Family(
        name="deepseek_ocr2",
        model_types=("deepseek_ocr2",),
        config_fixes={
            "deepseek_ocr2": (
                {
                    "text_config.mlp_layer_types": ["dense", "sparse"],
                    "vision_config.sam_config.patch_size": TINY_PATCH,
                    "vision_config.sam_config.image_size": GLOBAL_SIDE * TINY_PATCH // PATCH,
                    "vision_config.sam_config.mlp_dim": 128,
                    "vision_config.sam_config.output_channels": 32,
                    "vision_config.sam_config.downsample_channels": [64, 64],
                },
                "the config class leaves text_config.mlp_layer_types None, which each "
                "decoder layer indexes to choose a dense or a sparse MLP (the tiny model: "
                "one of each); SAM's second downsampling convolution must give the Qwen2 "
                "encoder's width (64) and its neck is shrunk (32 channels, MLP of 128); "
                "SAM's patches of 2 pixels at an image_size of 128 keep its 64 rows a side "
                "of the 1024-pixel global view (48 of a 768-pixel crop), so the tower picks "
                "its 256 and 144 queries as at full size",
            )
        },
        input_layouts={"deepseek_ocr2": (LAYOUT, WHY)},
    )
)
