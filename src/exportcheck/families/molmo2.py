"""Molmo2 (``molmo2``): every image as a global view and overlapping crops, a ViT over
each crop, an adapter that pools the patches of each image token by attention, and a
language model whose image tokens attend to each other both ways in the prefill.

Its image processor (``image_processing_molmo2.py``) cuts an image of any size into
square crops of the vision config's ``image_size``: a global view of the whole image
resized to one crop, then a canvas of ``tiling_h x tiling_w`` overlapping crops (each a
window of ``crop_patches - left - right`` patches after its neighbour,
``overlap_margins``; the tiling picked for the image's size among those of at most
``max_crops`` crops). ``pixel_values`` ``(crops, patches, patch ** 2 * channels)`` holds
the crops of every image one after the other. Each canvas patch is taken from one crop
(a crop's margins towards its neighbours are dropped); ``image_token_pooling`` ``(tokens,
pool_h * pool_w)`` groups the global view's patches and then the canvas' into
``pooling_size`` blocks, padded with -1 where a side is odd, offset by the patches of the
images before. ``image_grids`` ``(images, 4)``: the pooled rows and columns of the global
view and of the canvas. The input sets are the processor's own ``_preprocess`` on random
images with the tiny model's settings (:data:`MAX_CROPS`, ...): without torchvision,
transformers' lazy module hands out placeholders that refuse every use, so the module is
loaded from its file and its methods run on a stand-in for the torchvision backend (a
bilinear resize by ``interpolate``: random pixels either way). Its processor writes one
``<im_patch>`` token per pooled block, with column and start/end tokens around them; the
prompts here hold the ``<im_patch>`` tokens only, typed 1 in ``mm_token_type_ids``.

``get_image_features`` runs the tower over the crops, concatenates the hidden states of
``vision_feature_layer``, and the adapter gathers each token's patches by
``image_token_pooling``, attends from their mean to them (the -1 slots masked), projects,
keeps the tokens with at least one patch (a boolean mask: a data-dependent row count)
and cuts them per image with sizes read in Python. Every token the processor builds has a
patch (checked for every input set), so the graph keeps all rows: it takes the crops and
the pooling indices, crops and tokens dynamic, and runs the adapter's own modules.

The forward adds the features to the embeddings of the placeholders (not a replacement),
so the vision encoder graph returns the rows the forward writes there: the features plus
the placeholder's embedding. And the processor's ``mm_token_type_ids`` (1 on image tokens)
make the image tokens of a prompt attend to each other both ways in the prefill (one
block of ``create_causal_mask``'s ``block_sequence_ids``); later steps are causal. The
decoder step takes those types of every position it sees and runs the model with that
mask (:func:`block_lm`), so a prompt prefilled through it, in one chunk, is the forward's
prefill.
"""

from __future__ import annotations

import functools
from typing import Any

import torch

from . import Family, register

MODEL_TYPE = "molmo2"

#: the tiny model's crops (:func:`prepare_config`): 7 x 7 patches of 14 pixels (the
#: published ones 27 x 27), so that a canvas of an odd patch count leaves -1 slots in the
#: pooling blocks, as the published 27-patch crops do
CROP_SIZE = 98
#: the tiny processor's settings: the published 4-patch margins and 8 crops leave a 27-patch
#: crop a window of 19; a 7-patch crop keeps a window of 5 with margins of 1, and at most 5
#: crops keep the prompts short
OVERLAP_MARGINS = (1, 1)
MAX_CROPS = 5
POOLING_SIZE = (2, 2)
#: the tiny model's placeholder ``<im_patch>`` (:func:`prepare_config`): the published id
#: is the base vocabulary plus 2 (151938, in the additional vocabulary); the tiny base
#: vocabulary has 1024 ids
IMAGE_TOKEN = 1026
#: the sizes (height, width) of the images of each input set: the first traced, the others
#: unseen, the last at the bounds (4 images of 5 crops); every set of another shape
#: (crops and tokens)
IMAGE_SIZES = [
    [(150, 220)],
    [(98, 98), (300, 140)],
    [(120, 400)],
    [(90, 90), (200, 200), (160, 60)],
    [(500, 110), (98, 98)],
    [(240, 240)] * 4,
]
#: crops of one call, at most: the bound of the last input set
CROPS_MAX = 4 * MAX_CROPS
#: both images of the generation prompt: a global view and one crop each
GENERATION_SIZES = [(98, 98), (98, 98)]


