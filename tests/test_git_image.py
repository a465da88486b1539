"""GIT (image-text-to-text): no placeholder token; the projected image rows are a prefix
of the decoder's sequence, attending to each other both ways, the text alone getting
position embeddings and LayerNorm. Checked against GitForCausalLM's own forward and
generate on images and prompts the validation does not use."""

import pytest
import torch

from exportcheck import untrained_model
from exportcheck.families.git import processor_prompt, processor_text, span_lm
from exportcheck.tasks._audio_lm import _cache_of
from exportcheck.tasks.image_text_to_text import image_span, merge_span
from exportcheck.tasks.text_generation import greedy_generate

pytestmark = pytest.mark.models

TASK = "image-text-to-text"


@pytest.fixture(scope="module")
def git():
    return untrained_model("git", task=TASK)


def _parts(m):
    return {c.name: c.module for c in m.components}


def _prompt(m, seed, text_length):
    generator = torch.Generator().manual_seed(seed)
    rows = m.model.git.encoder.layer[0].attention.self.image_patch_tokens
    vocab = m.config.vocab_size
    text = torch.randint(5, vocab, (2, text_length), generator=generator)
    side = m.config.vision_config.image_size
    pixels = torch.randn((2, 3, side, side), generator=generator)
    return rows, text, pixels


def test_the_prompt_is_a_span_before_the_processor_ids(git):
    rows = git.model.git.encoder.layer[0].attention.self.image_patch_tokens
    assert image_span(git.model) is processor_prompt
    text = torch.tensor([[10, 11, 12], [20, 21, 22]])
    feeds = processor_prompt(git.model, rows, text)
    bos = git.config.bos_token_id
    assert feeds["input_ids"][0, rows:].tolist() == [bos, 10, 11, 12]
    assert feeds["image_embeds_position_mask"][:, :rows].eq(1).all()
    assert int(feeds["image_embeds_position_mask"].sum()) == 2 * rows
    given = processor_text(git.model, feeds)
    assert given["input_ids"].tolist() == [[bos, 10, 11, 12], [bos, 20, 21, 22]]
    assert given["attention_mask"].eq(1).all() and set(given) == {"input_ids", "attention_mask"}
    with pytest.raises(ValueError, match="image_patch_tokens"):
        processor_prompt(git.model, rows - 1, text)


def test_the_merged_prefix_gives_the_forward_logits_on_a_padded_prompt(git):
    m = git
    rows, text, pixels = _prompt(m, 7, 6)
    feeds = processor_prompt(m.model, rows, text)
    ids, span = feeds["input_ids"], feeds["image_embeds_position_mask"]
    mask = feeds["attention_mask"].clone()
    mask[0, rows : rows + 2] = 0  # the first row left-padded by two tokens
    text_mask = mask[:, rows:]
    parts = _parts(m)
    with torch.no_grad():
        features = parts["vision_encoder"](pixel_values=pixels)
        merged = merge_span(parts["embed_tokens"](ids), span, features)
        got = span_lm(m.model)(
            inputs_embeds=merged, attention_mask=mask, image_embeds_position_mask=span
        ).logits
        # the text positions generate gives a left-padded prompt
        positions = (text_mask.cumsum(-1) - 1).clamp(min=0)
        expected = m.model(
            input_ids=ids[:, rows:],
            attention_mask=text_mask,
            pixel_values=pixels,
            position_ids=positions,
        ).logits
    assert got.shape == expected.shape
    seen = mask.bool()
    torch.testing.assert_close(got[seen], expected[seen], atol=1e-5, rtol=0)
    # the image reaches the text's logits
    with torch.no_grad():
        other = merge_span(
            parts["embed_tokens"](ids), span, parts["vision_encoder"](pixel_values=-pixels)
        )
        moved = span_lm(m.model)(
            inputs_embeds=other, attention_mask=mask, image_embeds_position_mask=span
        ).logits
    assert float((moved - got)[:, rows:][seen[:, rows:]].abs().max()) > 1e-3


def test_the_prefix_prefilled_in_one_call_then_steps_give_generate_logits(git):
    m = git
    rows, text, pixels = _prompt(m, 11, 9)
    feeds = processor_prompt(m.model, rows, text)
    ids, span = feeds["input_ids"], feeds["image_embeds_position_mask"]
    parts = _parts(m)
    given = processor_text(m.model, feeds)
    reference = greedy_generate(m.model, {**given, "pixel_values": pixels}, 4)
    lm = span_lm(m.model)
    with torch.no_grad():
        merged = merge_span(
            parts["embed_tokens"](ids), span, parts["vision_encoder"](pixel_values=pixels)
        )
        # one position the mask leaves out gives the cache, then the whole prompt
        first = lm(inputs_embeds=merged[:, :1], attention_mask=torch.ones_like(ids[:, :1]))
        seen = torch.cat([torch.zeros_like(ids[:, :1]), torch.ones_like(ids)], 1)
        out = lm(
            inputs_embeds=merged,
            attention_mask=seen,
            image_embeds_position_mask=span,
            cache=_cache_of(first),
        )
        logits = [out.logits[:, -1]]
        for t in range(3):
            token = reference.tokens[:, t : t + 1]
            seen = torch.cat([seen, torch.ones_like(token)], 1)
            out = lm(
                inputs_embeds=parts["embed_tokens"](token),
                attention_mask=seen,
                cache=_cache_of(out),
            )
            logits.append(out.logits[:, -1])
    for mine, theirs in zip(logits, reference.logits, strict=True):
        torch.testing.assert_close(mine.float(), theirs.float(), atol=1e-5, rtol=0)
