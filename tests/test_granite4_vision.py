"""Granite 4 Vision (image-text-to-text, families/granite4_vision.py): LLaVA-NeXT tiles
whose features are added before several text layers (the deepstack map and the four
spatial groups) at the image tokens, whose input embeddings are zeroed; the packing
order precomputed, each layer's rows returned as DeepStack features and added to the
output of the layer before; checked against the model's own get_image_features, forward
and generate on images the input sets do not have."""

from __future__ import annotations

import copy

import pytest
import torch

from exportcheck import untrained_model
from exportcheck.compare import compare_generation
from exportcheck.families import INPUT_LAYOUTS, granite4_vision
from exportcheck.tasks import _audio_lm, get_task
from exportcheck.tasks.text_generation import greedy_generate

pytestmark = pytest.mark.models

TASK = "image-text-to-text"
#: images (tile sides) no input set has, in tile counts no input set has (4, 8, 12)
UNSEEN = ([(1.1, 2.4)], [(1.6, 1.6), (1.0, 2.0)], [(2.7, 0.95), (1.6, 1.6), (0.4, 1.3)])


@pytest.fixture(scope="module")
def model():
    assert INPUT_LAYOUTS["granite4_vision"][0] is granite4_vision.LAYOUT  # registered
    return untrained_model("granite4_vision", task=TASK)


def _images(m, images, seed):
    generator = torch.Generator().manual_seed(seed)
    return granite4_vision.tile_set(m.model, images, generator)


def _reference(m, feeds, sizes):
    """get_image_features' rows of each text layer, concatenated over the images."""
    given = granite4_vision.processor_inputs(m.model, feeds, sizes)
    with torch.no_grad():
        out = m.model.model.get_image_features(**given)
    return {layer: torch.cat(list(rows)) for layer, rows in out.deepstack_features}


def _call(m):
    def call(name, inputs):
        module = next(c.module for c in m.components if c.name == name)
        return module(**inputs)

    return call


def test_the_exported_encoder_matches_get_image_features_on_unseen_images(model):
    m = model
    encoder = m.components[0]
    assert set(encoder.input_sets[0]) == {"pixel_values", "feature_index"}
    graph = torch.export.export(
        encoder.module,
        (),
        kwargs=copy.deepcopy(encoder.input_sets[0]),
        dynamic_shapes=encoder.dynamic_shapes,
        strict=False,
    ).module()
    seen = {tuple(f["pixel_values"].shape) for f in encoder.input_sets}
    # the map's two layers and the four spatial groups, before text layers 1 to 6
    assert granite4_vision.target_layers(m.model) == {
        1: "layerwise 0",
        2: "layerwise 1",
        3: "spatial 0",
        4: "spatial 1",
        5: "spatial 2",
        6: "spatial 3",
    }
    for i, images in enumerate(UNSEEN):
        feeds, sizes = _images(m, images, seed=i)
        assert tuple(feeds["pixel_values"].shape) not in seen
        want = _reference(m, feeds, sizes)
        with torch.no_grad():
            got = graph(**copy.deepcopy(feeds))
        assert got["deepstack"].shape[0] == 6
        for layer, rows in want.items():
            assert torch.equal(got["deepstack"][layer - 1], rows), layer
        # the input embeddings are zeroed at the image tokens
        assert not got["features"].any()
        assert got["features"].shape == want[1].shape


def test_the_tiles_and_tokens_follow_the_processors_arithmetic(model):
    from transformers.models.granite4_vision.processing_granite4_vision import (
        Granite4VisionProcessor,
    )

    m = model
    config = m.config
    # the processor's own count of image tokens, with the tiny config's settings (its
    # tokenizer and image processor are not built: only their settings are read)
    processor = Granite4VisionProcessor.__new__(Granite4VisionProcessor)
    processor.image_processor = type(
        "Settings", (), {"image_grid_pinpoints": config.image_grid_pinpoints}
    )()
    processor.patch_size = config.vision_config.patch_size
    processor.downsample_rate = config.downsample_rate
    processor.vision_feature_select_strategy = config.vision_feature_select_strategy
    processor.num_additional_image_tokens = 1  # the tower's class token, dropped
    processor.image_token = "<image>"
    images = [(1.1, 2.4), (0.6, 0.9), (2.7, 0.95), (1.0, 3.0)]
    feeds, sizes = _images(m, images, seed=3)
    given = granite4_vision.processor_inputs(m.model, feeds, sizes)
    want = [
        len(processor.replace_image_token(given, i)) // len("<image>") for i in range(len(images))
    ]
    with torch.no_grad():
        out = m.model.model.get_image_features(**given)
    rows = [r.shape[0] for r in out.deepstack_features[0][1]]
    assert rows == want
    assert feeds["feature_index"].shape[0] == sum(want)
    # the tower has a class token, which the default strategy drops
    side = config.vision_config.image_size // config.vision_config.patch_size
    with torch.no_grad():
        states = m.model.model.vision_tower(feeds["pixel_values"][:1]).last_hidden_state
    assert states.shape[1] == side * side + 1


def test_a_mismatch_with_get_image_features_is_refused(model):
    m = model
    feeds, sizes = _images(m, [(1.1, 2.4)], seed=7)
    feeds["feature_index"] = feeds["feature_index"].flip(0)
    with pytest.raises(ValueError, match="differ from get_image_features"):
        granite4_vision.check(m.model, feeds, sizes)


