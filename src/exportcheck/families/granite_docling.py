"""Granite Docling: pages cut into tiles, padded per prompt, with DeepStack features.

Granite Docling's image processor (``GraniteDoclingImageProcessor``) cuts each page into
square tiles of the vision config's ``image_size`` on the grid that best matches its
aspect ratio (at most ``max_patches`` tiles, 16 a side), adds a thumbnail of the whole
page when there is more than one tile, and pads the prompts of a call to the same number
of tiles: ``pixel_values`` ``(prompts, tiles, channels, size, size)`` with
``pixel_attention_mask`` ``(prompts, tiles)``, true on the real tiles. The processor
writes ``image_seq_len`` image tokens for every tile (the coarse connector path; the fine
path, four times as many, only when called with ``fine_route=True``).
``get_image_features`` keeps the real tiles (``pixel_values[pixel_attention_mask]``), runs
the tower and its connector on them and splits the rows per prompt with sizes read in
Python; the tower also returns one DeepStack feature per tapped vision layer, which the
language model adds at the image tokens after its first layers.

The graph here takes the processor's padded tiles and instead of the mask ``tile_index``:
the places of the real tiles among the padded tiles flattened (the mask's true
positions, computed on the processor side), and runs the model's own tower and
connector on those tiles; it returns the image features and the DeepStack features of
the layers the language model has, both checked against ``get_image_features`` on every
input set. Its inputs come from the model's own image processor, run on random pages,
with tiles of the tiny vision config's side instead of 512 pixels and the pages in
proportion.
"""

from __future__ import annotations

from typing import Any

from . import Family, register

#: the tiny tile side (pixels) and patch side: 8 x 8 patches a tile, which the coarse
#: connector's pixel shuffle by 4 makes 2 x 2 = 4 image tokens (the published 512 / 16
#: gives 32 x 32 patches, 64 tokens)
TILE_SIDE, PATCH_SIDE = 64, 8
#: the pages (height, width in tile sides) of each prompt of each input set: the first
#: traced, the others unseen, the last at the bounds (a page of 8 x 4 tiles, the
#: processor's max_patches of 32, with its thumbnail); one prompt holds two pages
PAGES = [
    [[(2, 2)], [(1, 2)]],
    [[(1, 1)]],
    [[(1.5, 3)], [(1, 1)], [(2, 2)]],
    [[(1, 1), (2, 1)], [(3, 1)]],
    [[(2, 3)], [(1, 1)], [(1, 2)], [(2, 2)]],
    [[(4, 8)]] * 4,
]
#: prompts and tiles a prompt of one call, at most: a page of max_patches tiles and its
#: thumbnail (small bounds, for the sweep's time)
PROMPTS_MAX, TILES_MAX = 4, 33
#: the page of both prompts of the generation prompt (tile sides)
GENERATION_PAGE = (1, 2)


def image_processor(model: Any) -> Any:
    """The model's image processor (its PIL backend: no torchvision here) with tiles of
    the vision config's side, every other setting its default."""
    from transformers.models.granite_docling.image_processing_pil_granite_docling import (
        GraniteDoclingImageProcessorPil,
    )

    side = int(model.config.vision_config.image_size)
    return GraniteDoclingImageProcessorPil(size={"height": side, "width": side})


def pages(model: Any, prompts: list[list[tuple[float, float]]], generator: Any) -> dict[str, Any]:
    """What the image processor gives for random pages of ``prompts`` (each prompt its
    pages, sizes in tile sides): ``pixel_values`` and ``pixel_attention_mask``."""
    import torch

    side = int(model.config.vision_config.image_size)
    images = [
        [
            torch.randint(0, 256, (round(h * side), round(w * side), 3), generator=generator)
            .to(torch.uint8)
            .numpy()
            for h, w in prompt
        ]
        for prompt in prompts
    ]
    out = image_processor(model)(images, return_tensors="pt")
    return {
        "pixel_values": out["pixel_values"],
        "pixel_attention_mask": out["pixel_attention_mask"],
    }


