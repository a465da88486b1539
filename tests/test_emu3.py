"""Emu3 (image-text-to-text, families/emu3.py): images as VQ codes, each image's codes and
its row-end tokens taken by a precomputed index instead of the crops and splits
get_image_features computes from image_sizes in Python; checked against the model's own
get_image_features, forward and generate on images the input sets do not have."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from exportcheck import untrained_model
from exportcheck.compare import compare_generation
from exportcheck.families import INPUT_LAYOUTS, emu3
from exportcheck.tasks import _audio_lm, get_task
from exportcheck.tasks.text_generation import greedy_generate

pytestmark = pytest.mark.models

TASK = "image-text-to-text"


@pytest.fixture(scope="module")
def model():
    assert INPUT_LAYOUTS["emu3"][0] is emu3.LAYOUT  # registered by its family
    return untrained_model("emu3", task=TASK)


def _processor():
    """Emu3's own image processor, resizing off: the images below already have the sides
    its smart_resize gives (multiples of 8), which resizing would need PIL for."""
    from transformers.models.emu3.image_processing_emu3 import Emu3ImageProcessor

    side = emu3.SIDE_MAX * 8
    return Emu3ImageProcessor(do_resize=False, min_pixels=64, max_pixels=side * side)


def _images(sizes, seed):
    """The processor's inputs and outputs for random RGB images of ``sizes`` (pixels)."""
    from transformers.models.emu3.image_processing_emu3 import smart_resize

    processor = _processor()
    rng = np.random.default_rng(seed)
    images = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in sizes]
    for h, w in sizes:  # sides the processor's resizing keeps, within the tiny bounds
        bounds = processor.min_pixels, processor.max_pixels
        assert smart_resize(h, w, processor.spatial_factor, *bounds) == (h, w)
    return dict(processor(images=images, return_tensors="pt"))


def _index(m, given):
    height, width = given["pixel_values"].shape[2:]
    factor = m.model.model.vqmodel.vision_spatial_factor
    return emu3.feature_index(given["image_sizes"], height, width, factor)


def _features(m, given):
    with torch.no_grad():
        out = m.model.model.get_image_features(given["pixel_values"], given["image_sizes"])
    return torch.cat(list(out.pooler_output))


