"""Apertus 1.5 (image-text-to-text, families/apertus1p5.py): images as VQ codes of the
model's own tokenizer, a call's images of one size encoded as a batch instead of the
crops get_image_features takes to encode each image alone; checked against the model's
own get_image_features, processor arithmetic and forward on images the input sets do not
have."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
import torch

from exportcheck import untrained_model
from exportcheck.families import INPUT_LAYOUTS, apertus1p5

pytestmark = pytest.mark.models

TASK = "image-text-to-text"


@pytest.fixture(scope="module")
def model():
    assert INPUT_LAYOUTS["apertus1p5"][0] is apertus1p5.LAYOUT  # registered by its family
    return untrained_model("apertus1p5", task=TASK)


def _features(m, pixel_values, sizes):
    with torch.no_grad():
        out = m.model.model.get_image_features(pixel_values, sizes)
    return torch.cat(list(out.pooler_output))


def _padded(sizes, seed):
    """Random images of ``sizes`` (pixels) as the processor gives them: padded with zeros
    at the bottom and right to the call's largest, and their ``image_sizes``."""
    generator = torch.Generator().manual_seed(seed)
    height, width = max(h for h, _ in sizes), max(w for _, w in sizes)
    pixels = torch.zeros((len(sizes), 3, height, width))
    for i, (h, w) in enumerate(sizes):
        pixels[i, :, :h, :w] = torch.randn((3, h, w), generator=generator)
    return pixels, torch.tensor(sizes, dtype=torch.int64)


def test_the_tiny_config_holds_the_code_ranges_in_its_vocabulary(model):
    config = model.model.config
    config.validate_architecture()
    vocabulary = config.text_config.vocab_size
    codes = config.vision_config.codebook_size
    assert config.image_token_offset + codes == config.audio_token_offset
    assert config.audio_token_offset + config.audio_config.codebook_size <= vocabulary
    assert config.image_token_id < vocabulary and config.audio_token_id < vocabulary
    # the placeholders are not codes
    image_codes = range(config.image_token_offset, config.audio_token_offset)
    assert config.image_token_id not in image_codes


def test_the_exported_encoder_matches_get_image_features_on_unseen_images(model):
    m = model
    encoder = m.components[0]
    assert encoder.name == "vision_encoder"
    assert set(encoder.input_sets[0]) == {"pixel_values"}
    graph = torch.export.export(
        encoder.module,
        (),
        kwargs=copy.deepcopy(encoder.input_sets[0]),
        dynamic_shapes=encoder.dynamic_shapes,
        strict=False,
    ).module()
    seen = set(apertus1p5.SIZES)
    for count, rows, columns in ((3, 4, 3), (1, 6, 2), (2, 3, 5)):
        assert (count, rows, columns) not in seen
        pixels, sizes = _padded([(rows * 16, columns * 16)] * count, seed=rows)
        want = _features(m, pixels, sizes)
        assert want.shape[0] == count * rows * columns
        with torch.no_grad():
            got = graph(pixel_values=pixels)
        assert got.shape == want.shape
        assert torch.equal(got, want)


def test_images_of_different_sizes_are_one_call_per_size(model):
    """get_image_features on a padded call of mixed sizes equals the encoder called on
    each size's images alone, in order; the padded batch itself would not."""
    m = model
    module = m.components[0].module
    sizes = [(48, 32), (32, 64), (48, 32)]
    pixels, given = _padded(sizes, seed=7)
    want = _features(m, pixels, given)
    with torch.no_grad():
        got = torch.cat(
            [module(pixel_values=pixels[i : i + 1, :, :h, :w]) for i, (h, w) in enumerate(sizes)]
        )
        grouped = module(pixel_values=pixels[[0, 2], :, :48, :32])
        padded = module(pixel_values=pixels)
    assert torch.equal(got, want)
    per_image = 3 * 2
    assert torch.equal(grouped, torch.cat([want[:per_image], want[-per_image:]]))
    assert padded.shape[0] != want.shape[0]  # padding adds codes get_image_features crops


def test_the_features_have_the_processors_image_tokens(model):
    from transformers.models.apertus1p5.processing_apertus1p5 import Apertus1p5Processor

    m = model
    assert m.model.model.vision_tokenizer.config.spatial_scale_factor == 16
    processor = SimpleNamespace(
        image_processor=SimpleNamespace(spatial_factor=16),
        image_token="<I>",
        eol_token="<E>",
        boi_token="<B>",
        eoi_token="<O>",
        image_wrapper_token="<W>",
    )
    image = apertus1p5.images(m.model, 2, 5, 3, torch.Generator().manual_seed(3))
    given = apertus1p5.processor_image(m.model, image)
    assert given["image_sizes"].tolist() == [[80, 48], [80, 48]]
    text = Apertus1p5Processor.replace_image_token(processor, given, 1)
    assert text.count("<I>") == 5 * 3 and text.count("<E>") == 5 - 1
    with torch.no_grad():
        features = m.components[0].module(**image)
    assert features.shape[0] == 2 * text.count("<I>")


def test_the_merge_gives_the_forwards_logits(model):
    m = model
    config = m.model.config
    image = apertus1p5.images(m.model, 2, 3, 2, torch.Generator().manual_seed(11))
    given = apertus1p5.processor_image(m.model, image)
    generator = torch.Generator().manual_seed(12)
    ids = torch.randint(4, 300, (1, 20), generator=generator)
    ids[0, 3:9] = config.image_token_id
    ids[0, 12:18] = config.image_token_id
    with torch.no_grad():
        want = m.model(input_ids=ids, **given).logits
        embeds = m.model.get_input_embeddings()(ids)
        features = m.components[0].module(**image)
        embeds[ids == config.image_token_id] = features
        got = m.model(inputs_embeds=embeds).logits
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)


def test_the_exported_encoder_refuses_a_side_of_one_code(model):
    """The declared lower bound, two codes a side, is the exported graph's own guard."""
    m = model
    encoder = m.components[0]
    graph = torch.export.export(
        encoder.module,
        (),
        kwargs=copy.deepcopy(encoder.input_sets[0]),
        dynamic_shapes=encoder.dynamic_shapes,
        strict=False,
    ).module()
    assert apertus1p5.SIDE_MIN == 2
    with pytest.raises(AssertionError, match="Guard failed"):
        graph(pixel_values=torch.randn(1, 3, 16, 32))