def graph_inputs(given: dict[str, Any]) -> dict[str, Any]:
    """The graph's inputs for the processor's ``given``: the padded tiles and
    ``tile_index``, the true places of ``pixel_attention_mask`` flattened."""
    mask = given["pixel_attention_mask"]
    return {
        "pixel_values": given["pixel_values"],
        "tile_index": mask.reshape(-1).nonzero()[:, 0],
    }


def processor_image(model: Any, image: dict[str, Any]) -> dict[str, Any]:
    """The graph's inputs ``image`` as the processor gives them to ``generate``: the
    padded tiles and ``pixel_attention_mask``, true at ``tile_index``."""
    import torch

    pixels, index = image["pixel_values"], image["tile_index"]
    mask = torch.zeros(pixels.shape[0] * pixels.shape[1], dtype=torch.bool)
    mask[index] = True
    return {"pixel_values": pixels, "pixel_attention_mask": mask.reshape(pixels.shape[:2])}


def deepstack_layers(model: Any) -> int:
    """The language model's first layers that get DeepStack features: as many as the
    connector has mergers, or as the language model has layers."""
    mergers = model.model.vision_model.connector.coarse.deepstack_mergers
    return min(len(mergers), len(model.model.text_model.layers))


def _encoder_class() -> type:
    import torch

    class DoclingTileEncoder(torch.nn.Module):
        """padded tiles ``(prompts, tiles, channels, size, size)`` and ``tile_index`` ->
        the image features of the real tiles and their DeepStack features ``(layers,
        rows, hidden)``: the real tiles gathered, then the model's own vision model (tower
        and connector on the coarse path, as ``get_image_features`` runs them)."""

        layout = "docling_tiles"

        def __init__(self, model: Any, channels: int = 0, width: int = 0) -> None:
            super().__init__()
            self.model = model
            vision = model.config.vision_config
            self.tile = (int(vision.num_channels), int(vision.image_size), int(vision.image_size))
            self.layers = deepstack_layers(model)

        def forward(self, pixel_values: Any, tile_index: Any) -> Any:
            if pixel_values.dim() != 5 or tuple(pixel_values.shape[2:]) != self.tile:
                raise ValueError(
                    f"pixel_values must be (prompts, tiles, {', '.join(map(str, self.tile))}) "
                    "as the image processor pads them; got shape "
                    f"{tuple(pixel_values.shape)}"
                )
            vision = self.model.model.vision_model
            tiles = pixel_values.flatten(0, 1)[tile_index].to(vision.dtype)
            out = vision(pixel_values=tiles, return_dict=True)
            deepstack = torch.stack(list(out.deepstack_features[: self.layers]))
            return {"features": out.pooler_output, "deepstack": deepstack}

    return DoclingTileEncoder


def encoder(model: Any, channels: int = 0, width: int = 0) -> Any:
    return _encoder_class()(model, channels, width)


def check(model: Any, feeds: dict[str, Any], given: dict[str, Any]) -> None:
    """A ValueError unless the encoder gives on ``feeds`` exactly what the model's own
    ``get_image_features`` gives on the processor's ``given``: the image features and
    the DeepStack features of the layers the language model has."""
    import torch

    with torch.no_grad():
        got = encoder(model)(**feeds)
        out = model.model.get_image_features(**given)
    want = torch.cat(list(out.pooler_output))
    layers = deepstack_layers(model)
    deep = torch.stack([torch.cat(list(f)) for f in out.deepstack_features[:layers]])
    same = got["features"].shape == want.shape and torch.equal(got["features"], want)
    same = same and got["deepstack"].shape == deep.shape and torch.equal(got["deepstack"], deep)
    if not same:
        raise ValueError(
            "the real tiles' features differ from get_image_features' for "
            f"pixel_attention_mask {given['pixel_attention_mask'].int().tolist()}: shapes "
            f"{tuple(got['features'].shape)} and {tuple(want.shape)}, DeepStack "
            f"{tuple(got['deepstack'].shape)} and {tuple(deep.shape)}"
        )


