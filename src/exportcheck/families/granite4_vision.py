"""Granite 4 Vision: a LLaVA-NeXT tiling whose image features are not merged once but
injected into several decoder layers (deepstack), each through a windowed Q-Former
downsampler."""

from __future__ import annotations

from typing import Any

from . import Family, register

#: the images of each input set (height, width in tile sides of the tiny config's 256
#: pixels): the first traced, the others unseen, the last at the bounds (4 images of 2 x 2
#: tiles and their base views, 20 tiles)
IMAGES = [
    [(0.9, 1.8), (2.05, 0.8)],
    [(2.0, 2.0)],
    [(0.9, 1.8), (2.0, 2.0), (0.7, 0.7)],
    [(1.0, 3.0), (1.2, 1.1)],
    [(0.5, 0.5), (1.5, 1.2), (2.9, 1.0), (1.8, 0.9)],
    [(2.0, 2.0)] * 4,
]
TILES_MAX = 20
#: the size of both images of the generation prompt (tile sides)
GENERATION_IMAGE = (0.9, 1.8)


def target_layers(model: Any) -> dict[int, str]:
    """The text layers the image features are added before, each with what gives them
    (``layerwise i`` / ``spatial i``), as ``get_image_features`` pairs them; a ValueError
    for a layer 0 (the forward adds there after the embedding multiplier, where the
    decoder step adds nothing) or a layer targeted twice (the forward keeps the last)."""
    config = model.config
    pairs = [(layer, f"layerwise {i}") for i, (_, layer) in enumerate(config.deepstack_layer_map)]
    pairs += [(layer, f"spatial {i}") for i, layer in enumerate(config.spatial_target_layers)]
    layers = dict(pairs)
    if len(layers) != len(pairs) or 0 in layers:
        raise ValueError(
            f"granite4_vision: the text layers {[p[0] for p in pairs]} the image features "
            "go to must be distinct and above 0: the decoder step adds each layer's rows "
            "to the output of the layer before"
        )
    return layers


def deepstack_layers(model: Any) -> int:
    """The language model's layers whose output gets image features: those before every
    layer the features go to (:func:`target_layers`) that the language model has."""
    layers = len(model.model.language_model.layers)
    return max((t for t in target_layers(model) if t < layers), default=0)


def _rows(model: Any, pixel_values: Any) -> dict[int, Any]:
    """Each target layer's features of the tiles ``(tiles, tokens, hidden)``, before the
    per-image packing: the model's own tower and downsamplers, on the layers
    ``get_image_features`` takes."""
    base, config = model.model, model.config
    states = base.vision_tower(pixel_values, output_hidden_states=True).hidden_states
    drop = 1 if config.vision_feature_select_strategy == "default" else 0
    out = {}
    for i, (vision, layer) in enumerate(config.deepstack_layer_map):
        out[layer] = base.layerwise_projectors[i](states[vision][:, drop:])
    for i, layer in enumerate(config.spatial_target_layers):
        out[layer] = base.spatial_projectors[i](states[config.spatial_vision_layer][:, drop:])
    return out


def _encoder_class() -> type:
    import torch

    class Granite4TileEncoder(torch.nn.Module):
        """the tiles of images of any size and ``feature_index`` (the order of their rows
        and newline rows, from the model's own ``pack_image_features``) -> ``features``,
        zeros at the image tokens (the forward zeroes the input embeddings there), and
        ``deepstack`` ``(layers, rows, hidden)``: row ``i`` what the forward adds before
        text layer ``i + 1``, zeros for a layer that gets nothing."""

        layout = "granite4_tiles"

        def __init__(self, model: Any, channels: int = 0, width: int = 0) -> None:
            super().__init__()
            self.model = model
            vision = model.config.vision_config
            self.tile = (int(vision.num_channels), int(vision.image_size), int(vision.image_size))
            self.layers = deepstack_layers(model)

        def forward(self, pixel_values: Any, feature_index: Any) -> Any:
            if pixel_values.dim() != 4 or tuple(pixel_values.shape[1:]) != self.tile:
                raise ValueError(
                    f"pixel_values must be (tiles, {', '.join(map(str, self.tile))}), the "
                    f"image processor's tiles of every image; got {tuple(pixel_values.shape)}"
                )
            newline = self.model.model.image_newline
            added = _rows(self.model, pixel_values.to(self.model.dtype))
            packed = {}
            for layer, rows in added.items():
                rows = torch.cat([rows.reshape(-1, rows.shape[-1]), newline[None].to(rows)])
                packed[layer] = rows[feature_index]
            some = next(iter(packed.values()))
            zeros = torch.zeros_like(some)
            deep = [packed.get(i + 1, zeros) for i in range(self.layers)]
            return {"features": zeros, "deepstack": torch.stack(deep)}

    return Granite4TileEncoder


def encoder(model: Any, channels: int = 0, width: int = 0) -> Any:
    return _encoder_class()(model, channels, width)


