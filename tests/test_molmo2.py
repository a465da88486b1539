"""Molmo2 (families/molmo2.py): crops and pooling indices as the processor builds them,
features added to the placeholders' embeddings, and a prefill in which the image tokens
attend to each other both ways."""

import copy

import pytest
import torch

from exportcheck import export_patches, untrained_model
from exportcheck.families import INPUT_LAYOUTS, molmo2
from exportcheck.tasks import get_task

pytestmark = pytest.mark.models

TASK = "image-text-to-text"


@pytest.fixture(scope="module")
def molmo():
    assert INPUT_LAYOUTS["molmo2"] is molmo2.LAYOUT  # registered
    return untrained_model("molmo2", task=TASK)


def _expected(m, given):
    own = m.model.get_image_features(
        given["pixel_values"], given["image_token_pooling"], given["image_grids"]
    ).pooler_output
    placeholder = m.model.get_input_embeddings().weight[m.config.image_token_id]
    return torch.cat(list(own)) + placeholder


def test_the_exported_encoder_matches_get_image_features_on_unseen_sizes(molmo):
    m = molmo
    assert m.config.image_token_id == molmo2.IMAGE_TOKEN
    encoder = m.components[0]
    with export_patches(encoder.module), torch.no_grad():
        program = torch.export.export(
            encoder.module,
            (),
            copy.deepcopy(encoder.input_sets[0]),
            dynamic_shapes=encoder.dynamic_shapes,
        )
    # sizes none of the sets has: other tilings, other image counts
    sizes = [(130, 330), (98, 250), (60, 60)]
    assert not any(set(sizes) & set(s) for s in molmo2.IMAGE_SIZES)
    given = molmo2.crop_images(m.model, sizes, torch.Generator().manual_seed(17))
    seen = {tuple(s["image_token_pooling"].shape) for s in encoder.input_sets}
    assert tuple(given["image_token_pooling"].shape) not in seen
    # odd canvases: tokens with -1 slots, none without a patch
    pooling = given["image_token_pooling"]
    assert bool((pooling < 0).any()) and bool((pooling >= 0).any(-1).all())
    with torch.no_grad():
        got = program.module()(pixel_values=given["pixel_values"], image_token_pooling=pooling)
        expected = _expected(m, given)
    grids = given["image_grids"]
    tokens = int((grids[:, 0] * grids[:, 1] + grids[:, 2] * grids[:, 3]).sum())
    assert got.shape == expected.shape == (tokens, m.config.text_config.hidden_size)
    assert float((got - expected).abs().max()) < 1e-5


def test_the_processor_layout_of_crops_and_tokens(molmo):
    # one image of 150 x 220 pixels: a global view and a 2 x 2 canvas of 7-patch crops
    # with windows of 5 patches (12 x 12 canvas patches, pooled 6 x 6); the global view's
    # 7 x 7 patches pooled 4 x 4 with -1 slots on its odd side
    given = molmo2.crop_images(molmo.model, [(150, 220)], torch.Generator().manual_seed(1))
    assert given["image_grids"].tolist() == [[4, 4, 6, 6]]
    assert given["image_num_crops"].tolist() == [5]
    assert given["pixel_values"].shape == (5, 49, 14 * 14 * 3)
    pooling = given["image_token_pooling"]
    assert pooling.shape == (16 + 36, 4) and pooling.dtype == torch.int32
    # the global view's patches first, each once; the canvas' patches in the crops after
    low, high = pooling[:16], pooling[16:]
    assert sorted(low[low >= 0].tolist()) == list(range(49))
    kept = high[high >= 0]
    assert int(kept.min()) >= 49 and kept.unique().numel() == kept.numel() == 144
    # a second image's indices follow the first image's patches
    two = molmo2.crop_images(molmo.model, [(98, 98), (98, 98)], torch.Generator())
    first, second = two["image_token_pooling"].chunk(2)
    assert torch.equal(second, torch.where(first >= 0, first + 2 * 49, -1))


def test_a_token_without_a_patch_is_refused(molmo):
    sets = [{k: v.clone() for k, v in s.items()} for s in molmo.components[0].input_sets[:1]]
    given = molmo2.crop_images(molmo.model, molmo2.IMAGE_SIZES[0], torch.Generator())
    sets[0]["image_token_pooling"][3] = -1
    with pytest.raises(ValueError, match="pools no patch"):
        molmo2.check(molmo.model, sets, [given])