@functools.cache
def _helpers() -> Any:
    """transformers' ``image_processing_molmo2`` module, loaded from its file: without
    torchvision, transformers' lazy module hands out placeholders that refuse every use,
    while the processor's arithmetic (tiling, crops, pooling indices) is plain torch and
    only its resizing calls torchvision (:class:`_Backend` stands in for it)."""
    import importlib.util
    import os
    import sys

    from transformers.models import molmo2

    name = "transformers.models.molmo2._exportcheck_image_processing"
    path = os.path.join(molmo2.__path__[0], "image_processing_molmo2.py")
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # its class decorators read their source by module name
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[name]
    return module


class _Backend:
    """What the processor's own methods call on ``self`` besides each other: a bilinear
    resize (``torch.nn.functional.interpolate`` for torchvision's; random pixels either
    way) and the normalisation."""

    def __init__(self) -> None:
        processor = _helpers().Molmo2ImageProcessor
        for method in (
            "_preprocess",
            "_image_batch_to_patches_and_grids",
            "_build_overlapping_crops",
        ):
            setattr(self, method, getattr(processor, method).__get__(self))

    def resize(self, image: Any, size: Any, resample: Any = None, antialias: bool = False) -> Any:
        shape = (size.height, size.width)
        return torch.nn.functional.interpolate(image, shape, mode="bilinear", align_corners=False)

    def rescale_and_normalize(
        self, images: Any, do_rescale: bool, factor: float, do_normalize: bool, mean: Any, std: Any
    ) -> Any:
        if do_rescale:
            images = images * factor
        if do_normalize:
            images = (images - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]
        return images


def crop_images(model: Any, sizes: list[tuple[int, int]], generator: Any) -> dict[str, Any]:
    """Random images of ``sizes`` (height, width) through the processor's own
    ``_preprocess`` with the tiny model's settings: ``pixel_values``,
    ``image_token_pooling`` (int32, as it gives them), ``image_grids`` and
    ``image_num_crops``."""
    from transformers.image_utils import SizeDict

    vision = model.config.vision_config
    images = [torch.rand((int(vision.num_channels), h, w), generator=generator) for h, w in sizes]
    out = _Backend()._preprocess(
        images,
        do_resize=True,
        size=SizeDict(height=crop_size(model), width=crop_size(model)),
        resample=None,
        do_rescale=False,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=[0.5] * 3,
        image_std=[0.5] * 3,
        do_convert_rgb=True,
        max_crops=MAX_CROPS,
        overlap_margins=list(OVERLAP_MARGINS),
        patch_size=int(vision.patch_size),
        pooling_size=list(POOLING_SIZE),
        disable_grouping=None,
        return_tensors=None,
    )
    return dict(out)


def crop_size(model: Any) -> int:
    """The side of every crop in pixels: the vision config's ``image_size``, which the
    processor's ``size`` is (a ValueError for a non-square one, as the processor's)."""
    height, width = model.config.vision_config.image_size
    if height != width:
        raise ValueError(f"Molmo2 crops are square; the vision image_size is {height} x {width}")
    return int(height)


def _graph_inputs(given: dict[str, Any]) -> dict[str, Any]:
    return {k: given[k] for k in ("pixel_values", "image_token_pooling")}


