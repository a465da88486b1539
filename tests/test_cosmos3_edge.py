"""Cosmos3 Edge (image-text-to-text): a tower that resizes its position table to each
image (antialiased bilinear) in a loop over the grids, run on each patch's weights on the
table precomputed from the grids."""

import copy

import pytest
import torch

from exportcheck import export_patches, untrained_model
from exportcheck.families.cosmos3_edge import position_weights
from exportcheck.tasks.image_text_to_text import grid_inputs

pytestmark = pytest.mark.models

TASK = "image-text-to-text"


@pytest.fixture(scope="module")
def cosmos3_edge():
    return untrained_model("cosmos3_edge", task=TASK)


def test_the_exported_tower_matches_get_image_features_on_unseen_grids(cosmos3_edge):
    m = cosmos3_edge
    encoder = m.components[0]
    assert "interp_indices" not in encoder.input_sets[0]
    assert encoder.dynamic_shapes["interp_weights"] == encoder.dynamic_shapes["pixel_values"]
    with export_patches(encoder.module), torch.no_grad():
        program = torch.export.export(
            encoder.module,
            (),
            copy.deepcopy(encoder.input_sets[0]),
            dynamic_shapes=encoder.dynamic_shapes,
        )
    width = encoder.input_sets[0]["pixel_values"].shape[1]
    # grids (in patches) none of the sets has, within the bound of 128 patches: the
    # 16 x 16 table shrunk on both axes (by 8 on a 2-patch side) and enlarged on one (18)
    thw = torch.tensor([[1, 6, 10], [1, 2, 6], [1, 2, 18], [1, 2, 2]])
    patches = int(thw.prod(-1).sum())
    pixels = torch.randn((patches, width), generator=torch.Generator().manual_seed(11))
    with torch.no_grad():
        got = program.module()(pixel_values=pixels, image_grid_thw=thw, **grid_inputs(m.model, thw))
        own = m.model.get_image_features(pixel_values=pixels, image_grid_thw=thw)
    expected = torch.cat(list(own.pooler_output))
    # one feature row per 2 x 2 block
    assert got.shape == expected.shape == (patches // 4, m.config.text_config.hidden_size)
    assert float((got - expected).abs().max()) < 1e-5


def test_the_position_weights_are_the_towers_resized_table(cosmos3_edge):
    embeddings = cosmos3_edge.model.model.visual.embeddings
    table = embeddings.position_embedding.weight
    edge = embeddings.position_embedding_size
    thw = torch.tensor([[1, 4, 6], [2, 2, 2], [1, 24, 2]])
    weights = position_weights(cosmos3_edge.model, thw)
    # every patch of every frame, each a weighting of the table's rows that sums to 1
    assert weights.shape == (24 + 8 + 48, edge * edge)
    assert torch.allclose(weights.sum(-1), torch.ones(80), atol=1e-5)
    # the 2 x 2 image, shrunk by 8: each patch reaches 12 x 12 rows of the table (a
    # bilinear kernel widened 8 times), where the 4 x 6 image's first (a corner) reaches 6 x 4
    assert ((weights[24:32] > 0).sum(-1) == 144).all()
    assert int((weights[0] > 0).sum()) == 6 * 4
    with torch.no_grad():
        own = embeddings.resize_positional_embeddings(
            table.reshape(edge, edge, -1), thw, cosmos3_edge.config.vision_config.spatial_merge_size
        )
        assert float((weights @ table - own).abs().max()) < 1e-6