def test_the_exported_encoder_matches_get_image_features_on_the_processors_unseen_images(model):
    m = model
    encoder = m.components[0]
    assert encoder.name == "vision_encoder"
    assert set(encoder.input_sets[0]) == {"pixel_values", "feature_index"}
    graph = torch.export.export(
        encoder.module,
        (),
        kwargs=copy.deepcopy(encoder.input_sets[0]),
        dynamic_shapes=encoder.dynamic_shapes,
        strict=False,
    ).module()
    seen = {tuple(s) for sizes in emu3.SIZES for s in sizes}
    # sizes (in pixels) none of the sets has, each call padded to its largest image
    for sizes in ([(40, 16), (8, 56), (40, 40)], [(56, 24)], [(16, 48), (48, 8)]):
        assert not seen & {(h // 8, w // 8) for h, w in sizes}
        given = _images(sizes, seed=len(sizes))
        assert given["image_sizes"].tolist() == [list(s) for s in sizes]
        want = _features(m, given)
        with torch.no_grad():
            got = graph(pixel_values=given["pixel_values"], feature_index=_index(m, given))
        assert got.shape == want.shape
        assert torch.equal(got, want)


def test_the_index_has_the_processors_image_tokens(model):
    from transformers.models.emu3.processing_emu3 import Emu3Processor

    m = model
    # the processor counts tokens with its own downsample ratio, 8: the VQ encoder's
    assert m.model.model.vqmodel.vision_spatial_factor == 8
    sizes = [(24, 40), (8, 16), (40, 8)]
    given = _images(sizes, seed=3)
    index = _index(m, given)
    processor = SimpleNamespace(image_processor=_processor(), downsample_ratio=8)
    counts = Emu3Processor._get_num_multimodal_tokens(processor, image_sizes=sizes)
    assert counts.num_image_tokens == [3 * 6, 1 * 3, 5 * 2]
    assert index.shape[0] == sum(counts.num_image_tokens)
    # the row-end token after each row: numbered after the padded codes (3 of 5 x 5)
    ends = (index == 3 * 5 * 5).nonzero().flatten().tolist()
    assert ends[:3] == [5, 11, 17]
    assert len(ends) == 3 + 1 + 5


def test_image_sizes_reads_the_sizes_back_from_the_index(model):
    m = model
    given = _images([(24, 40), (8, 16), (40, 8)], seed=5)
    image = {"pixel_values": given["pixel_values"], "feature_index": _index(m, given)}
    assert torch.equal(emu3.image_sizes(m.model, image), given["image_sizes"])
    shuffled = {**image, "feature_index": image["feature_index"].flip(0)}
    with pytest.raises(ValueError, match="not the processor's order"):
        emu3.image_sizes(m.model, shuffled)


def test_the_merge_and_decoder_step_give_the_forwards_logits(model):
    m = model
    encoder, embed, decoder = (c.module for c in m.components)
    given = _images([(16, 24), (24, 8)], seed=9)
    text = m.config.get_text_config()
    token = m.config.image_token_id
    generator = torch.Generator().manual_seed(11)
    words = _audio_lm._text_ids(text, (1, 5), generator, token)
    # as the processor writes them: rows x (columns + 1) placeholders per image
    ids = torch.cat(
        [
            words[:, :2],
            torch.full((1, 2 * 4), token),
            words[:, 2:4],
            torch.full((1, 3 * 2), token),
            words[:, 4:],
        ],
        1,
    )
    with torch.no_grad():
        want = m.model(input_ids=ids, **given).logits
        features = encoder(pixel_values=given["pixel_values"], feature_index=_index(m, given))
        merged = _audio_lm.merge(embed(ids), ids, token, features, "feature rows")
        # the first position eagerly (the step takes a cache), the rest in one step
        first = m.model(input_ids=ids[:, :1], use_cache=True)
        got = decoder(
            inputs_embeds=merged[:, 1:],
            attention_mask=torch.ones_like(ids),
            cache=first.past_key_values,
        )["logits"]
    assert float((got - want[:, 1:]).abs().max()) < 1e-4


def test_the_driver_generates_what_generate_does_on_unseen_images(model):
    m = model
    # one image a row, of other sizes: the second row's fewer tokens left-padded
    given = _images([(24, 32), (16, 8)], seed=13)
    token = m.config.image_token_id
    text = m.config.get_text_config()
    generator = torch.Generator().manual_seed(17)
    words = _audio_lm._text_ids(text, (2, 5), generator, token)
    first, second = 3 * 5, 2 * 2
    pad = text.pad_token_id if text.pad_token_id is not None else 0
    ids = torch.cat(
        [
            torch.cat([words[:1, :3], torch.full((1, first), token), words[:1, 3:]], 1),
            torch.cat(
                [
                    torch.full((1, first - second), pad),
                    words[1:, :3],
                    torch.full((1, second), token),
                    words[1:, 3:],
                ],
                1,
            ),
        ]
    )
    mask = torch.ones_like(ids)
    mask[1, : first - second] = 0
    feeds = {"input_ids": ids, "attention_mask": mask}
    expected = greedy_generate(m.model, {**feeds, **given}, _audio_lm.NEW_TOKENS)
    image = {"pixel_values": given["pixel_values"], "feature_index": _index(m, given)}

    def call(name, inputs):
        module = next(c.module for c in m.components if c.name == name)
        return module(**inputs)

    with torch.no_grad():
        got = _audio_lm.merged_generate(
            m, call, expected.tokens, "vision_encoder", image, feeds, token, "feature rows"
        )
    result = compare_generation(expected, got, 1e-4)
    assert result["ok"] and result["tokens_equal"], result


def test_generate_gets_the_image_sizes_the_processor_gives(model):
    m = model
    feeds = get_task(TASK).processor_inputs(m)
    assert set(feeds) == {"input_ids", "attention_mask", "pixel_values", "image_sizes"}
    rows, columns = emu3.GENERATION_SIZE
    assert feeds["image_sizes"].tolist() == [[rows * 8, columns * 8]] * 2
    # each row's image: rows x (columns + 1) placeholders
    tokens = (feeds["input_ids"] == m.config.image_token_id).sum(1)
    assert tokens.tolist() == [rows * (columns + 1)] * 2
    with torch.no_grad():
        out = m.model.generate(**feeds, max_new_tokens=2, do_sample=False)
    assert out.shape[1] == feeds["input_ids"].shape[1] + 2