def test_the_language_model_makes_no_cache_itself_so_text_lm_gives_one(model):
    m = model
    ids = torch.tensor([[5, 6, 7]])
    with torch.no_grad():
        bare = m.model(input_ids=ids, use_cache=True)
        wrapped = granite4_vision.text_lm(m.model)(input_ids=ids, use_cache=True)
    assert _audio_lm._cache_of(bare) is None
    assert _audio_lm._cache_of(wrapped).get_seq_length() == 3
    assert torch.equal(bare.logits, wrapped.logits)


def _prompt(m, counts, seed):
    """Two rows: text, ``counts`` image tokens, text; the shorter row left-padded."""
    token = m.config.image_token_id
    text = m.config.get_text_config()
    generator = torch.Generator().manual_seed(seed)
    longest = max(counts)
    rows, masks = [], []
    for n in counts:
        words = _audio_lm._text_ids(text, (1, 5), generator, token)
        extra = longest - n
        pad = torch.full((1, extra), text.pad_token_id or 0)
        rows.append(torch.cat([pad, words[:, :3], torch.full((1, n), token), words[:, 3:]], 1))
        masks.append(torch.cat([torch.zeros((1, extra)), torch.ones((1, 5 + n))], 1).long())
    return torch.cat(rows), torch.cat(masks)


def _counts(m, feeds, sizes):
    return [
        r.shape[0]
        for r in m.model.model.get_image_features(
            **granite4_vision.processor_inputs(m.model, feeds, sizes)
        ).deepstack_features[0][1]
    ]


def test_the_merge_and_deepstack_decoder_step_give_the_forwards_logits(model):
    m = model
    encoder, embed, decoder = (c.module for c in m.components)
    feeds, sizes = _images(m, [(1.1, 2.4), (0.6, 0.9)], seed=9)
    token = m.config.image_token_id
    with torch.no_grad():
        ids, mask = _prompt(m, _counts(m, feeds, sizes), seed=11)
        given = granite4_vision.processor_inputs(m.model, feeds, sizes)
        want = m.model(input_ids=ids, attention_mask=mask, **given).logits
        out = encoder(**feeds)
        merged = _audio_lm.merge(embed(ids), ids, token, out["features"], "feature rows")
        zeros = torch.zeros_like(merged)
        added = torch.stack(
            [_audio_lm.merge(zeros, ids, token, d, "feature rows") for d in out["deepstack"]]
        )
        first = granite4_vision.text_lm(m.model)(
            input_ids=ids[:, :1], attention_mask=mask[:, :1], use_cache=True
        )
        got = decoder(
            inputs_embeds=merged[:, 1:],
            attention_mask=mask,
            deepstack_embeds=added[:, :, 1:],
            cache=_audio_lm._cache_of(first),
        )["logits"]
        first = granite4_vision.text_lm(m.model)(
            input_ids=ids[:, :1], attention_mask=mask[:, :1], use_cache=True
        )
        without = decoder(
            inputs_embeds=merged[:, 1:],
            attention_mask=mask,
            deepstack_embeds=torch.zeros_like(added[:, :, 1:]),
            cache=_audio_lm._cache_of(first),
        )["logits"]
    assert float((got - want[:, 1:]).abs().max()) < 1e-4
    # the image features matter: without them the logits move
    assert float((without - want[:, 1:]).abs().max()) > 1e-3


def test_the_driver_generates_what_generate_does_on_unseen_images(model):
    m = model
    feeds, sizes = _images(m, [(2.7, 0.95), (0.6, 0.9)], seed=13)
    with torch.no_grad():
        counts = _counts(m, feeds, sizes)
    ids, mask = _prompt(m, counts, seed=17)
    # one image a row
    per_row = granite4_vision.processor_inputs(m.model, feeds, sizes)
    text = {"input_ids": ids, "attention_mask": mask}
    expected = greedy_generate(m.model, {**text, **per_row}, _audio_lm.NEW_TOKENS)
    with torch.no_grad():
        got = _audio_lm.merged_generate(
            m,
            _call(m),
            expected.tokens,
            "vision_encoder",
            feeds,
            text,
            m.config.image_token_id,
            "feature rows",
        )
    result = compare_generation(expected, got, 1e-4)
    assert result["ok"] and result["tokens_equal"], result


def test_generate_gets_the_padded_tiles_and_sizes_the_processor_gives(model):
    m = model
    feeds = get_task(TASK).processor_inputs(m)
    assert set(feeds) == {"input_ids", "attention_mask", "pixel_values", "image_sizes"}
    side = m.config.vision_config.image_size
    size = [round(v * side) for v in granite4_vision.GENERATION_IMAGE]
    assert feeds["image_sizes"].tolist() == [size] * 2
    with torch.no_grad():
        out = m.model.generate(**feeds, max_new_tokens=2, do_sample=False)
    assert out.shape[1] == feeds["input_ids"].shape[1] + 2


def test_every_input_set_has_a_shape_of_its_own(model):
    from exportcheck.describe import string_type

    for component in model.components:
        shapes = {string_type(f, with_shape=True) for f in component.input_sets}
        assert len(shapes) == len(component.input_sets), component.name
