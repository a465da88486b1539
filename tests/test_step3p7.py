"""Step 3.7 (families/step3p7.py): each image's global view and local crops, whose feature
rows get_image_features reorders in a Python loop over num_local_patches, exported with
that order precomputed; and experts computed on gathered weights."""

import copy
import importlib

import pytest
import torch

from exportcheck import export_patches, untrained_model
from exportcheck.families import INPUT_LAYOUTS, step3p7
from exportcheck.models import prepare_weights

pytestmark = pytest.mark.models

TASK = "image-text-to-text"


@pytest.fixture(scope="module")
def step():
    assert INPUT_LAYOUTS["step3p7"][0] is step3p7.LAYOUT  # registered
    return untrained_model("step3p7", task=TASK)


def _processor():
    # the class itself, from its module: the top-level name is a placeholder without
    # torchvision, which only its resizing needs
    module = importlib.import_module("transformers.models.step3p7.image_processing_step3p7")
    return module.Step3p7ImageProcessor()


def test_crop_counts_are_the_image_processors():
    processor = _processor()
    assert processor.size["height"] == processor.size["width"] == step3p7.GLOBAL_SIDE
    assert processor.patch_size == step3p7.CROP_SIDE
    assert processor.max_image_size == step3p7.LONGEST
    assert processor.downsampler_stride == step3p7.DOWNSAMPLING
    sides = [1, 20, 31, 32, 100, 300, 500, 600, 728, 729, 800, 1000, 1100, 1600, 2000]
    sides += [2500, 3024, 3100, 4000, 6000]
    counts = set()
    for width in sides:
        for height in sides:
            mine = step3p7.crop_count(width, height)
            assert mine == processor.get_number_of_image_patches(height, width), (width, height)
            counts.add(mine)
    assert 0 in counts and max(counts) > 16  # images without crops and with many


def test_the_exported_encoder_matches_get_image_features_on_unseen_images(step):
    m = step
    encoder = m.components[0]
    with export_patches(encoder.module), torch.no_grad():
        program = torch.export.export(
            encoder.module,
            (),
            copy.deepcopy(encoder.input_sets[0]),
            dynamic_shapes=encoder.dynamic_shapes,
        )
    seen = {tuple(s) for sizes in step3p7.IMAGES for s in sizes}
    unseen = [
        [(1300, 900), (200, 700), (728, 500)],  # 6, 3 (of its short side) and no crops
        [(640, 640), (300, 300)],  # no crops in the whole call
        [(2500, 600), (1100, 1100), (100, 100), (900, 2800)],
    ]
    assert not seen & {s for sizes in unseen for s in sizes}
    generator = torch.Generator().manual_seed(17)
    for sizes in unseen:
        feeds = step3p7.images(m.model, sizes, generator)
        given = step3p7.processor_image(m.model, feeds)
        counts = [step3p7.crop_count(w, h) for w, h in sizes]
        assert given["num_local_patches"].tolist() == counts
        assert ("pixel_values_local" in given) == (sum(counts) > 0)
        with torch.no_grad():
            got = program.module()(**copy.deepcopy(feeds))
            # the processor's list of counts, as get_image_features' loop reads it
            own = m.model.get_image_features(**{**given, "num_local_patches": counts})
        expected = torch.cat(list(own.pooler_output))
        global_rows, crop_rows = step3p7.rows(m.model)
        assert got.shape[0] == len(sizes) * global_rows + sum(counts) * crop_rows
        assert got.shape == expected.shape
        assert float((got - expected).abs().max()) < 1e-5


def test_crops_of_several_rows_keep_their_order(step):
    # the tiny tower gives one row a crop; a larger view gives 9 rows a view and 4 a crop
    config = copy.deepcopy(step.config)
    config.vision_config.image_size = 168
    torch.manual_seed(0)
    model = type(step.model)(config).to(torch.float32).eval()
    prepare_weights(model, config)
    assert step3p7.sides(model) == (168, 112)
    assert step3p7.rows(model) == (9, 4)
    encoder = step3p7.encoder(model)
    generator = torch.Generator().manual_seed(5)
    for sizes in ([(1000, 700), (500, 400), (600, 300)], [(2000, 500)]):
        feeds = step3p7.images(model, sizes, generator)
        given = step3p7.processor_image(model, feeds)
        with torch.no_grad():
            got = encoder(**feeds)
            own = model.get_image_features(**given)
        expected = torch.cat(list(own.pooler_output))
        assert got.shape == expected.shape
        assert float((got - expected).abs().max()) < 1e-5