def image_sets(model: Any, generator: Any) -> tuple[list[dict[str, Any]], list[str]]:
    """The vision encoder's input sets of :data:`PAGES` and their labels, each checked to
    give exactly the features of ``get_image_features`` (:func:`check`)."""
    sets, labels = [], []
    for prompts in PAGES:
        given = pages(model, prompts, generator)
        feeds = graph_inputs(given)
        check(model, feeds, given)
        sets.append(feeds)
        counts = given["pixel_attention_mask"].sum(-1).tolist()
        shown = ";".join(
            ",".join(f"{h}x{w}" for h, w in prompt) + f":{c}"
            for prompt, c in zip(prompts, counts, strict=True)
        )
        labels.append(
            f"prompts={len(prompts)} tiles={sum(counts)} padded to "
            f"{given['pixel_values'].shape[1]} pages:tiles={shown}"
        )
    return sets, labels


def image_shapes(model: Any) -> tuple[dict[str, Any], str]:
    import torch

    side = int(model.config.vision_config.image_size)
    shapes = {
        "pixel_values": {
            0: torch.export.Dim("prompts", min=1, max=PROMPTS_MAX),
            1: torch.export.Dim("tiles", min=1, max=TILES_MAX),
        },
        "tile_index": {0: torch.export.Dim("real_tiles", min=1, max=PROMPTS_MAX * TILES_MAX)},
    }
    resolution = (
        "pages of any size as the image processor tiles them: tiles of the vision "
        f"config's image_size ({side}x{side} here, 512 in the published processor; the "
        "pages in proportion), on the grid that best matches each page (at most "
        "max_patches 32), with a thumbnail when there is more than one tile, padded to "
        "the call's most tiles a prompt; prompts and tiles dynamic; the real tiles, which "
        "get_image_features picks with pixel_attention_mask, are given as their places "
        "among the padded tiles (tile_index); image features and DeepStack features of "
        "the coarse connector path (the processor's default), checked against "
        f"get_image_features on every input set; declared bounds {PROMPTS_MAX} prompts "
        f"of {TILES_MAX} tiles (small, for the sweep's time)"
    )
    return shapes, resolution


def generation_image(model: Any, generator: Any) -> dict[str, Any]:
    return graph_inputs(pages(model, [[GENERATION_PAGE], [GENERATION_PAGE]], generator))


LAYOUT = {
    "layout": "docling_tiles",
    "image_arguments": ("pixel_attention_mask",),
    "encoder": encoder,
    "image_sets": image_sets,
    "image_shapes": image_shapes,
    "generation_image": generation_image,
    "processor_image": processor_image,
    "deepstack_layers": deepstack_layers,
}
WHY = (
    "pages as padded tiles: the real tiles, which get_image_features picks with "
    "pixel_attention_mask, gathered by a precomputed index (tile_index); the tower's "
    "DeepStack features returned beside the image features"
)

register(
    Family(
        name="granite_docling",
        model_types=("granite_docling",),
        config_fixes={
            "granite_docling": (
                {
                    "vision_config.image_size": TILE_SIDE,
                    "vision_config.patch_size": PATCH_SIDE,
                    "vision_config.deepstack_visual_indexes": [0, 1],
                },
                "tiles of 64 pixels in patches of 8 (512 and 16 in the config class: 1024 "
                "patches a tile), 4 image tokens a tile on the coarse path (the config "
                "class's scale_factor 4 kept); the DeepStack taps at vision layers 0 and 1 "
                "of the tiny tower's 2 (3, 7 and 10 in the config class, which it does not "
                "have: the connector would get no taps), one for each of the tiny language "
                "model's 2 layers",
            )
        },
        input_layouts={"granite_docling": (LAYOUT, WHY)},
    )
)
