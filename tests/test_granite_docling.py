"""Granite Docling (image-text-to-text, families/granite_docling.py): pages as the image
processor tiles and pads them, the real tiles gathered by a precomputed index instead of
the boolean pixel_attention_mask, the tower's DeepStack features added after the
language model's first layers; checked against the model's own get_image_features,
forward and generate on pages the input sets do not have."""

from __future__ import annotations

import copy

import pytest
import torch

from exportcheck import untrained_model
from exportcheck.compare import compare_generation
from exportcheck.families import INPUT_LAYOUTS, granite_docling
from exportcheck.tasks import _audio_lm, get_task
from exportcheck.tasks.text_generation import greedy_generate

pytestmark = pytest.mark.models

TASK = "image-text-to-text"


@pytest.fixture(scope="module")
def model():
    assert INPUT_LAYOUTS["granite_docling"][0] is granite_docling.LAYOUT  # registered
    return untrained_model("granite_docling", task=TASK)


def _pages(m, prompts, seed):
    """The image processor's outputs for random pages of ``prompts`` (tile sides)."""
    generator = torch.Generator().manual_seed(seed)
    return granite_docling.pages(m.model, prompts, generator)


def _reference(m, given):
    """get_image_features' image features and DeepStack features, concatenated."""
    with torch.no_grad():
        out = m.model.model.get_image_features(**given)
    deep = torch.stack([torch.cat(list(f)) for f in out.deepstack_features])
    return torch.cat(list(out.pooler_output)), deep


def _call(m):
    def call(name, inputs):
        module = next(c.module for c in m.components if c.name == name)
        return module(**inputs)

    return call


#: page layouts (tile sides) no input set has: padding tiles in every call but one
UNSEEN = (
    [[(3, 2)], [(1, 1)]],
    [[(1, 3)], [(2, 2), (1, 1)], [(1, 1)]],
    [[(2.5, 2.5)]],
)


def test_the_exported_encoder_matches_get_image_features_on_unseen_pages(model):
    m = model
    encoder = m.components[0]
    assert encoder.name == "vision_encoder"
    assert set(encoder.input_sets[0]) == {"pixel_values", "tile_index"}
    graph = torch.export.export(
        encoder.module,
        (),
        kwargs=copy.deepcopy(encoder.input_sets[0]),
        dynamic_shapes=encoder.dynamic_shapes,
        strict=False,
    ).module()
    seen = {tuple(f["pixel_values"].shape) for f in encoder.input_sets}
    padded = 0
    for i, prompts in enumerate(UNSEEN):
        given = _pages(m, prompts, seed=i)
        assert tuple(given["pixel_values"].shape) not in seen
        padded += int((~given["pixel_attention_mask"]).sum())
        want, deep = _reference(m, given)
        with torch.no_grad():
            got = graph(**granite_docling.graph_inputs(given))
        assert torch.equal(got["features"], want)
        # the tiny tower taps as many layers as the tiny language model has
        assert deep.shape[0] == granite_docling.deepstack_layers(m.model) == 2
        assert torch.equal(got["deepstack"], deep)
    assert padded > 0  # padding tiles were skipped, as get_image_features skips them