def test_feature_index_puts_each_images_crops_before_its_global_view():
    # 2 images of 3 global rows, crops of 2 rows: image 0 has 2 crops, image 1 none
    index = step3p7.feature_index([2, 0], 3, 2)
    assert index.tolist() == [6, 7, 8, 9, 0, 1, 2, 3, 4, 5]


def test_a_wrong_index_is_refused(step):
    feeds = step3p7.images(step.model, [(1000, 700), (500, 400)], torch.Generator())
    assert step3p7.crop_counts(step.model, feeds) == [4, 0]
    flipped = {**feeds, "feature_index": feeds["feature_index"].flip(0)}
    with pytest.raises(ValueError, match="not the processor's order"):
        step3p7.crop_counts(step.model, flipped)
    fewer = {**feeds, "pixel_values_local": feeds["pixel_values_local"][:2]}
    with pytest.raises(ValueError, match="not the processor's order"):
        step3p7.crop_counts(step.model, fewer)


def test_the_merged_features_generate_what_generate_gives_from_the_processors_inputs(step):
    m = step
    generator = torch.Generator().manual_seed(23)
    # one image with crops, one without: 4 crops of 1 row and 4 global rows, 4 rows
    feeds = step3p7.images(m.model, [(1100, 700), (600, 500)], generator)
    given = step3p7.processor_image(m.model, feeds)
    assert given["num_local_patches"].tolist() == [4, 0]
    token = m.config.image_token_id
    text = torch.randint(3, 900, (2, 12), generator=generator)
    assert not (text == token).any()
    ids = text.clone()
    ids[0, 2:10] = token  # the first image's 8 rows
    ids[1, 5:9] = token  # the second's 4
    mask = torch.ones_like(ids)
    with torch.no_grad():
        features = step3p7.encoder(m.model)(**feeds)
        embeds = m.model.get_input_embeddings()(ids)
        merged = embeds.masked_scatter((ids == token)[..., None], features)
        settings = {"max_new_tokens": 6, "do_sample": False}
        own = m.model.generate(input_ids=ids, attention_mask=mask, **given, **settings)
        mine = m.model.generate(inputs_embeds=merged, attention_mask=mask, **settings)
        logits = m.model(input_ids=ids, attention_mask=mask, **given).logits
        merged_logits = m.model(inputs_embeds=merged, attention_mask=mask).logits
    assert float((logits - merged_logits).abs().max()) < 1e-5
    assert torch.equal(own[:, ids.shape[1] :], mine[:, -6:])


def test_the_experts_patch_computes_the_experts_loop():
    from transformers.models.step3p7 import modeling_step3p7

    config = untrained_model("step3p7", task=TASK).config.text_config
    generator = torch.Generator().manual_seed(2)
    for limit in (None, 0.05):
        experts = modeling_step3p7.Step3p7Experts(config, swiglu_limit=limit)
        with torch.no_grad():
            experts.gate_up_proj.copy_(torch.randn(experts.gate_up_proj.shape, generator=generator))
            experts.down_proj.copy_(torch.randn(experts.down_proj.shape, generator=generator))
        tokens, top_k = 37, config.num_experts_per_tok
        hidden = torch.randn((tokens, config.hidden_size), generator=generator)
        scores = torch.rand((tokens, experts.num_experts), generator=generator)
        weights, index = scores.topk(top_k, dim=-1)
        weights = weights / weights.sum(-1, keepdim=True)
        with torch.no_grad():
            own = experts(hidden, index, weights)
            with export_patches(experts, only=("step3p7_experts_gather",)) as log:
                patched = experts(hidden, index, weights)
        assert "step3p7_experts_gather" in log.changed
        assert float((own - patched).abs().max()) < 1e-4 * float(own.abs().max())


def test_without_the_experts_patch_the_decoder_step_does_not_export(step):
    # the decoder step (not the first component, which test_patches_needed exports)
    decoder = next(c for c in step.components if c.name == "decoder")
    expected = r"Could not guard on data-dependent expression Eq\(u0, 0\)"
    with (
        pytest.raises(Exception, match=expected),
        export_patches(decoder.module, exclude=("step3p7_experts_gather",)),
        torch.no_grad(),
    ):
        torch.export.export(
            decoder.module,
            (),
            kwargs=copy.deepcopy(decoder.input_sets[0]),
            dynamic_shapes=decoder.dynamic_shapes,
        )