def _encoder_class() -> type:
    class CropEncoder(torch.nn.Module):
        """Crops and pooling indices -> the rows the forward writes at the image tokens:
        the tower over the crops, the hidden states of ``vision_feature_layer`` side by
        side, the adapter's attention pooling of each token's patches (its own modules
        and mask) and projector, every token kept, plus the placeholder's embedding (the
        forward adds the features to it)."""

        layout = "crops"

        def __init__(self, model: Any, channels: int = 0, width: int = 0) -> None:
            super().__init__()
            self.model = model

        def forward(self, pixel_values: Any, image_token_pooling: Any) -> Any:
            from transformers.masking_utils import create_bidirectional_mask

            base = self.model.model
            out = base.vision_tower(pixel_values, output_hidden_states=True)
            layers = self.model.config.adapter_config.vision_feature_layer
            states = torch.cat([out.hidden_states[i + 1 if i >= 0 else i] for i in layers], dim=-1)
            adapter = base.multi_modal_projector
            flat = states.reshape(-1, states.shape[-1])
            valid = image_token_pooling >= 0
            # the processor's indices are int32; ONNX's GatherND takes int64 only ("Type
            # 'tensor(int32)' of input parameter ... of operator (GatherND) ... is invalid")
            pooled = flat[image_token_pooling.clamp(min=0).to(torch.int64)]
            pooled = pooled * valid.to(pooled.dtype)[..., None]
            counts = valid.to(pooled.dtype).sum(-1)
            counts = torch.where(counts == 0, 1, counts)
            query = pooled.sum(-2, keepdim=True) / counts[:, None, None]
            mask = create_bidirectional_mask(
                config=adapter.config,
                inputs_embeds=query,
                attention_mask=valid,
                encoder_hidden_states=pooled,
            )
            attended, _ = adapter.image_pooling_2d(query, pooled, attention_mask=mask)
            features = adapter.image_projector(attended.squeeze(1))
            placeholder = base.get_input_embeddings().weight[self.model.config.image_token_id]
            return features + placeholder.to(features.dtype)

    return CropEncoder


def encoder(model: Any, channels: int = 0, width: int = 0) -> Any:
    return _encoder_class()(model, channels, width)


def check(model: Any, sets: list[dict[str, Any]], given: list[dict[str, Any]]) -> None:
    """A ValueError unless every token of every set pools at least one patch (the graph
    keeps every row, where the adapter drops tokens without one) and the encoder's rows
    are ``get_image_features``' features plus the placeholder's embedding."""
    module = encoder(model)
    placeholder = model.model.get_input_embeddings().weight[model.config.image_token_id]
    for i, (feeds, full) in enumerate(zip(sets, given, strict=True)):
        if not bool((feeds["image_token_pooling"] >= 0).any(-1).all()):
            raise ValueError(f"input set {i} has an image token that pools no patch")
        with torch.no_grad():
            got = module(**feeds)
            own = model.model.get_image_features(
                full["pixel_values"], full["image_token_pooling"], full["image_grids"]
            ).pooler_output
        want = torch.cat(list(own)) + placeholder
        if got.shape != want.shape or not torch.allclose(got, want, atol=1e-6, rtol=0):
            raise ValueError(
                f"the crop encoder's rows differ from get_image_features' on input set {i}: "
                f"shapes {tuple(got.shape)} and {tuple(want.shape)}"
            )


def image_sets(model: Any, generator: Any) -> tuple[list[dict[str, Any]], list[str]]:
    """The vision encoder's input sets and labels, each checked against
    ``get_image_features`` (:func:`check`)."""
    given = [crop_images(model, sizes, generator) for sizes in IMAGE_SIZES]
    sets = [_graph_inputs(g) for g in given]
    check(model, sets, given)
    labels = [
        f"images={len(sizes)} crops={g['pixel_values'].shape[0]} "
        f"tokens={g['image_token_pooling'].shape[0]} sizes="
        + ",".join(f"{h}x{w}" for h, w in sizes)
        for sizes, g in zip(IMAGE_SIZES, given, strict=True)
    ]
    return sets, labels


