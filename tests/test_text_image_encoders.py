"""image-text-to-text: encoder-decoders whose encoder reads the prompt's tokens with the
image (T5Gemma 2, Florence-2), their encoder graph taking the ids, the mask and the
pixels and writing the image's features over the placeholder tokens itself."""

import copy

import pytest
import torch

from exportcheck import export_patches, untrained_model, validate
from exportcheck.tasks import get_task

pytestmark = pytest.mark.models

TASK = "image-text-to-text"


@pytest.fixture(scope="module")
def t5gemma2():
    return untrained_model("t5gemma2", task=TASK)


def _exported(component):
    """The component's ExportedProgram, traced on its first input set."""
    with export_patches(component.module), torch.no_grad():
        return torch.export.export(
            component.module,
            (),
            copy.deepcopy(component.input_sets[0]),
            dynamic_shapes=component.dynamic_shapes,
        )


def _padded(component):
    """The index of an input set other than the traced one with a padded row."""
    return next(
        i
        for i, feeds in enumerate(component.input_sets)
        if i > 0 and bool((feeds["attention_mask"] == 0).any())
    )


def test_the_prompt_holds_one_image_of_placeholders_per_row_then_padded_text(t5gemma2):
    m = t5gemma2
    assert [c.name for c in m.components] == ["encoder", "decoder_init", "decoder"]
    encoder = m.components[0]
    config = m.config.encoder
    tokens = config.mm_tokens_per_image
    for feeds in encoder.input_sets:
        ids, mask = feeds["input_ids"], feeds["attention_mask"]
        assert feeds["pixel_values"].shape[0] == ids.shape[0]  # one image per prompt
        # Gemma 3's processor: begin-of-image, a placeholder per pooled token, end-of-image
        assert (ids[:, 0] == config.boi_token_index).all()
        assert (ids[:, 1 : 1 + tokens] == config.image_token_index).all()
        assert (ids[:, 1 + tokens] == config.eoi_token_index).all()
        assert int((ids == config.image_token_index).sum()) == tokens * ids.shape[0]
        # right-padded: the mask's zeros are at the end, on pad tokens
        assert torch.equal(mask, mask.sort(1, descending=True).values)
        assert (ids[mask == 0] == m.config.encoder.text_config.pad_token_id).all()
    assert any(bool((f["attention_mask"] == 0).any()) for f in encoder.input_sets)
    lengths = {f["input_ids"].shape[1] for f in encoder.input_sets}
    assert len(lengths) == len(encoder.input_sets)  # the prompt's length is dynamic


def test_t5gemma2_exported_encoder_equals_its_own_encoder_on_an_unseen_padded_set(t5gemma2):
    m = t5gemma2
    encoder = m.components[0]
    program = _exported(encoder)
    i = _padded(encoder)
    feeds = encoder.input_sets[i]
    with torch.no_grad():
        got = program.module()(**copy.deepcopy(feeds))
        own = m.model.get_encoder()(**copy.deepcopy(feeds)).last_hidden_state
        other = {**feeds, "pixel_values": torch.randn_like(feeds["pixel_values"])}
        moved = program.module()(**copy.deepcopy(other))
    torch.testing.assert_close(got, own, atol=1e-5, rtol=1e-5)
    # the graph reads the image: other pixels change the states
    assert float((moved - got).abs().max()) > 1e-3


def test_florence2_exported_encoder_equals_the_models_encoder_states_on_an_unseen_set():
    m = untrained_model("florence2", task=TASK)
    encoder = m.components[0]
    program = _exported(encoder)
    feeds = encoder.input_sets[_padded(encoder)]
    start = torch.full((feeds["input_ids"].shape[0], 1), 2)
    with torch.no_grad():
        got = program.module()(**copy.deepcopy(feeds))
        # the model's own forward merges the image before its BART encoder
        own = m.model(**copy.deepcopy(feeds), decoder_input_ids=start)
        other = {**feeds, "pixel_values": torch.randn_like(feeds["pixel_values"])}
        moved = program.module()(**copy.deepcopy(other))
    torch.testing.assert_close(got, own.encoder_last_hidden_state, atol=1e-5, rtol=1e-5)
    assert float((moved - got).abs().max()) > 1e-3


def test_the_encoder_refuses_pixels_of_another_rank_or_count_and_missing_placeholders(
    t5gemma2,
):
    module = t5gemma2.components[0].module
    feeds = copy.deepcopy(t5gemma2.components[0].input_sets[0])
    with pytest.raises(ValueError, match=r"pixel_values must have rank 4"):
        module(**{**feeds, "pixel_values": feeds["pixel_values"][0]})
    with pytest.raises(ValueError, match=r"2 prompts: the encoder graph takes one image per"):
        module(**{**feeds, "pixel_values": feeds["pixel_values"].repeat(2, 1, 1, 1)})
    # a prompt that lost one of its image tokens: 7 placeholders for 8 feature rows
    ids = feeds["input_ids"].clone()
    ids[0, 1] = 5
    with pytest.raises(ValueError, match=r"hold 7 image tokens for 8 feature rows \(4 per"):
        module(**{**feeds, "input_ids": ids})


def test_generation_gives_eager_generate_the_encoder_graphs_inputs(t5gemma2):
    feeds = get_task(TASK).generation_inputs(t5gemma2)
    assert set(feeds) == set(t5gemma2.components[0].input_sets[0])
    assert bool((feeds["attention_mask"] == 0).any())  # one prompt padded
    # the exported program only (onnxruntime is checked by `exportcheck validate`)
    report = validate(t5gemma2, exporter="export")
    assert report.ok, report.table()
    assert report.generation["exported"]["tokens_equal_generate"], report.generation
