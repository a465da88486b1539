"""LFM3-VL (image-text-to-text): a tower whose short-convolution layers lay each image's
frames out on their grid in a loop over the grids, run on each patch's neighbours under
the kernel precomputed from the grids."""

import copy

import pytest
import torch

from exportcheck import export_patches, untrained_model
from exportcheck.families import INPUT_LAYOUTS
from exportcheck.families.lfm3_vl import LAYOUT, _convolution, neighbour_order
from exportcheck.tasks.image_text_to_text import grid_inputs

pytestmark = pytest.mark.models

TASK = "image-text-to-text"


@pytest.fixture(scope="module")
def lfm3_vl():
    assert INPUT_LAYOUTS["lfm3_vl"] is LAYOUT  # registered by its family
    return untrained_model("lfm3_vl", task=TASK)


def test_the_exported_tower_matches_get_image_features_on_unseen_grids(lfm3_vl):
    m = lfm3_vl
    encoder = m.components[0]
    shapes = encoder.dynamic_shapes
    assert shapes["neighbour_index"] == shapes["pixel_values"]
    with export_patches(encoder.module), torch.no_grad():
        program = torch.export.export(
            encoder.module, (), copy.deepcopy(encoder.input_sets[0]), dynamic_shapes=shapes
        )
    width = encoder.input_sets[0]["pixel_values"].shape[1]
    # grids (in patches) none of the sets has, within the bound of 128 patches
    thw = torch.tensor([[1, 6, 10], [1, 2, 6], [1, 10, 2], [1, 2, 2]])
    patches = int(thw.prod(-1).sum())
    pixels = torch.randn((patches, width), generator=torch.Generator().manual_seed(11))
    with torch.no_grad():
        got = program.module()(pixel_values=pixels, image_grid_thw=thw, **grid_inputs(m.model, thw))
        own = m.model.get_image_features(pixel_values=pixels, image_grid_thw=thw)
    expected = torch.cat(list(own.pooler_output))
    # one feature row per 2 x 2 block
    assert got.shape == expected.shape == (patches // 4, m.config.text_config.hidden_size)
    assert float((got - expected).abs().max()) < 1e-5


def test_the_neighbours_are_the_kernels_taps_within_the_frame(lfm3_vl):
    # a 2 x 4 image: its blocks (columns 0-1, then 2-3) each row by row; 8 = padding
    index = neighbour_order(lfm3_vl.model, torch.tensor([[1, 2, 4]]))
    assert index.shape == (8, 9)
    # the first patch, (0, 0): the row above and the column left are padding
    assert index[0].tolist() == [8, 8, 8, 8, 0, 1, 8, 2, 3]
    # the second block's first patch, (0, 2): its left neighbours are the first block's
    assert index[4].tolist() == [8, 8, 8, 1, 4, 5, 3, 6, 7]


def test_the_gathered_convolution_is_the_layers_on_frames_and_images(lfm3_vl):
    conv = next(
        layer.conv for layer in lfm3_vl.model.model.vision_tower.layers if hasattr(layer, "conv")
    )
    # two images, the second a clip of 2 frames, each frame convolved within itself
    thw = torch.tensor([[1, 4, 6], [2, 6, 2]])
    hidden = torch.randn((int(thw.prod(-1).sum()), conv.in_proj.in_features))
    with torch.no_grad():
        got = _convolution(conv, hidden, neighbour_order(lfm3_vl.model, thw))
        own = conv(hidden, grid_thw=thw.tolist())
    assert float((got - own).abs().max()) < 1e-5
