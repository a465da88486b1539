"""Kosmos-2.5 (image-text-to-text): Kosmos-2's masked image span, the image given as
flattened patches, and a text model that reads the span mask at every position."""

import copy
import types

import pytest
import torch

from exportcheck import export_patches, untrained_model
from exportcheck.families import INPUT_LAYOUTS
from exportcheck.families.kosmos2_5 import LAYOUT, processor_prompt, tags
from exportcheck.tasks import get_task
from exportcheck.tasks._audio_lm import text_lm
from exportcheck.tasks._image_seq2seq import flattened_patches
from exportcheck.tasks.image_text_to_text import merge_span, step_span

pytestmark = pytest.mark.models

TASK = "image-text-to-text"


@pytest.fixture(scope="module")
def kosmos2_5():
    assert INPUT_LAYOUTS["kosmos-2.5"] is LAYOUT  # registered by its family
    return untrained_model("kosmos-2.5", task=TASK)


def _parts(m):
    return {c.name: c.module for c in m.components}


def test_the_prompt_is_laid_out_as_the_processor_lays_it_out(kosmos2_5):
    rows = kosmos2_5.config.latent_query_num
    text = torch.tensor([[10, 11, 12], [20, 21, 22]])
    feeds = processor_prompt(kosmos2_5.model, rows, text)
    boi, eoi = tags(kosmos2_5.config.text_config.vocab_size)
    # <s> <image>, one image token (<s>) per feature row, </image>, the text
    assert feeds["input_ids"][1].tolist() == [0, boi, *[0] * rows, eoi, 20, 21, 22]
    # the processor's mask: -1 on the tags, 1 on the span, 0 on <s> and the text
    assert feeds["image_embeds_position_mask"][0].tolist() == [0, -1, *[1] * rows, -1, 0, 0, 0]
    assert feeds["attention_mask"].eq(1).all()
    with pytest.raises(ValueError, match="latent_query_num"):
        processor_prompt(kosmos2_5.model, rows - 1, text)


def test_the_exported_encoder_matches_get_image_features_on_unseen_patch_counts(kosmos2_5):
    m = kosmos2_5
    encoder = m.components[0]
    # the processor's flattened_patches alone: its patch mask is overwritten by the text's
    assert list(encoder.input_sets[0]) == ["flattened_patches"]
    with export_patches(encoder.module), torch.no_grad():
        program = torch.export.export(
            encoder.module,
            (),
            copy.deepcopy(encoder.input_sets[0]),
            dynamic_shapes=encoder.dynamic_shapes,
        )
    # image and patch counts none of the sets has, padded to the longest
    given = flattened_patches(m.config, [7, 33, 22], torch.Generator().manual_seed(5))
    patches = given["flattened_patches"]
    with torch.no_grad():
        got = program.module()(flattened_patches=patches)
        own = m.model.get_image_features(flattened_patches=patches).pooler_output
    rows = m.config.latent_query_num
    assert got.shape == (3 * rows, m.config.text_config.embed_dim)
    assert float((got - own.reshape(got.shape)).abs().max()) < 1e-5
    # the untrained features read the pixels (not only the rows' positions)
    moved = patches.clone()
    real = given["attention_mask"].bool()
    moved[..., 2:][real] = torch.randn(moved[..., 2:][real].shape)
    with torch.no_grad():
        other = program.module()(flattened_patches=moved)
    assert float((other - got).abs().max()) > 1e-3


def test_the_merge_and_span_step_give_the_forward_logits(kosmos2_5):
    m = kosmos2_5
    assert step_span(m.model)
    feeds = get_task(TASK).generation_inputs(m)
    ids, mask = feeds["input_ids"], feeds["attention_mask"]
    span = feeds["image_embeds_position_mask"]
    parts = _parts(m)
    lm = text_lm(m.model)
    cut = 2  # <s> <image> cached, the span, </image> and the text in one step
    with torch.no_grad():
        expected = m.model(
            flattened_patches=feeds["image"]["flattened_patches"],
            input_ids=ids,
            attention_mask=mask,
            image_embeds_position_mask=span,
        ).logits
        features = parts["vision_encoder"](**feeds["image"])
        merged = merge_span(parts["embed_tokens"](ids), span, features)
        prompt = lm(
            inputs_embeds=merged[:, :cut],
            attention_mask=mask[:, :cut],
            image_embeds_position_mask=span[:, :cut],
            use_cache=True,
        )

        def step(chunk):
            return parts["decoder"](
                inputs_embeds=merged[:, cut:],
                attention_mask=mask,
                image_embeds_position_mask=chunk,
                cache=copy.deepcopy(prompt.cache),
            )["logits"]

        got = step(span[:, cut:])
        unread = step(torch.zeros_like(span[:, cut:]))
    assert float((got - expected[:, cut:]).abs().max()) < 1e-5
    # the step must read the chunk's mask: the segment embedding moves every position
    assert float((unread - expected[:, cut:]).abs().max()) > 1e-3


def test_the_merge_writes_where_the_mask_is_one_only():
    embeds = torch.zeros((1, 5, 4))
    span = torch.tensor([[0, -1, 1, 1, -1]])  # the tags around the span are -1
    merged = merge_span(embeds, span, torch.arange(8.0).reshape(2, 4))
    assert merged[0, 2].tolist() == [0, 1, 2, 3] and merged[0, 3].tolist() == [4, 5, 6, 7]
    assert merged[0, [0, 1, 4]].eq(0).all()


def test_the_step_span_hook_is_kosmos_2_5s_only():
    def model(model_type):
        return types.SimpleNamespace(config=types.SimpleNamespace(model_type=model_type))

    assert step_span(model("kosmos-2.5"))
    assert not step_span(model("kosmos-2")) and not step_span(model("llava"))


def test_the_build_checks_that_the_features_move_with_the_patches_pixels(monkeypatch):
    # the check replaces the pixels of the real patches only (positions and padding kept);
    # with a threshold no encoder meets, the build refuses and names the input
    import exportcheck.tasks.image_text_to_text as task

    monkeypatch.setattr(task, "PIXELS_MATTER", 1e9)
    with pytest.raises(ValueError, match="for other flattened_patches"):
        untrained_model("kosmos-2.5", task=TASK)