def tile_counts(model: Any, sizes: Any) -> list[int]:
    """The tiles of each image of ``sizes`` ``(images, 2)``, base view included: the
    modeling module's own ``image_size_to_num_patches``."""
    import sys

    config = model.config
    module = sys.modules[type(model.model).__module__]
    side = int(config.vision_config.image_size)
    return [
        int(module.image_size_to_num_patches(s, config.image_grid_pinpoints, side)) for s in sizes
    ]


def feature_index(model: Any, sizes: Any, tokens: int) -> tuple[list[int], Any]:
    """The tiles of each image of ``sizes`` ``(images, 2)`` and ``feature_index``: for
    every row ``get_image_features`` gives a text layer, its row in the tiles' rows
    flattened (``tiles * tokens``) followed by the newline row; the counts from the
    modeling module's ``image_size_to_num_patches``, the order from the model's own
    ``pack_image_features`` run on row numbers (the newline numbered after the last)."""
    import torch

    base, config = model.model, model.config
    counts = tile_counts(model, sizes)
    rows = sum(counts) * tokens
    numbers = torch.arange(rows, dtype=torch.float64).reshape(sum(counts), tokens, 1)
    packed = base.pack_image_features(
        list(torch.split(numbers, counts)),
        sizes,
        vision_feature_select_strategy=config.vision_feature_select_strategy,
        image_newline=torch.tensor([float(rows)], dtype=torch.float64),
    )
    return counts, torch.cat(packed).reshape(-1).to(torch.int64)


def tile_set(model: Any, images: list[tuple[float, float]], generator: Any) -> tuple[dict, Any]:
    """The graph's inputs for random images of ``images`` (tile sides) and the
    ``image_sizes`` the processor gives with them (:func:`feature_index`)."""
    import torch

    vision = model.config.vision_config
    side = int(vision.image_size)
    sizes = torch.tensor([(round(h * side), round(w * side)) for h, w in images])
    with torch.no_grad():
        zeros = torch.zeros((1, int(vision.num_channels), side, side))
        tokens = next(iter(_rows(model, zeros).values())).shape[1]
    counts, index = feature_index(model, sizes, tokens)
    tiles = torch.randn((sum(counts), int(vision.num_channels), side, side), generator=generator)
    return {"pixel_values": tiles, "feature_index": index}, sizes


def processor_inputs(model: Any, feeds: dict[str, Any], sizes: Any) -> dict[str, Any]:
    """The tiles of ``feeds`` as the processor gives them to the model: ``pixel_values``
    ``(images, most tiles, channels, size, size)``, each image's tiles then zeros, and
    ``image_sizes``."""
    import torch

    counts = tile_counts(model, sizes)
    pixels = feeds["pixel_values"]
    padded = torch.zeros((len(counts), max(counts), *pixels.shape[1:]), dtype=pixels.dtype)
    for i, part in enumerate(torch.split(pixels, counts)):
        padded[i, : counts[i]] = part
    return {"pixel_values": padded, "image_sizes": sizes}


def check(model: Any, feeds: dict[str, Any], sizes: Any) -> None:
    """A ValueError unless the encoder's rows on ``feeds`` are exactly those
    ``get_image_features`` gives each text layer on the processor's inputs."""
    import torch

    with torch.no_grad():
        got = encoder(model)(**feeds)
        out = model.model.get_image_features(**processor_inputs(model, feeds, sizes))
    want = {layer: torch.cat(list(rows)) for layer, rows in out.deepstack_features}
    for layer, rows in want.items():
        if layer > deepstack_layers(model):
            continue
        mine = got["deepstack"][layer - 1]
        if mine.shape != rows.shape or not torch.equal(mine, rows):
            raise ValueError(
                f"image_sizes {sizes.tolist()}: the rows of text layer {layer} differ from "
                f"get_image_features' ({tuple(mine.shape)} and {tuple(rows.shape)})"
            )


def image_sets(model: Any, generator: Any) -> tuple[list[dict[str, Any]], list[str]]:
    """The vision encoder's input sets of :data:`IMAGES` and their labels, each checked
    to give exactly the rows of ``get_image_features`` (:func:`check`)."""
    sets, labels = [], []
    for images in IMAGES:
        feeds, sizes = tile_set(model, images, generator)
        check(model, feeds, sizes)
        sets.append(feeds)
        labels.append(
            f"images={len(images)} tiles={feeds['pixel_values'].shape[0]} sizes="
            + ",".join(f"{h}x{w}" for h, w in sizes.tolist())
        )
    return sets, labels


def image_shapes(model: Any) -> tuple[dict[str, Any], str]:
    import torch

    side = int(model.config.vision_config.image_size)
    shapes = {
        "pixel_values": {0: torch.export.Dim("tiles", min=1, max=TILES_MAX)},
        "feature_index": {0: torch.export.Dim("feature_rows", min=1)},
    }
    resolution = (
        "images of any size as the LLaVA-NeXT processor tiles them: a base view and the "
        f"tiles of the best grid of image_grid_pinpoints, tiles of {side} pixels (the tiny "
        "config's, 384 in the published one; the images in proportion); the rows' order, "
        "unpadding and newline rows, which get_image_features computes from image_sizes "
        "with Python loops, given as feature_index from the model's own "
        "pack_image_features; returns zeros at the image tokens (the forward zeroes the "
        "input embeddings there) and the rows of each text layer the deepstack map and "
        "the spatial groups add to, checked against get_image_features on every input "
        f"set; tiles dynamic, bound {TILES_MAX}"
    )
    return shapes, resolution