def test_the_tiles_and_tokens_follow_the_processors_arithmetic(model):
    m = model
    processor = granite_docling.image_processor(m.model)
    side = m.config.vision_config.image_size
    given = _pages(m, [[(3, 2)], [(1, 1)], [(1, 3)]], seed=5)
    # each page's tiles: its grid, and a thumbnail when there is more than one tile
    counts = [
        processor.get_number_of_image_patches(h * side, w * side)
        for h, w in [(3, 2), (1, 1), (1, 3)]
    ]
    assert given["pixel_attention_mask"].sum(-1).tolist() == counts
    assert counts[1] == 1 and counts[0] == 2 * 3 + 1
    # rows per tile: the processor's image_seq_len arithmetic, the model's own count
    vision = m.config.vision_config
    tokens = ((vision.image_size // vision.patch_size) ** 2) // vision.scale_factor**2
    assert tokens == m.model.model.image_seq_len == 4
    feeds = granite_docling.graph_inputs(given)
    with torch.no_grad():
        out = m.components[0].module(**feeds)
    assert out["features"].shape[0] == sum(counts) * tokens
    # the processor's inputs are read back from the graph's
    again = granite_docling.processor_image(m.model, feeds)
    assert torch.equal(again["pixel_attention_mask"], given["pixel_attention_mask"])
    assert torch.equal(again["pixel_values"], given["pixel_values"])


def test_a_mismatch_with_get_image_features_is_refused(model):
    m = model
    given = _pages(m, [[(1, 2)], [(1, 1)]], seed=7)
    feeds = granite_docling.graph_inputs(given)
    feeds["tile_index"] = feeds["tile_index"].flip(0)  # the tiles in another order
    with pytest.raises(ValueError, match="differ from get_image_features"):
        granite_docling.check(m.model, feeds, given)


def _prompt(m, counts, seed, left_pad=True):
    """Two rows: text, the image tokens of ``counts`` tiles, text; the shorter row
    left-padded (``left_pad``) or given more text."""
    token = m.config.image_token_id
    text = m.config.get_text_config()
    generator = torch.Generator().manual_seed(seed)
    tokens = [c * m.model.model.image_seq_len for c in counts]
    longest = max(tokens)
    rows, masks = [], []
    for n in tokens:
        words = _audio_lm._text_ids(text, (1, 5), generator, token)
        extra = longest - n
        if left_pad:
            pad = torch.full((1, extra), text.pad_token_id)
            row = torch.cat([pad, words[:, :3], torch.full((1, n), token), words[:, 3:]], 1)
            mask = torch.cat([torch.zeros((1, extra)), torch.ones((1, 5 + n))], 1)
        else:
            more = _audio_lm._text_ids(text, (1, extra), generator, token)
            row = torch.cat([words[:, :3], torch.full((1, n), token), more, words[:, 3:]], 1)
            mask = torch.ones_like(row)
        rows.append(row)
        masks.append(mask.to(torch.int64))
    return torch.cat(rows), torch.cat(masks)


def test_the_merge_and_deepstack_decoder_step_give_the_forwards_logits(model):
    m = model
    encoder, embed, decoder = (c.module for c in m.components)
    given = _pages(m, [[(3, 2)], [(1, 2)]], seed=9)  # 7 and 3 tiles: padding tiles
    counts = given["pixel_attention_mask"].sum(-1).tolist()
    ids, mask = _prompt(m, counts, seed=11, left_pad=False)
    token = m.config.image_token_id
    with torch.no_grad():
        want = m.model(input_ids=ids, attention_mask=mask, **given).logits
        out = encoder(**granite_docling.graph_inputs(given))
        merged = _audio_lm.merge(embed(ids), ids, token, out["features"], "feature rows")
        zeros = torch.zeros_like(merged)
        added = torch.stack(
            [_audio_lm.merge(zeros, ids, token, d, "feature rows") for d in out["deepstack"]]
        )
        # the first position eagerly (the step takes a cache; it is text), the rest in
        # one step with the DeepStack features at the image tokens
        first = m.model(input_ids=ids[:, :1], attention_mask=mask[:, :1], use_cache=True)
        got = decoder(
            inputs_embeds=merged[:, 1:],
            attention_mask=mask,
            deepstack_embeds=added[:, :, 1:],
            cache=_audio_lm._cache_of(first),
        )["logits"]
        first = m.model(input_ids=ids[:, :1], attention_mask=mask[:, :1], use_cache=True)
        without = decoder(
            inputs_embeds=merged[:, 1:],
            attention_mask=mask,
            deepstack_embeds=torch.zeros_like(added[:, :, 1:]),
            cache=_audio_lm._cache_of(first),
        )["logits"]
    assert float((got - want[:, 1:]).abs().max()) < 1e-4
    # the DeepStack features matter: without them the logits move
    assert float((without - want[:, 1:]).abs().max()) > 1e-3


def test_the_driver_generates_what_generate_does_on_unseen_pages(model):
    m = model
    # one page a row, of other sizes: padding tiles, and the second row's fewer image
    # tokens left-padded
    given = _pages(m, [[(2, 3)], [(1, 1)]], seed=13)
    counts = given["pixel_attention_mask"].sum(-1).tolist()
    assert counts == [7, 1]
    ids, mask = _prompt(m, counts, seed=17)
    feeds = {"input_ids": ids, "attention_mask": mask}
    expected = greedy_generate(m.model, {**feeds, **given}, _audio_lm.NEW_TOKENS)
    image = granite_docling.graph_inputs(given)
    with torch.no_grad():
        got = _audio_lm.merged_generate(
            m,
            _call(m),
            expected.tokens,
            "vision_encoder",
            image,
            feeds,
            m.config.image_token_id,
            "feature rows",
        )
    result = compare_generation(expected, got, 1e-4)
    assert result["ok"] and result["tokens_equal"], result


def test_generate_gets_the_padded_tiles_and_mask_the_processor_gives(model):
    m = model
    feeds = get_task(TASK).processor_inputs(m)
    assert set(feeds) == {"input_ids", "attention_mask", "pixel_values", "pixel_attention_mask"}
    h, w = granite_docling.GENERATION_PAGE
    tiles = h * w + (h * w > 1)
    assert feeds["pixel_attention_mask"].tolist() == [[True] * tiles] * 2
    tokens = (feeds["input_ids"] == m.config.image_token_id).sum(1)
    assert tokens.tolist() == [tiles * m.model.model.image_seq_len] * 2
    with torch.no_grad():
        out = m.model.generate(**feeds, max_new_tokens=2, do_sample=False)
    assert out.shape[1] == feeds["input_ids"].shape[1] + 2


def test_every_input_set_has_a_shape_of_its_own(model):
    from exportcheck.describe import string_type

    for component in model.components:
        shapes = {string_type(f, with_shape=True) for f in component.input_sets}
        assert len(shapes) == len(component.input_sets), component.name
