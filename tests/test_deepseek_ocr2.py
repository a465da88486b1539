"""DeepSeek-OCR 2 (families/deepseek_ocr2.py): each image's global view and local crops,
whose feature rows get_image_features lays out in a Python loop over num_local_patches
(crops, global view, separator), exported with that order precomputed."""

import copy
import importlib
import types

import numpy as np
import pytest
import torch

from exportcheck import export_patches, untrained_model
from exportcheck.families import INPUT_LAYOUTS, deepseek_ocr2

pytestmark = pytest.mark.models

TASK = "image-text-to-text"


@pytest.fixture(scope="module")
def ocr():
    assert INPUT_LAYOUTS["deepseek_ocr2"][0] is deepseek_ocr2.LAYOUT  # registered
    return untrained_model("deepseek_ocr2", task=TASK)


def _image_processor():
    # the PIL backend, from its module: the top-level name needs torchvision
    module = importlib.import_module(
        "transformers.models.deepseek_ocr2.image_processing_pil_deepseek_ocr2"
    )
    return module.DeepseekOcr2ImageProcessorPil()


def test_crop_counts_are_the_image_processors():
    processor = _image_processor()
    assert processor.size["height"] == processor.size["width"] == deepseek_ocr2.GLOBAL_SIDE
    assert processor.tile_size == deepseek_ocr2.CROP_SIDE
    assert processor.min_patches == deepseek_ocr2.CROPS_MIN
    assert processor.max_patches == deepseek_ocr2.CROPS_MAX_IMAGE
    sizes = [(300, 200), (768, 768), (769, 500), (500, 769), (1000, 700), (1600, 800)]
    sizes += [(2000, 500), (800, 1300), (3000, 2000), (20, 1000), (1500, 1500), (4000, 600)]
    counts = set()
    for width, height in sizes:
        image = np.zeros((height, width, 3), dtype=np.uint8)
        out = processor(images=[image], return_tensors="pt")
        mine = deepseek_ocr2.crop_count(width, height)
        assert int(out["num_local_patches"][0]) == mine, (width, height)
        assert out["pixel_values"].shape[-2:] == (deepseek_ocr2.GLOBAL_SIDE,) * 2
        if mine:
            assert out["pixel_values_local"].shape == (mine, 3, *(deepseek_ocr2.CROP_SIDE,) * 2)
        counts.add(mine)
    assert 0 in counts and max(counts) == deepseek_ocr2.CROPS_MAX_IMAGE


def test_image_tokens_are_the_processors(ocr):
    # the processor's count of an image's tokens, from its own replace_image_token (its
    # sizes at full scale: the tiny tower keeps their rows, see the next test)
    from transformers.models.deepseek_ocr2.processing_deepseek_ocr2 import (
        DeepseekOcr2Processor,
    )

    processor = types.SimpleNamespace(
        image_processor=_image_processor(), patch_size=16, downsample_ratio=4, image_token="#"
    )
    counts = [0, 2, 6, 3]
    written = [
        len(DeepseekOcr2Processor.replace_image_token(processor, {"num_local_patches": counts}, i))
        for i in range(len(counts))
    ]
    index = deepseek_ocr2.feature_index(counts, *deepseek_ocr2.rows(ocr.model))
    assert index.shape[0] == sum(written)
    assert deepseek_ocr2.rows(ocr.model) == (256, 144)


