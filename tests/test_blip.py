"""BLIP (image-text-to-text): an image captioner exported as an image encoder-decoder, the
vision model then the text decoder's steps with an EncoderDecoderCache. Each test checks
the decomposition against the model's own forward or generate, on images and prompts the
validation's input sets do not hold."""

import copy

import pytest
import torch

from exportcheck import untrained_model
from exportcheck.tasks import get_task

pytestmark = pytest.mark.models

TASK = "image-text-to-text"


@pytest.fixture(scope="module")
def blip():
    return untrained_model("blip", task=TASK)


def _parts(m):
    return {c.name: c.module for c in m.components}


def _images(m, batch, seed):
    side = m.config.vision_config.image_size
    return torch.randn((batch, 3, side, side), generator=torch.Generator().manual_seed(seed))


def _decode(m, pixels, prompt, new_tokens):
    """The graphs' loop, run eagerly: the encoder once, the first step on ``prompt``,
    then one step per greedy token with the cache the step before returned."""
    parts = _parts(m)
    with torch.no_grad():
        states = parts["encoder"](pixel_values=pixels)
        out = parts["decoder_init"](decoder_input_ids=prompt, encoder_hidden_states=states)
        logits = [out["logits"][:, -1]]
        for _ in range(new_tokens - 1):
            token = logits[-1].argmax(-1, keepdim=True)
            out = parts["decoder"](
                decoder_input_ids=token,
                encoder_hidden_states=states,
                cache=out["cache"],
                decoder_cache_mask=torch.ones((token.shape[0], prompt.shape[1] + len(logits) - 1)),
            )
            logits.append(out["logits"][:, -1])
    return torch.stack([step.argmax(-1) for step in logits], 1), logits


def test_blip_is_built_as_an_image_encoder_decoder(blip):
    from transformers import BlipForConditionalGeneration
    from transformers.cache_utils import EncoderDecoderCache

    assert [c.name for c in blip.components] == ["encoder", "decoder_init", "decoder"]
    assert isinstance(blip.model.model, BlipForConditionalGeneration)
    # what another exporter is given (exportcheck peer): the model, not the view
    assert blip.model.viewed_model is blip.model.model
    assert not blip.config.is_encoder_decoder
    assert blip.model.get_encoder() is blip.model.model.vision_model
    encoder = blip.components[0]
    side = blip.config.vision_config.image_size
    # the processor resizes every image to the vision config's image_size
    assert encoder.input_sets[0]["pixel_values"].shape[1:] == (3, side, side)
    step = blip.components[2].input_sets[0]
    assert isinstance(step["cache"], EncoderDecoderCache)
    assert any("image encoder-decoder" in note for note in blip.notes)


def test_the_graphs_give_the_logits_of_the_models_forward(blip):
    # BlipForConditionalGeneration.forward: the vision model's last hidden states, the
    # text decoder over the ids cross-attending to them
    pixels = _images(blip, 3, 77)
    ids = torch.randint(3, 1000, (3, 6), generator=torch.Generator().manual_seed(78))
    parts = _parts(blip)
    with torch.no_grad():
        expected = blip.model.model(pixel_values=pixels, input_ids=ids).logits
        states = parts["encoder"](pixel_values=pixels)
        prefill = parts["decoder_init"](decoder_input_ids=ids[:, :4], encoder_hidden_states=states)
        step = parts["decoder"](
            decoder_input_ids=ids[:, 4:],
            encoder_hidden_states=states,
            cache=copy.deepcopy(prefill["cache"]),
            decoder_cache_mask=torch.ones((3, 4), dtype=torch.int64),
        )
        # another image changes the logits: the decoder reads the image
        other = blip.model.model(pixel_values=pixels.flip(0), input_ids=ids).logits
    torch.testing.assert_close(prefill["logits"], expected[:, :4], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(step["logits"], expected[:, 4:], atol=1e-5, rtol=1e-5)
    assert float((other - expected).abs().max()) > 1e-3


def test_the_unmasked_image_states_equal_generates_mask_of_ones(blip):
    # generate gives the text decoder encoder_attention_mask of ones over the image
    # states; the graphs give none (images of one resolution have no padding)
    pixels = _images(blip, 2, 79)
    ids = torch.randint(3, 1000, (2, 5), generator=torch.Generator().manual_seed(80))
    decoder = blip.model.model.text_decoder
    with torch.no_grad():
        states = blip.model.model.vision_model(pixel_values=pixels).last_hidden_state
        ones = torch.ones(states.shape[:2], dtype=torch.int64)
        masked = decoder(input_ids=ids, encoder_hidden_states=states, encoder_attention_mask=ones)
        unmasked = decoder(input_ids=ids, encoder_hidden_states=states)
    torch.testing.assert_close(unmasked.logits, masked.logits, atol=0, rtol=0)


def test_the_loop_from_bos_is_the_models_generate_of_an_image(blip):
    # the processor given only images returns pixel_values; generate then starts the
    # text decoder from bos_token_id alone, the view's decoder_start_token_id
    bos = blip.config.text_config.bos_token_id
    assert blip.model.generation_config.decoder_start_token_id == bos
    pixels = _images(blip, 3, 81)
    out = blip.model.model.generate(
        pixel_values=pixels, max_new_tokens=6, do_sample=False, num_beams=1
    )
    assert out[:, 0].eq(bos).all() and out.shape[1] == 1 + 6
    tokens, _ = _decode(blip, pixels, torch.full((3, 1), bos), 6)
    assert torch.equal(tokens, out[:, 1:])


def test_a_processor_prompt_is_decoded_as_generate_decodes_it(blip):
    # a prompt as the processor writes it: [CLS] text [SEP]; generate writes bos over
    # the first id and drops the last one
    bos = blip.config.text_config.bos_token_id
    cls, sep = 101, blip.config.text_config.sep_token_id
    text = torch.randint(200, 1000, (2, 3), generator=torch.Generator().manual_seed(82))
    ids = torch.cat([torch.full((2, 1), cls), text, torch.full((2, 1), sep)], 1)
    pixels = _images(blip, 2, 83)
    out = blip.model.model.generate(
        pixel_values=pixels, input_ids=ids.clone(), max_new_tokens=5, do_sample=False
    )
    prompt = torch.cat([torch.full((2, 1), bos), text], 1)
    assert torch.equal(out[:, :4], prompt)
    tokens, _ = _decode(blip, pixels, prompt, 5)
    assert torch.equal(tokens, out[:, 4:])


def test_the_tasks_loop_matches_eager_generate(blip):
    task = get_task(TASK)
    assert all(row["ok"] for row in task.check_eager(blip, 1e-4))
    parts = _parts(blip)

    def call(name, feeds):
        with torch.no_grad():
            return parts[name](**copy.deepcopy(feeds))

    eager = task.generate_eager(blip)
    got = task.generate(blip, call, eager.tokens)
    assert torch.equal(got.tokens, eager.tokens)
    for a, b in zip(got.logits, eager.logits, strict=True):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
