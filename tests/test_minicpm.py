"""MiniCPM-V and MiniCPM-OCR (families/minicpm.py): a NaViT-like tower whose mergers loop
over the images in Python, exported with what they compute from the grids precomputed."""

import copy

import numpy as np
import pytest
import torch

from exportcheck import export_patches, untrained_model
from exportcheck.families import minicpm
from exportcheck.tasks.image_text_to_text import grid_inputs, processor_grid_images

pytestmark = pytest.mark.models

TASK = "image-text-to-text"


def _exported(encoder):
    """The component's ExportedProgram, traced on its first input set."""
    with export_patches(encoder.module), torch.no_grad():
        return torch.export.export(
            encoder.module,
            (),
            copy.deepcopy(encoder.input_sets[0]),
            dynamic_shapes=encoder.dynamic_shapes,
        )


def _check_unseen_grids(m, tokens):
    """The exported vision encoder against the model's own get_image_features, fed as the
    processor feeds it, on grids (in image tokens) that none of the input sets has."""
    encoder = m.components[0]
    program = _exported(encoder)
    merge = minicpm._merge_size(m.config)
    thw = torch.tensor([(1, h * merge, w * merge) for h, w in tokens])
    seen = {tuple(g) for s in encoder.input_sets for g in s["image_grid_thw"].tolist()}
    assert not seen & {tuple(g) for g in thw.tolist()}
    patches = int(thw.prod(-1).sum())
    generator = torch.Generator().manual_seed(7)
    pixels = torch.randn(
        (patches, encoder.input_sets[0]["pixel_values"].shape[1]), generator=generator
    )
    with torch.no_grad():
        got = program.module()(pixel_values=pixels, image_grid_thw=thw, **grid_inputs(m.model, thw))
        given = processor_grid_images(m.model, {"pixel_values": pixels, "image_grid_thw": thw})
        own = m.model.get_image_features(**given)
    expected = torch.cat(list(own.pooler_output))
    assert got.shape == expected.shape == (sum(h * w for h, w in tokens), got.shape[1])
    assert float((got - expected).abs().max()) < 1e-5
    return given


def test_the_16x_tower_with_its_window_merger_matches_get_image_features_on_unseen_grids():
    m = untrained_model("minicpmv4_6", task=TASK)
    # an image token is 4 x 4 patches: the window merger's 2 x 2, then the merger's 2 x 2
    assert minicpm._merge_size(m.config) == 4
    assert m.config.image_token_id == minicpm.IMAGE_TOKEN
    # the tiny tower has 2 layers: the window merger runs after the first
    assert m.config.vision_config.insert_layer_id == 0
    encoder = m.components[0]
    assert {"window_index", "cu_window_seqlens"} <= set(encoder.input_sets[0])
    assert "merge_order" not in encoder.input_sets[0]
    given = _check_unseen_grids(m, [(3, 1), (1, 5), (1, 3)])
    # as the processor gives them: target_sizes in patches, patches side by side
    assert given["target_sizes"].tolist() == [[12, 4], [4, 20], [4, 12]]
    assert given["target_sizes"].dtype == torch.int32
    patch = m.config.vision_config.patch_size
    assert given["pixel_values"].shape == (1, 3, patch, (48 + 80 + 48) * patch)


def test_the_windows_are_listed_in_the_order_the_merger_takes_them():
    m = untrained_model("minicpmv4_6", task=TASK)
    # one image of 4 x 8 patches: 2 x 4 windows of 2 x 2, which the merger takes as 1 x 2
    # blocks of 2 x 2 windows; its first token reads windows 0, 1, 4 and 5
    extra = grid_inputs(m.model, torch.tensor([[1, 4, 8]]))
    windows = extra["window_index"].reshape(-1, 4)
    first_row = [0, 1, 8, 9]  # the first window's patches, row by row in the 4 x 8 grid
    assert windows[0].tolist() == first_row
    assert windows[1].tolist() == [p + 2 for p in first_row]  # window 1: 2 columns right
    assert windows[2].tolist() == [p + 16 for p in first_row]  # window 4: 2 rows down
    assert windows[4].tolist() == [p + 4 for p in first_row]  # the second token's first
    assert extra["cu_window_seqlens"].tolist() == list(range(0, 33, 4))


def test_the_4x_tower_gathers_each_token_s_patches_on_unseen_grids():
    m = untrained_model("minicpm_ocr", task=TASK)
    # MiniCPM-OCR skips the window merger: an image token is 2 x 2 patches
    assert m.config.downsample_mode == "4x"
    assert minicpm._merge_size(m.config) == 2
    encoder = m.components[0]
    assert "window_index" not in encoder.input_sets[0]
    assert encoder.dynamic_shapes["merge_order"] == encoder.dynamic_shapes["pixel_values"]
    extra = grid_inputs(m.model, torch.tensor([[1, 4, 6], [1, 2, 2]]))
    # the first token: patches 0, 1 and 6, 7 of the 4 x 6 grid; the second image's after
    # the first's 24 patches
    assert extra["merge_order"][:4].tolist() == [0, 1, 6, 7]
    assert extra["merge_order"][24:].tolist() == [24, 25, 26, 27]
    _check_unseen_grids(m, [(1, 3), (4, 1), (3, 1)])


def test_the_patches_side_by_side_are_the_image_processor_s_layout():
    from transformers.models.minicpmv4_6.image_processing_pil_minicpmv4_6 import (
        MiniCPMV4_6ImageProcessorPil,
    )

    m = untrained_model("minicpmv4_6", task=TASK)
    patch, channels = m.config.vision_config.patch_size, m.config.vision_config.num_channels
    rows, columns = 3, 5
    image = np.random.default_rng(0).standard_normal((channels, rows * patch, columns * patch))
    own = MiniCPMV4_6ImageProcessorPil().reshape_by_patch(image.astype(np.float32), patch)
    # the grid layout's flattened patches: row by row, each (channels, patch, patch)
    flat = torch.from_numpy(image).float().reshape(channels, rows, patch, columns, patch)
    flat = flat.permute(1, 3, 0, 2, 4).reshape(rows * columns, -1)
    laid = minicpm._navit_pixels(m.model, flat)
    assert laid.shape == (1, *own.shape)
    assert torch.equal(laid[0], torch.from_numpy(own))


def test_minicpmv4_7_s_canvas_rope_takes_the_grids_as_target_sizes():
    from exportcheck.tasks import get_task

    m = untrained_model("minicpmv4_7", task=TASK)
    step = m.components[2]
    assert step.input_sets[0]["position_ids"].shape[0] == 3  # time, height, width
    feeds = get_task(TASK).processor_inputs(m)
    assert "image_grid_thw" not in feeds and feeds["target_sizes"].dtype == torch.int32
    image = feeds["mm_token_type_ids"].bool()
    assert torch.equal(image, feeds["input_ids"] == minicpm.IMAGE_TOKEN)
    positions, _ = m.model.model.get_rope_index(
        feeds["input_ids"],
        mm_token_type_ids=feeds["mm_token_type_ids"],
        target_sizes=feeds["target_sizes"],
        attention_mask=feeds["attention_mask"],
    )
    # each image's tokens lie on its canvas of (rows, columns) tokens, one place each
    rows, columns = (feeds["target_sizes"][0] // minicpm._merge_size(m.config)).tolist()
    places = positions[1:, 0][:, image[0]]
    places = places - places[:, :1]
    assert {tuple(p) for p in places.T.tolist()} == {
        (r, c) for r in range(rows) for c in range(columns)
    }