def test_the_tiny_views_keep_the_towers_rows_and_queries(ocr):
    # SAM's grid of the global view and of a crop (before its two stride-2
    # convolutions) as at full size, 1024 / 16 and 768 / 16 patches a side
    tower = ocr.model.model.vision_tower
    side, crop = deepseek_ocr2.sides(ocr.model)
    patch = ocr.config.vision_config.sam_config.patch_size
    assert (side // patch, crop // patch) == (64, 48)
    with torch.no_grad():
        views = tower(torch.randn(1, 3, side, side)).last_hidden_state
        crops = tower(torch.randn(2, 3, crop, crop)).last_hidden_state
    assert views.shape[1] == 256 and crops.shape[1] == 144


def test_feature_index_puts_each_images_crops_before_its_global_view_and_separator():
    # 2 images of 3 global rows, crops of 2 rows: image 0 has 2 crops, image 1 none;
    # rows: globals 0-5, crops 6-9, separator 10
    index = deepseek_ocr2.feature_index([2, 0], 3, 2)
    assert index.tolist() == [6, 7, 8, 9, 0, 1, 2, 10, 3, 4, 5, 10]


def test_a_wrong_index_is_refused(ocr):
    feeds = deepseek_ocr2.images(ocr.model, [(1000, 700), (500, 400)], torch.Generator())
    assert deepseek_ocr2.crop_counts(ocr.model, feeds) == [6, 0]
    flipped = {**feeds, "feature_index": feeds["feature_index"].flip(0)}
    with pytest.raises(ValueError, match="not the processor's order"):
        deepseek_ocr2.crop_counts(ocr.model, flipped)
    fewer = {**feeds, "pixel_values_local": feeds["pixel_values_local"][:2]}
    with pytest.raises(ValueError, match="not the processor's order"):
        deepseek_ocr2.crop_counts(ocr.model, fewer)


def test_the_exported_encoder_matches_get_image_features_on_unseen_images(ocr):
    m = ocr
    encoder = m.components[0]
    with export_patches(encoder.module), torch.no_grad():
        program = torch.export.export(
            encoder.module,
            (),
            copy.deepcopy(encoder.input_sets[0]),
            dynamic_shapes=encoder.dynamic_shapes,
        )
    seen = {tuple(s) for sizes in deepseek_ocr2.IMAGES for s in sizes}
    unseen = [
        [(1300, 900), (200, 700), (768, 500)],  # 6, none and none (not over 768)
        [(640, 640), (300, 300)],  # no crops in the whole call
        [(2500, 600), (1100, 1100), (100, 100), (900, 2800)],
    ]
    assert not seen & {s for sizes in unseen for s in sizes}
    generator = torch.Generator().manual_seed(17)
    for sizes in unseen:
        feeds = deepseek_ocr2.images(m.model, sizes, generator)
        given = deepseek_ocr2.processor_image(m.model, feeds)
        counts = [deepseek_ocr2.crop_count(w, h) for w, h in sizes]
        assert given["num_local_patches"].tolist() == counts
        assert ("pixel_values_local" in given) == (sum(counts) > 0)
        with torch.no_grad():
            got = program.module()(**copy.deepcopy(feeds))
            # the processor's list of counts, as get_image_features' loop reads it
            own = m.model.get_image_features(**{**given, "num_local_patches": counts})
        expected = torch.cat(list(own.pooler_output))
        global_rows, crop_rows = deepseek_ocr2.rows(m.model)
        assert got.shape[0] == len(sizes) * (global_rows + 1) + sum(counts) * crop_rows
        assert got.shape == expected.shape
        assert float((got - expected).abs().max()) < 1e-5


def test_the_merged_features_generate_what_generate_gives_from_the_processors_inputs(ocr):
    m = ocr
    generator = torch.Generator().manual_seed(23)
    # one image with crops, one without: 2 x 144 + 256 + 1 and 256 + 1 rows
    feeds = deepseek_ocr2.images(m.model, [(1000, 500), (600, 500)], generator)
    given = deepseek_ocr2.processor_image(m.model, feeds)
    assert given["num_local_patches"].tolist() == [2, 0]
    token = m.config.image_token_id
    text = torch.randint(3, 900, (2, 560), generator=generator)
    assert not (text == token).any()
    ids = text.clone()
    ids[0, 4:549] = token  # the first image's 545 rows
    ids[1, 100:357] = token  # the second's 257
    mask = torch.ones_like(ids)
    with torch.no_grad():
        features = deepseek_ocr2.encoder(m.model)(**feeds)
        embeds = m.model.get_input_embeddings()(ids)
        merged = embeds.masked_scatter((ids == token)[..., None], features)
        settings = {"max_new_tokens": 6, "do_sample": False}
        own = m.model.generate(input_ids=ids, attention_mask=mask, **given, **settings)
        mine = m.model.generate(inputs_embeds=merged, attention_mask=mask, **settings)
        logits = m.model(input_ids=ids, attention_mask=mask, **given).logits
        merged_logits = m.model(inputs_embeds=merged, attention_mask=mask).logits
    assert float((logits - merged_logits).abs().max()) < 1e-5
    assert torch.equal(own[:, ids.shape[1] :], mine[:, -6:])