def image_shapes(model: Any) -> tuple[dict[str, Any], str]:
    shapes = {
        "pixel_values": {0: torch.export.Dim("crops", min=1, max=CROPS_MAX)},
        "image_token_pooling": {0: torch.export.Dim("image_tokens", min=1)},
    }
    patch, crop = int(model.config.vision_config.patch_size), crop_size(model)
    resolution = (
        f"images of any size as the processor cuts them: a global view and overlapping "
        f"crops of {crop}x{crop} pixels ({crop // patch} x {crop // patch} patches, "
        f"margins {OVERLAP_MARGINS}, at most {MAX_CROPS} crops an image), pixel_values "
        "(crops, patches, pixels) with crops dynamic, and "
        "image_token_pooling (tokens, "
        f"{POOLING_SIZE[0] * POOLING_SIZE[1]}), each token's patches (-1 slots padding), "
        "tokens dynamic; every token pools a patch, so all rows are kept (checked against "
        "get_image_features on every input set); the rows are the features plus the "
        "placeholder's embedding, as the forward adds them"
    )
    return shapes, resolution


def generation_image(model: Any, generator: Any) -> dict[str, Any]:
    return _graph_inputs(crop_images(model, GENERATION_SIZES, generator))


def processor_image(model: Any, image: dict[str, Any]) -> dict[str, Any]:
    """Images of the graph's inputs as the processor gives them to ``generate`` (or to
    ``get_image_features``): its crops and pooling indices with the ``image_grids`` and
    ``image_num_crops`` of the sizes they were cut from, found among the input sets' and
    the generation prompt's (the pooling indices depend on the sizes alone).

    :raises ValueError: when no known sizes give these pooling indices
    """
    generator = torch.Generator().manual_seed(0)
    for sizes in (GENERATION_SIZES, *IMAGE_SIZES):
        layout = crop_images(model, sizes, generator)
        if torch.equal(layout["image_token_pooling"], image["image_token_pooling"]):
            return {**layout, **image}
    raise ValueError(
        "these pooling indices come from none of the input sets' or the generation "
        "prompt's image sizes: give the sizes the crops were cut from"
    )


def image_types(model: Any, ids: Any) -> Any:
    """The decoder step's ``mm_token_type_ids`` of every position it sees, as the task
    gives them to ``generate``: 1 on the placeholder, 0 elsewhere."""
    return (ids == model.config.image_token_id).to(ids.dtype)


def type_kwargs(model: Any, types: Any) -> dict[str, Any]:
    return {"mm_token_type_ids": types}


def _block_lm_class() -> type:
    class BlockLM(torch.nn.Module):
        """The model on input embeddings; given ``mm_token_type_ids`` of every position
        seen (cache and new), the mask ``Molmo2Model.forward`` builds in a prefill:
        causal, the image tokens attending to each other both ways
        (``block_sequence_ids``), made with transformers' ``create_causal_mask`` over the
        cache given, and handed to the forward as the 4-D mask it returns as is."""

        def __init__(self, model: Any) -> None:
            super().__init__()
            self.model = model

        def forward(
            self,
            inputs_embeds: Any,
            attention_mask: Any = None,
            cache: Any = None,
            use_cache: Any = None,
            mm_token_type_ids: Any = None,
            **kwargs: Any,
        ) -> Any:
            if mm_token_type_ids is not None:
                from transformers.cache_utils import DynamicCache
                from transformers.masking_utils import create_causal_mask

                text = self.model.config.get_text_config()
                if cache is None and use_cache:
                    cache = DynamicCache(config=text)
                attention_mask = create_causal_mask(
                    config=text,
                    inputs_embeds=inputs_embeds,
                    attention_mask=attention_mask,
                    cache=cache,
                    block_sequence_ids=torch.where(mm_token_type_ids == 1, 0, -1),
                )
            return self.model(
                inputs_embeds=inputs_embeds,
                attention_mask=attention_mask,
                cache=cache,
                use_cache=use_cache,
                **kwargs,
            )

    return BlockLM


def block_lm(model: Any) -> Any:
    return _block_lm_class()(model)


