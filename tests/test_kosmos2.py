"""Kosmos-2 (image-text-to-text): no placeholder token; the image features fill the span
of the prompt that image_embeds_position_mask marks, before the embeddings are scaled and
given positions."""

import pytest
import torch

from exportcheck import untrained_model
from exportcheck.families.kosmos2 import UNK, processor_prompt, tags
from exportcheck.tasks import get_task
from exportcheck.tasks._audio_lm import text_lm
from exportcheck.tasks.image_text_to_text import image_span, merge_span

pytestmark = pytest.mark.models

TASK = "image-text-to-text"


@pytest.fixture(scope="module")
def kosmos2():
    return untrained_model("kosmos-2", task=TASK)


def _parts(m):
    return {c.name: c.module for c in m.components}


def test_the_prompt_is_laid_out_as_the_processor_lays_it_out(kosmos2):
    rows = kosmos2.config.latent_query_num
    text = torch.tensor([[10, 11, 12], [20, 21, 22]])
    feeds = processor_prompt(kosmos2.model, rows, text)
    boi, eoi = tags(kosmos2.config.text_config.vocab_size)
    # <s> <image>, one distinct id per feature row from unk + 1 on, </image>, the text
    expected = [0, boi, *range(UNK + 1, UNK + 1 + rows), eoi]
    assert feeds["input_ids"][0].tolist() == [*expected, 10, 11, 12]
    assert feeds["input_ids"][1].tolist() == [*expected, 20, 21, 22]
    span = feeds["image_embeds_position_mask"]
    assert span[:, 2 : 2 + rows].eq(1).all() and int(span.sum()) == 2 * rows
    assert feeds["attention_mask"].eq(1).all()
    # the published vocabulary keeps its own tag ids
    assert tags(65037) == (64003, 64004)
    with pytest.raises(ValueError, match="latent_query_num"):
        processor_prompt(kosmos2.model, rows - 1, text)


def test_the_driver_merge_and_decoder_give_the_forward_logits(kosmos2):
    m = kosmos2
    assert image_span(m.model) is processor_prompt
    feeds = get_task(TASK).generation_inputs(m)
    ids, mask = feeds["input_ids"], feeds["attention_mask"]
    span = feeds["image_embeds_position_mask"]
    parts = _parts(m)
    with torch.no_grad():
        features = parts["vision_encoder"](**feeds["image"])
        embeds = parts["embed_tokens"](ids)
        merged = merge_span(embeds, span, features)
        got = text_lm(m.model)(inputs_embeds=merged, attention_mask=mask).logits
        unmerged = text_lm(m.model)(inputs_embeds=embeds, attention_mask=mask).logits
        expected = m.model(
            pixel_values=feeds["image"]["pixel_values"],
            input_ids=ids,
            attention_mask=mask,
            image_embeds_position_mask=span,
        ).logits
    assert float((got - expected).abs().max()) < 1e-5
    # the features matter: without them the text after the span reads otherwise
    assert float((unmerged - expected)[:, -1].abs().max()) > 1e-3


def test_the_merge_refuses_a_span_of_another_length():
    embeds = torch.zeros((1, 5, 4))
    span = torch.tensor([[0, 1, 1, 0, 0]])
    with pytest.raises(ValueError, match=r"marks 2 positions .* 3 feature rows"):
        merge_span(embeds, span, torch.ones((3, 4)))
    merged = merge_span(embeds, span, torch.arange(8.0).reshape(2, 4))
    assert merged[0, 1].tolist() == [0, 1, 2, 3] and merged[0, 2].tolist() == [4, 5, 6, 7]
    assert merged[0, [0, 3, 4]].eq(0).all()
