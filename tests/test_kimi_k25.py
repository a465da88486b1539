"""Kimi K2.5 (image-text-to-text): a tower whose frame index and block merge are derived
from the grids' values, run on tensors precomputed from the grids."""

import copy

import pytest
import torch

from exportcheck import export_patches, untrained_model
from exportcheck.families.kimi_k25 import merge_order
from exportcheck.tasks import get_task
from exportcheck.tasks.image_text_to_text import grid_inputs

pytestmark = pytest.mark.models

TASK = "image-text-to-text"


@pytest.fixture(scope="module")
def kimi_k25():
    return untrained_model("kimi_k25", task=TASK)


def test_the_exported_tower_matches_get_image_features_on_unseen_grids(kimi_k25):
    m = kimi_k25
    encoder = m.components[0]
    assert encoder.dynamic_shapes["merge_order"] == encoder.dynamic_shapes["pixel_values"]
    with export_patches(encoder.module), torch.no_grad():
        program = torch.export.export(
            encoder.module,
            (),
            copy.deepcopy(encoder.input_sets[0]),
            dynamic_shapes=encoder.dynamic_shapes,
        )
    side = m.config.vision_config.patch_size
    # grids (in patches) none of the sets has, the first of 3 x 5 blocks
    thw = torch.tensor([[1, 6, 10], [1, 2, 6], [1, 10, 2]])
    patches = int(thw.prod(-1).sum())
    generator = torch.Generator().manual_seed(11)
    # the patches as the image processor gives them: (patches, channels, patch, patch)
    pixels = torch.randn((patches, 3, side, side), generator=generator)
    with torch.no_grad():
        got = program.module()(
            pixel_values=pixels.reshape(patches, -1),
            image_grid_thw=thw,
            **grid_inputs(m.model, thw),
        )
        own = m.model.get_image_features(pixel_values=pixels, image_grid_thw=thw)
    expected = torch.cat(list(own.pooler_output))
    # one feature row per 2 x 2 block
    assert got.shape == expected.shape == (patches // 4, m.config.text_config.hidden_size)
    assert float((got - expected).abs().max()) < 1e-5


def test_the_merge_order_gathers_where_the_towers_merge_scatters(kimi_k25):
    from transformers.models.kimi_k25.modeling_kimi_k25 import get_vision_temporal_merge_index

    thw = torch.tensor([[1, 4, 6], [1, 2, 2]])
    order = merge_order(kimi_k25, thw)
    # the first block of the 4x6 image: patches 0, 1 and 6, 7; the second image's first
    # block starts after the first's 24 patches
    assert order[:4].tolist() == [0, 1, 6, 7]
    assert order[24:].tolist() == [24, 25, 26, 27]
    destination, weight, tokens = get_vision_temporal_merge_index(thw, 2, 2)
    assert tokens == 28 // 4 and bool((weight == 1).all())
    assert destination[order].tolist() == list(range(28))
    with pytest.raises(ValueError, match="a video"):
        merge_order(kimi_k25, torch.tensor([[2, 2, 2]]))


def test_generate_gets_the_patches_as_the_image_processor_gives_them(kimi_k25):
    m = kimi_k25
    feeds = get_task(TASK).processor_inputs(m)
    side = m.config.vision_config.patch_size
    thw = feeds["image_grid_thw"]
    assert feeds["pixel_values"].shape == (int(thw.prod(-1).sum()), 3, side, side)
    # one image token per 2 x 2 block
    tokens = int((feeds["input_ids"] == m.config.image_token_id).sum())
    assert tokens == int(thw.prod(-1).sum()) // 4
    with torch.no_grad():
        out = m.model.generate(**feeds, max_new_tokens=2, do_sample=False)
    assert out.shape[1] == feeds["input_ids"].shape[1] + 2
