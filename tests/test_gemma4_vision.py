"""Gemma 4's image-text-to-text parts (families/gemma4_vision.py) against the model's own
functions: the positioned encoder graph against get_image_features on unseen image
sizes, and the driver's merge with the decoder step against the forward's logits."""

from __future__ import annotations

import copy

import pytest
import torch

from exportcheck import untrained_model
from exportcheck.families import INPUT_LAYOUTS
from exportcheck.families.gemma4_vision import (
    LAYOUT,
    UNIFIED_LAYOUT,
    image_types,
    images,
    step_ids,
)
from exportcheck.tasks import _audio_lm

pytestmark = pytest.mark.models

TASK = "image-text-to-text"


@pytest.fixture(scope="module")
def gemma4():
    assert INPUT_LAYOUTS["gemma4"][0] is LAYOUT  # registered by its family
    return untrained_model("gemma4", task=TASK)


def _exported(component):
    return torch.export.export(
        component.module,
        (),
        kwargs=copy.deepcopy(component.input_sets[0]),
        dynamic_shapes=component.dynamic_shapes,
        strict=False,
    ).module()


def _features(model, feeds):
    with torch.no_grad():
        out = model.model.get_image_features(feeds["pixel_values"], feeds["image_position_ids"])
    return torch.cat(list(out.pooler_output))


def test_the_exported_encoder_matches_get_image_features_on_unseen_sizes(gemma4):
    encoder = gemma4.components[0]
    assert encoder.name == "vision_encoder"
    graph = _exported(encoder)
    generator = torch.Generator().manual_seed(7)
    # image counts and token grids none of the input sets has; the rows cut per image
    for grids in ([(3, 4), (1, 2), (4, 1)], [(2, 2)] * 6, [(1, 1)]):
        feeds = images(gemma4.model, grids, generator)
        want = _features(gemma4.model, feeds)
        assert want.shape[0] == sum(h * w for h, w in grids)
        with torch.no_grad():
            got = graph(**feeds)
        assert got.shape == want.shape
        assert float((got - want).abs().max()) < 1e-5


def test_the_step_ids_set_every_placeholder_to_the_pad_id(gemma4):
    config = gemma4.config
    pad = config.get_text_config().pad_token_id
    ids = torch.tensor([[5, config.image_token_id, config.video_token_id, config.audio_token_id]])
    assert step_ids(gemma4.model, ids).tolist() == [[5, pad, pad, pad]]


def test_the_merge_and_decoder_step_give_the_forwards_logits(gemma4):
    m = gemma4
    encoder, embed, decoder = (c.module for c in m.components)
    generator = torch.Generator().manual_seed(11)
    image = images(m.model, [(2, 3), (1, 2)], generator)
    text = m.config.get_text_config()
    token = m.config.image_token_id
    words = _audio_lm._text_ids(text, (1, 5), generator, token)
    ids = torch.cat(
        [words[:, :2], torch.full((1, 6), token), words[:, 2:4], torch.full((1, 2), token)], 1
    )
    ids = torch.cat([ids, words[:, 4:]], 1)
    with torch.no_grad():
        want = m.model(
            input_ids=ids,
            pixel_values=image["pixel_values"],
            image_position_ids=image["image_position_ids"],
        ).logits
        merged = _audio_lm.merge(embed(ids), ids, token, encoder(**image), "feature rows")
        # the first position eagerly (the step takes a cache), the rest in one step
        first = m.model(input_ids=ids[:, :1], use_cache=True)
        got = decoder(
            inputs_embeds=merged[:, 1:],
            attention_mask=torch.ones_like(ids),
            step_ids=step_ids(m.model, ids)[:, 1:],
            cache=first.past_key_values,
        )["logits"]
    assert float((got - want[:, 1:]).abs().max()) < 1e-4


@pytest.fixture(scope="module")
def unified():
    assert INPUT_LAYOUTS["gemma4_unified"][0] is UNIFIED_LAYOUT
    return untrained_model("gemma4_unified", task=TASK)


def test_unified_encoder_matches_get_image_features_on_unseen_sizes(unified):
    m = unified
    graph = _exported(m.components[0])
    generator = torch.Generator().manual_seed(3)
    for grids in ([(3, 4), (1, 2), (4, 1)], [(2, 2)] * 6):
        feeds = images(m.model, grids, generator)
        want = _features(m.model, feeds)
        with torch.no_grad():
            got = graph(**feeds)
        assert got.shape == want.shape
        assert float((got - want).abs().max()) < 1e-5


def test_unified_step_reads_the_image_blocks_of_every_seen_position(unified):
    """Its image tokens attend both ways in sliding layers: the step given the types of
    every position (cache and new) gives the forward's logits with the processor's
    mm_token_type_ids, and not those of a causal prompt."""
    m = unified
    encoder, embed, decoder = (c.module for c in m.components)
    generator = torch.Generator().manual_seed(5)
    image = images(m.model, [(2, 2)], generator)
    token = m.config.image_token_id
    words = _audio_lm._text_ids(m.config.get_text_config(), (1, 4), generator, token)
    ids = torch.cat([words[:, :2], torch.full((1, 4), token), words[:, 2:]], 1)
    types = image_types(m.model, ids)
    given = {"pixel_values": image["pixel_values"]}
    given["image_position_ids"] = image["image_position_ids"]
    with torch.no_grad():
        want = m.model(input_ids=ids, mm_token_type_ids=types, **given).logits
        causal = m.model(input_ids=ids, **given).logits
        merged = _audio_lm.merge(embed(ids), ids, token, encoder(**image), "feature rows")
        first = m.model(input_ids=ids[:, :1], use_cache=True)
        got = decoder(
            inputs_embeds=merged[:, 1:],
            attention_mask=torch.ones_like(ids),
            step_ids=types,
            cache=first.past_key_values,
        )["logits"]
    assert float((got - want[:, 1:]).abs().max()) < 1e-4
    assert float((causal - want).abs().max()) > 1e-3
