"""Nemotron 3 Nano Omni (families/nemotron_h_omni.py): a RADIO tower and a pixel shuffle
that loop over the images' grids in Python, exported with what they compute from the
grids precomputed."""

import copy

import pytest
import torch

from exportcheck import export_patches, untrained_model
from exportcheck.families import INPUT_LAYOUTS, nemotron_h_omni
from exportcheck.tasks import get_task
from exportcheck.tasks.image_text_to_text import grid_inputs, processor_grid_images

pytestmark = pytest.mark.models

TASK = "image-text-to-text"


@pytest.fixture(scope="module")
def omni():
    assert INPUT_LAYOUTS["nemotron_h_omni"] is nemotron_h_omni.LAYOUT  # registered
    return untrained_model("nemotron_h_omni", task=TASK)


def test_the_exported_tower_matches_get_image_features_on_unseen_grids(omni):
    m = omni
    assert m.config.image_token_id == nemotron_h_omni.IMAGE_TOKEN
    encoder = m.components[0]
    shapes = encoder.dynamic_shapes
    for name in ("interp_indices", "interp_weights", "patch_index", "merge_order"):
        assert shapes[name] == shapes["pixel_values"]
    with export_patches(encoder.module), torch.no_grad():
        program = torch.export.export(
            encoder.module, (), copy.deepcopy(encoder.input_sets[0]), dynamic_shapes=shapes
        )
    # grids (in patches) none of the sets has, within the bounds (4 images, 128 patches);
    # the first wider than tall, the second taller than wide
    thw = torch.tensor([[1, 6, 10], [1, 2, 6], [1, 10, 2], [1, 2, 8]])
    seen = {tuple(g) for s in encoder.input_sets for g in s["image_grid_thw"].tolist()}
    assert not seen & {tuple(g) for g in thw.tolist()}
    patches = int(thw.prod(-1).sum())
    width = encoder.input_sets[0]["pixel_values"].shape[1]
    pixels = torch.randn((patches, width), generator=torch.Generator().manual_seed(11))
    with torch.no_grad():
        got = program.module()(pixel_values=pixels, image_grid_thw=thw, **grid_inputs(m.model, thw))
        given = processor_grid_images(m.model, {"pixel_values": pixels, "image_grid_thw": thw})
        assert given["image_grid_hw"].tolist() == [[6, 10], [2, 6], [10, 2], [2, 8]]
        own = m.model.get_image_features(**given)
    expected = torch.cat(list(own.pooler_output))
    # one feature row per 2 x 2 block, as the processor counts the image tokens
    assert got.shape == expected.shape == (patches // 4, m.config.text_config.hidden_size)
    assert float((got - expected).abs().max()) < 1e-5


def test_the_position_taps_are_the_towers_resampled_table(omni):
    embeddings = omni.model.vision_model.embeddings
    table = embeddings.position_embedding[0].detach()
    # the table is 128 x 128: grids below it (resampled down), one side beyond it (up)
    grids = [(5, 9), (12, 4), (2, 140), (1, 1)]
    indices, weights = nemotron_h_omni.position_taps(omni.model, torch.tensor(grids))
    assert indices.shape == weights.shape == (sum(h * w for h, w in grids), 4)
    got = (table[indices] * weights[..., None]).sum(1)
    with torch.no_grad():
        own = torch.cat(
            [embeddings._interpolate_position_embedding(g, table.dtype)[0] for g in grids]
        )
    assert float((got - own).abs().max()) < 1e-6


def test_the_merge_order_gathers_what_the_pixel_shuffle_concatenates(omni):
    m = omni.model
    # a 2 x 4 image: its first token is rows 0-1 of columns 0-1, its second columns 2-3
    order = nemotron_h_omni.merge_order(m, torch.tensor([[2, 4]]))
    assert order.tolist()[:8] == [0, 1, 4, 5, 2, 3, 6, 7]
    grids = [(4, 6), (8, 2), (2, 2)]
    rows = sum(h * w for h, w in grids)
    features = torch.randn((rows, 5), generator=torch.Generator().manual_seed(3))
    order = nemotron_h_omni.merge_order(m, torch.tensor(grids))
    got = features[order].reshape(-1, 4 * 5)
    own, start = [], 0
    for h, w in grids:
        block = features[start : start + h * w].view(1, h, w, -1)
        own.append(m.pixel_shuffle(block, scale_factor=m.config.downsample_ratio).flatten(0, 2))
        start += h * w
    assert torch.equal(got, torch.cat(own))


def test_the_tower_steps_are_the_packed_tower_also_for_one_image(omni):
    m = omni.model
    # one image: the tower runs dense attention (no bounds); two: attention per image
    for thw in (torch.tensor([[1, 6, 4]]), torch.tensor([[1, 4, 8], [1, 6, 2]])):
        patches = int(thw.prod(-1).sum())
        pixels = torch.randn((patches, 3 * 16 * 16), generator=torch.Generator().manual_seed(5))
        inputs = grid_inputs(m, thw)
        with torch.no_grad():
            got = nemotron_h_omni.tower_steps(
                m,
                pixels,
                thw,
                None,
                inputs["cu_seqlens"],
                inputs["interp_indices"],
                inputs["interp_weights"],
                inputs["patch_index"],
            ).last_hidden_state
            own = m.vision_model(pixels, image_grid_hw=thw[:, 1:]).features
        assert got.shape == own.shape
        assert float((got - own).abs().max()) < 1e-5


def test_the_final_norm_of_checkpoints_with_mtp_layers_is_applied_before_the_shuffle(omni):
    # the published checkpoint's language model has MTP layers, so the model norms the
    # tower's features (vision_final_layernorm); the tiny one has none: lend it one
    m = omni.model
    vision = m.config.vision_config
    norm = torch.nn.LayerNorm(m.config.vision_hidden_size, eps=vision.layer_norm_eps)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5, generator=torch.Generator().manual_seed(2))
        norm.bias.uniform_(-0.5, 0.5, generator=torch.Generator().manual_seed(3))
    thw = torch.tensor([[1, 4, 6], [1, 2, 2]])
    patches = int(thw.prod(-1).sum())
    pixels = torch.randn((patches, 3 * 16 * 16), generator=torch.Generator().manual_seed(9))
    encoder = omni.components[0].module
    assert m.vision_final_layernorm is None
    m.vision_final_layernorm = norm
    try:
        with torch.no_grad():
            got = encoder(pixel_values=pixels, image_grid_thw=thw, **grid_inputs(m, thw))
            own = m.get_image_features(pixel_values=pixels, image_grid_hw=thw[:, 1:])
    finally:
        m.vision_final_layernorm = None
    expected = torch.cat(list(own.pooler_output))
    assert got.shape == expected.shape
    assert float((got - expected).abs().max()) < 1e-5