def prepare_config(config: Any, shrink: Any = None) -> tuple[Any, str]:
    """``config`` (a copy) fitted to the crops the input sets are cut into, and a note of
    what changed (the task's ``prepare_config``, before its generic fitting):

    * a vision ``image_size`` above :data:`CROP_SIZE` becomes it, with
      ``num_position_embeddings`` its patch count: the tower adds that position table to
      every crop's patches, and the config class derives it from ``image_size`` once, so
      that the task's generic shrinking of ``image_size`` (378 to 112 pixels) would leave
      it at 729 rows;
    * the adapter's ``text_hidden_size`` becomes the text width: its rows are added to the
      token embeddings (the config class leaves 3584 against a text width of 4096);
    * ``vision_feature_layer`` reads two different layers, the last and the one before, as
      the published ``[24, 18]`` reads two (the shrinking clamps both to the tiny tower's
      last);
    * ``image_patch_id`` past the embedding table (151938, the published base vocabulary
      plus 2) becomes the base vocabulary plus 2, in the additional vocabulary as
      published;
    * the adapter's ``initializer_range`` 0.1: at 0.02 its attention pooling and gated
      projector make untrained features of about 1e-6 that move less for other pixels,
      at 0.1 about as large as the token embeddings."""
    import copy

    config = copy.deepcopy(config)
    vision, adapter, text = config.vision_config, config.adapter_config, config.text_config
    notes = []
    patches = (CROP_SIZE // int(vision.patch_size)) ** 2
    if max(vision.image_size) > CROP_SIZE:
        notes.append(
            f"vision_config.image_size {list(vision.image_size)} -> {[CROP_SIZE] * 2} and "
            f"num_position_embeddings {vision.num_position_embeddings} -> {patches}: the "
            "crops of the input sets, the position table sized from them"
        )
        vision.image_size = [CROP_SIZE, CROP_SIZE]
        vision.num_position_embeddings = patches
    if adapter.text_hidden_size != text.hidden_size:
        notes.append(
            f"adapter_config.text_hidden_size {adapter.text_hidden_size} -> "
            f"{text.hidden_size}: the adapter's rows are added to the token embeddings"
        )
        adapter.text_hidden_size = text.hidden_size
    layers = int(vision.num_hidden_layers)
    chosen = list(adapter.vision_feature_layer)
    if len(set(chosen)) < len(chosen) and layers >= len(chosen):
        distinct = list(range(layers - 1, layers - 1 - len(chosen), -1))
        notes.append(
            f"adapter_config.vision_feature_layer {chosen} -> {distinct}: different layers, "
            "as the published [24, 18]"
        )
        adapter.vision_feature_layer = distinct
    rows = text.vocab_size + text.additional_vocab_size
    if config.image_patch_id >= rows:
        notes.append(
            f"image_patch_id {config.image_patch_id} -> {text.vocab_size + 2}: past the "
            f"{rows} rows of the token embeddings; the base vocabulary plus 2 as published"
        )
        config.image_patch_id = text.vocab_size + 2
    if adapter.initializer_range < 0.1:
        notes.append(
            f"adapter_config.initializer_range {adapter.initializer_range} -> 0.1: "
            "untrained features about as large as the token embeddings, which move with "
            "the pixels"
        )
        adapter.initializer_range = 0.1
    return config, "; ".join(notes)


#: the ``input_layouts`` entry of molmo2
LAYOUT = (
    {
        "layout": "crops",
        "prepare_config": prepare_config,
        "image_arguments": ("image_token_pooling", "image_grids"),
        "encoder": encoder,
        "image_sets": image_sets,
        "image_shapes": image_shapes,
        "generation_image": generation_image,
        "processor_image": processor_image,
        "step_ids": image_types,
        "step_kwargs": type_kwargs,
        "step_ids_seen": True,
        "text_lm": block_lm,
    },
    "each image a global view and overlapping crops (the processor's tiling); "
    "get_image_features pools each token's patches by image_token_pooling, drops tokens "
    "without a patch and cuts the rows per image with image_grids read in Python: the "
    "graph takes the crops and the pooling indices, both dynamic, and keeps every row; "
    "its rows are the features plus the placeholder's embedding (the forward adds them); "
    "the decoder step takes the image token types of every position it sees, for the "
    "prefill's mask in which the image tokens attend to each other both ways",
)

register(Family(name="molmo2", model_types=(MODEL_TYPE,), input_layouts={MODEL_TYPE: LAYOUT}))
