"""VideoLLaMA 3 (image-text-to-text): a tower that takes a merge size per image, run at the
image processor's merge size on tensors precomputed from the grids."""

import copy

import numpy as np
import pytest
import torch

from exportcheck import export_patches, untrained_model
from exportcheck.tasks import get_task
from exportcheck.tasks.image_text_to_text import grid_inputs

pytestmark = pytest.mark.models

TASK = "image-text-to-text"


@pytest.fixture(scope="module")
def video_llama_3():
    return untrained_model("video_llama_3", task=TASK)


def _processor(m):
    """VideoLLaMA 3's own image processor, at the tiny tower's patch size."""
    from transformers.models.video_llama_3.image_processing_pil_video_llama_3 import (
        VideoLlama3ImageProcessorPil,
    )

    side = m.config.vision_config.patch_size
    return VideoLlama3ImageProcessorPil(
        patch_size=side, min_pixels=side * side, max_pixels=side * side * 64
    )


def test_the_exported_tower_matches_get_image_features_on_the_processors_unseen_images(
    video_llama_3,
):
    m = video_llama_3
    encoder = m.components[0]
    assert set(encoder.input_sets[0]) == {
        "pixel_values",
        "image_grid_thw",
        "vision_position_ids",
        "cu_seqlens",
    }
    with export_patches(encoder.module), torch.no_grad():
        program = torch.export.export(
            encoder.module,
            (),
            copy.deepcopy(encoder.input_sets[0]),
            dynamic_shapes=encoder.dynamic_shapes,
        )
    # images of sizes none of the sets has, odd sides among them: the image processor
    # merges no patches, so an image is any whole number of patches a side
    rng = np.random.default_rng(7)
    side = m.config.vision_config.patch_size
    images = [
        rng.integers(0, 256, (h * side, w * side, 3), dtype=np.uint8)
        for h, w in ((3, 5), (1, 2), (5, 1))
    ]
    given = dict(_processor(m)(images=images, return_tensors="pt"))
    assert given["image_grid_thw"].tolist() == [[1, 3, 5], [1, 1, 2], [1, 5, 1]]
    assert given["image_merge_sizes"].tolist() == [1, 1, 1]
    thw = given["image_grid_thw"]
    with torch.no_grad():
        got = program.module()(
            pixel_values=given["pixel_values"], image_grid_thw=thw, **grid_inputs(m.model, thw)
        )
        own = m.model.get_image_features(**given)
    expected = torch.cat(list(own.pooler_output))
    # one feature row per patch
    assert got.shape == expected.shape == (15 + 2 + 5, m.config.text_config.hidden_size)
    assert float((got - expected).abs().max()) < 1e-5


def test_generate_gets_the_merge_sizes_the_image_processor_gives(video_llama_3):
    m = video_llama_3
    # the vision config carries the image processor's choice, which the grid layout reads
    assert m.config.vision_config.merge_size == _processor(m).merge_size == 1
    feeds = get_task(TASK).processor_inputs(m)
    assert set(feeds) >= {"pixel_values", "image_grid_thw", "image_merge_sizes"}
    thw = feeds["image_grid_thw"]
    assert feeds["image_merge_sizes"].dtype == thw.dtype
    assert feeds["image_merge_sizes"].tolist() == [1] * thw.shape[0]
    # as many image tokens in the prompt as the images have patches
    tokens = int((feeds["input_ids"] == m.config.image_token_id).sum())
    assert tokens == int(thw.prod(-1).sum()) == feeds["pixel_values"].shape[0]
    with torch.no_grad():
        out = m.model.generate(**feeds, max_new_tokens=2, do_sample=False)
    assert out.shape[1] == feeds["input_ids"].shape[1] + 2