def generation_image(model: Any, generator: Any) -> dict[str, Any]:
    return tile_set(model, [GENERATION_IMAGE] * 2, generator)[0]


def processor_image(model: Any, image: dict[str, Any]) -> dict[str, Any]:
    """Graph inputs ``image`` as the processor gives them: the padded tiles and the
    ``image_sizes`` of the images they were cut from, found among the generation
    prompt's and the input sets' (the feature index depends on the sizes alone).

    :raises ValueError: when no known sizes give this feature index
    """
    import torch

    generator = torch.Generator().manual_seed(0)
    for images in ([GENERATION_IMAGE] * 2, *IMAGES):
        feeds, sizes = tile_set(model, images, generator)
        if torch.equal(feeds["feature_index"], image["feature_index"]):
            return processor_inputs(model, image, sizes)
    raise ValueError(
        "this feature index comes from none of the input sets' or the generation "
        "prompt's image sizes: give the sizes the tiles were cut from"
    )


def _text_lm_class() -> type:
    import torch

    class Granite4TextLM(torch.nn.Module):
        """The model on input embeddings, with a ``DynamicCache`` when asked for a cache
        and given none: its language model makes none itself (its forward returns
        ``cache=None`` then), where ``generate`` always hands it one."""

        def __init__(self, model: Any) -> None:
            super().__init__()
            self.lm = model

        @property
        def layers(self) -> Any:
            """The language model's decoder layers (where DeepStack rows are added)."""
            return self.lm.model.language_model.layers

        def forward(self, cache: Any = None, use_cache: Any = None, **kwargs: Any) -> Any:
            from transformers import DynamicCache

            if use_cache and cache is None:
                cache = DynamicCache(config=self.lm.config.get_text_config(decoder=True))
            return self.lm(cache=cache, use_cache=use_cache, **kwargs)

    return Granite4TextLM


def text_lm(model: Any) -> Any:
    """The decoder LM of a Granite 4 Vision model (see :func:`_text_lm_class`)."""
    return _text_lm_class()(model)


LAYOUT = {
    "layout": "granite4_tiles",
    "image_arguments": ("image_sizes",),
    "encoder": encoder,
    "image_sets": image_sets,
    "image_shapes": image_shapes,
    "generation_image": generation_image,
    "processor_image": processor_image,
    "deepstack_layers": deepstack_layers,
    "text_lm": text_lm,
}
WHY = (
    "LLaVA-NeXT tiles whose features are not merged into the input embeddings (zeroed "
    "there) but added before several text layers: the packing order precomputed "
    "(feature_index), each layer's rows returned as DeepStack features"
)


register(
    Family(
        name="granite4_vision",
        model_types=("granite4_vision",),
        config_fixes={
            "granite4_vision": (
                {
                    "deepstack_layer_map": [[1, 1], [2, 2]],
                    "spatial_target_layers": [3, 4, 5, 6],
                    "downsample_rate": "2/4",
                    "text_config.num_hidden_layers": 7,
                    "vision_config.image_size": 256,
                    "image_grid_pinpoints": [
                        [256, 512],
                        [512, 256],
                        [512, 512],
                        [768, 256],
                        [256, 768],
                    ],
                },
                "the config class leaves deepstack_layer_map and downsample_rate None (the "
                "checkpoints set them; their values are not here): the model builds one "
                "windowed Q-Former downsampler per [vision layer, text layer] pair of the "
                "map, and splits downsample_rate ('query side/window side') into its windows;"
                " the spatial downsamplers keep one patch of each 2 x 2 block, so the rate "
                "must be 1/2 ('1/4' and '3/8', the config docstring's examples, fail there): "
                "'2/4' here (windows of 4 x 4 patches, 2 x 2 queries each); the tiny config "
                "maps the two vision layers' outputs (hidden_states 1 and 2) into text layers"
                " 1 and 2, and the 4 spatial offset groups (layers 12, 15, 18 and 21 by "
                "default, which the tiny decoder does not have: a target layer it lacks is "
                "skipped silently) into layers 3 to 6, so seven text layers, one injection "
                "each (two at one layer would overwrite each other) and none at layer 0 (the "
                "forward adds there after the embedding multiplier, where the decoder step "
                "adds nothing); images of 256 pixels (8 x 8 "
                "patches of 32, where 224 leaves 7) so that windows of 4 patches tile them, "
                "and the class default's grids of tiles (1 x 2, 2 x 1, 2 x 2, 3 x 1, 1 x 3) "
                "in tiles of 256 pixels",
            )
        },
        input_layouts={"granite4_vision": (LAYOUT, WHY)},
    )
)