def test_the_rows_are_what_the_forward_writes_at_the_placeholders(molmo):
    # the forward adds the features to the placeholders' embeddings: replacing the
    # embeddings by the encoder's rows gives the forward's logits on the processor's
    # inputs (images of sizes no check uses, one prompt row each)
    m = molmo
    given = molmo2.crop_images(m.model, [(130, 200), (70, 260)], torch.Generator())
    grids = given["image_grids"]
    counts = (grids[:, 0] * grids[:, 1] + grids[:, 2] * grids[:, 3]).tolist()
    generator = torch.Generator().manual_seed(6)
    rows_of = [
        torch.cat(
            [
                torch.randint(0, 1000, (3,), generator=generator),
                torch.full((n,), m.config.image_token_id),
                torch.randint(0, 1000, (2 + max(counts) - n,), generator=generator),
            ]
        )
        for n in counts
    ]
    ids = torch.stack(rows_of)
    types = molmo2.image_types(m.model, ids)
    with torch.no_grad():
        rows = m.components[0].module(
            pixel_values=given["pixel_values"],
            image_token_pooling=given["image_token_pooling"],
        )
        embeds = m.model.get_input_embeddings()(ids)
        where = (ids == m.config.image_token_id)[..., None].expand_as(embeds)
        merged = embeds.masked_scatter(where, rows)
        got = m.model(inputs_embeds=merged, mm_token_type_ids=types).logits
        own = m.model(input_ids=ids, mm_token_type_ids=types, **given).logits
    assert float((got - own).abs().max()) < 1e-5


def test_the_block_lm_is_the_prefill_of_the_forward_also_in_chunks(molmo):
    m = molmo.model
    generator = torch.Generator().manual_seed(8)
    ids = torch.randint(0, 1000, (2, 14), generator=generator)
    ids[:, 3:9] = m.config.image_token_id
    types = molmo2.image_types(m, ids)
    embeds = m.get_input_embeddings()(ids)
    embeds = embeds + 0.1 * torch.randn(embeds.shape, generator=generator)
    mask = torch.ones_like(ids)
    lm = molmo2.block_lm(m)
    with torch.no_grad():
        own = m(inputs_embeds=embeds, attention_mask=mask, mm_token_type_ids=types).logits
        causal = m(inputs_embeds=embeds, attention_mask=mask).logits
        whole = lm(inputs_embeds=embeds, attention_mask=mask, mm_token_type_ids=types).logits
        # the first position alone, then the rest with its cache, as the generation runs
        first = lm(
            inputs_embeds=embeds[:, :1],
            attention_mask=mask[:, :1],
            use_cache=True,
            mm_token_type_ids=types[:, :1],
        )
        rest = lm(
            inputs_embeds=embeds[:, 1:],
            attention_mask=mask,
            cache=first.cache,
            use_cache=True,
            mm_token_type_ids=types,
        ).logits
    # the image tokens see each other both ways: not the causal forward
    assert float((own - causal).abs().max()) > 1e-4
    assert float((whole - own).abs().max()) < 1e-5
    assert float((torch.cat([first.logits, rest], 1) - own).abs().max()) < 1e-5
    # without types, the model as it is (the checks' full forward)
    with torch.no_grad():
        plain = lm(inputs_embeds=embeds, attention_mask=mask).logits
    assert torch.equal(plain, causal)


def test_generate_gets_the_inputs_as_the_processor_gives_them(molmo):
    m = molmo
    feeds = get_task(TASK).processor_inputs(m)
    assert set(feeds) >= {"image_token_pooling", "image_grids", "image_num_crops"}
    grids = feeds["image_grids"]
    tokens = int((feeds["input_ids"] == m.config.image_token_id).sum())
    assert tokens == int((grids[:, 0] * grids[:, 1] + grids[:, 2] * grids[:, 3]).sum())
    assert torch.equal(feeds["mm_token_type_ids"], molmo2.image_types(m.model, feeds["input_ids"]))
    # the whole prompt after its first position fits one chunk of the decoder graph, so the
    # image tokens see each other in the prefill through the graph as in the forward's
    step = next(c for c in m.components if c.name == "decoder")
    assert feeds["input_ids"].shape[1] - 1 <= step.dynamic_shapes["inputs_embeds"][1].max
    with torch.no_grad():
        out = m.model.generate(**feeds, max_new_tokens=2, do_sample=False)
    assert out.shape[1] == feeds["input_ids"].shape[1] + 2


def test_every_image_set_has_a_shape_of_its_own():
    m = untrained_model("molmo2", task="image-text-to-text")
    encoder = next(c for c in m.components if c.name == "vision_encoder")
    shapes = [
        (tuple(s["pixel_values"].shape), tuple(s["image_token_pooling"].shape))
        for s in encoder.input_sets
    ]
    assert len(set(shapes)) == len(shapes), shapes
