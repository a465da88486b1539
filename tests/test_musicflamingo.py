"""Music Flamingo: the audio encoder graph takes the time stamps the forward computes
from the prompt's runs of audio tokens."""

import copy

import pytest
import torch

from exportcheck import export_patches, untrained_model
from exportcheck.families.musicflamingo import (
    musicflamingo_features,
    musicflamingo_timestamps,
)

pytestmark = pytest.mark.models

TASK = "text2text-generation"


@pytest.fixture(scope="module")
def built():
    return untrained_model("musicflamingo", task=TASK)


def _clips(m, rows, seed):
    """Features and masks of ``rows`` windows, the last one shorter (padded)."""
    encoder = next(c for c in m.components if c.name == "audio_encoder")
    feeds = encoder.input_sets[0]
    features = feeds["input_features"][:1].repeat(rows, 1, 1)
    features = features + 0.1 * torch.randn(
        features.shape, generator=torch.Generator().manual_seed(seed)
    )
    mask = torch.ones((rows, features.shape[-1]), dtype=feeds["input_features_mask"].dtype)
    mask[-1, features.shape[-1] // 2 :] = 0
    return features, mask


def _prompt(m, lengths, windows):
    token = m.config.audio_token_id
    ids, row = [], 0
    for count in windows:
        ids += [1, 2] + [token] * int(lengths[row : row + count].sum()) + [3]
        row += count
    return torch.tensor([ids])


@pytest.mark.parametrize("windows", [(1, 1, 1), (2, 1), (3,)])
def test_the_features_with_given_time_stamps_are_the_models_own(built, windows):
    m = built
    base = m.model.model
    features, mask = _clips(m, 3, seed=sum(windows))
    lengths = base.audio_tower._get_feat_extract_output_lengths(mask.sum(-1).long())[1]
    with torch.no_grad():
        expected = base.get_audio_features(
            features, mask, _prompt(m, lengths, windows), return_dict=True
        ).pooler_output
        stamps = musicflamingo_timestamps(m.model, mask, windows)
        got = musicflamingo_features(m.model, features, mask, stamps).pooler_output
    torch.testing.assert_close(got, expected)
    # a clip of several windows numbers its windows: the later ones start later
    assert bool((stamps[:, 0] > 0).any()) == (max(windows) > 1)


def test_the_exported_encoder_reads_the_windows_of_a_long_clip(built):
    m = built
    encoder = next(c for c in m.components if c.name == "audio_encoder")
    with export_patches(encoder.module), torch.no_grad():
        program = torch.export.export(
            encoder.module,
            (),
            kwargs=copy.deepcopy(encoder.input_sets[0]),
            dynamic_shapes=encoder.dynamic_shapes,
        )
        features, mask = _clips(m, 3, seed=7)
        one_clip = musicflamingo_timestamps(m.model, mask, (3,))
        own_clips = musicflamingo_timestamps(m.model, mask)
        feeds = {"input_features": features, "input_features_mask": mask}
        got = program.module()(**feeds, audio_timestamps=one_clip)
        expected = encoder.module(**feeds, audio_timestamps=one_clip)
        other = encoder.module(**feeds, audio_timestamps=own_clips)
    torch.testing.assert_close(got, expected)
    # the windows' numbers move the features: the graph did not drop them
    assert (expected - other).abs().max() > 1e-3


def test_clips_that_do_not_cover_the_rows_are_refused(built):
    _, mask = _clips(built, 3, seed=0)
    with pytest.raises(ValueError, match="do not cover the 3 rows"):
        musicflamingo_timestamps(built.model, mask, (1, 1))