def test_the_grids_are_the_sequence_the_tower_builds(omni):
    # two images of 2 x 2 and 2 x 4 patches, each after the tower's 10 class and register
    # tokens: bounds 0, 14, 32
    inputs = grid_inputs(omni.model, torch.tensor([[1, 2, 2], [1, 2, 4]]))
    assert inputs["cu_seqlens"].tolist() == [0, 14, 32]
    assert inputs["patch_index"].tolist() == [10, 11, 12, 13, *range(24, 32)]
    with pytest.raises(ValueError, match="a video"):
        grid_inputs(omni.model, torch.tensor([[2, 2, 2]]))


def test_generate_gets_the_inputs_as_the_processor_gives_them(omni):
    m = omni
    feeds = get_task(TASK).processor_inputs(m)
    grid = feeds["image_grid_hw"]
    assert "image_grid_thw" not in feeds and grid.shape[1] == 2
    # the patches channel-major, one row each, the images one after the other
    assert feeds["pixel_values"].shape == (int(grid.prod(-1).sum()), 3 * 16 * 16)
    # replace_image_token: rows * columns // merge ** 2 image tokens per image
    tokens = int((feeds["input_ids"] == m.config.image_token_id).sum())
    assert tokens == int((grid.prod(-1) // 4).sum())
    with torch.no_grad():
        out = m.model.generate(**feeds, max_new_tokens=2, do_sample=False)
    assert out.shape[1] == feeds["input_ids"].shape[1] + 2
