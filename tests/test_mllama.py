"""Mllama (image-text-to-text): the vision model and projector exported as an image
encoder, the language model's steps (cross-attention layers reading the vision states,
their keys and values kept in the cache) as the decoder. Each test checks the
decomposition against the model's own forward or generate, with the processor's inputs
(int64 ``cross_attention_mask``), on images and prompts the validation's input sets do
not hold."""

import copy

import pytest
import torch

from exportcheck import untrained_model
from exportcheck.families.mllama import full_grid_ids, tile_inputs

pytestmark = pytest.mark.models

TASK = "image-text-to-text"


@pytest.fixture(scope="module")
def mllama():
    return untrained_model("mllama", task=TASK)


def _parts(m):
    return {c.name: c.module for c in m.components}


def _images(m, batch, seed):
    return tile_inputs(m.config, batch, torch.Generator().manual_seed(seed))


def _prompt(m, batch, length, seed):
    """Prompts as the documented ones start: the image token, then text tokens."""
    ids = torch.randint(1, 900, (batch, length), generator=torch.Generator().manual_seed(seed))
    ids[:, 0] = m.config.image_token_index
    return ids


def _cross_mask(images, length):
    """The processor's cross_attention_mask (int64) for prompts that start with the image:
    every token attends to the image's real tiles."""
    mask = images["aspect_ratio_mask"]
    return mask[:, None].expand(-1, length, -1, -1).clone()


def test_tiny_config_reads_the_image(mllama):
    text, vision = mllama.config.text_config, mllama.config.vision_config
    assert [i for i in text.cross_attention_layers if i < text.num_hidden_layers]
    assert max(vision.intermediate_layers_indices) < vision.num_hidden_layers
    assert full_grid_ids(vision)
    model = mllama.model.model
    gates = [p for n, p in model.named_parameters() if n.endswith("gate")]
    assert gates and all(bool(p.any()) for p in gates)


def test_first_step_is_the_model_forward(mllama):
    parts, model = _parts(mllama), mllama.model.model
    images, ids = _images(mllama, 3, 11), _prompt(mllama, 3, 5, 12)
    with torch.no_grad():
        states = parts["encoder"](**copy.deepcopy(images))
        got = parts["decoder_init"](decoder_input_ids=ids, encoder_hidden_states=states)
        want = model(input_ids=ids, **images, cross_attention_mask=_cross_mask(images, 5))
    torch.testing.assert_close(got["logits"], want.logits, atol=1e-5, rtol=1e-5)


def test_step_is_the_model_cached_step(mllama):
    """The decoder step on the view's cache equals the model's cached step on its own
    DynamicCache, which holds the vision keys and values and gets no pixels."""
    parts, model = _parts(mllama), mllama.model.model
    images, ids = _images(mllama, 2, 21), _prompt(mllama, 2, 7, 22)
    prefix, new = ids[:, :4], ids[:, 4:]
    with torch.no_grad():
        states = parts["encoder"](**copy.deepcopy(images))
        init = parts["decoder_init"](decoder_input_ids=prefix, encoder_hidden_states=states)
        got = parts["decoder"](
            decoder_input_ids=new, encoder_hidden_states=states, cache=init["cache"]
        )
        first = model(
            input_ids=prefix, **images, cross_attention_mask=_cross_mask(images, 4), use_cache=True
        )
        want = model(
            input_ids=new,
            cross_attention_mask=_cross_mask(images, 3),
            cache=first.cache,
            use_cache=True,
        )
    torch.testing.assert_close(got["logits"], want.logits, atol=1e-5, rtol=1e-5)
    view_cache = got["cache"]
    assert len(view_cache.cross_attention_cache.layers) == len(
        mllama.config.text_config.cross_attention_layers
    )
    # the cross-attention part keeps the vision length; the self-attention part grows
    for mine, theirs in zip(
        view_cache.cross_attention_cache.layers,
        [want.cache.layers[i] for i in mllama.config.text_config.cross_attention_layers],
        strict=True,
    ):
        torch.testing.assert_close(mine.keys, theirs.keys)
    assert view_cache.self_attention_cache.get_seq_length() == 7


def test_the_images_change_the_logits(mllama):
    parts = _parts(mllama)
    images, ids = _images(mllama, 2, 31), _prompt(mllama, 2, 4, 32)
    other = {k: v.flip(0) for k, v in images.items()}
    with torch.no_grad():
        a = parts["decoder_init"](
            decoder_input_ids=ids, encoder_hidden_states=parts["encoder"](**images)
        )
        b = parts["decoder_init"](
            decoder_input_ids=ids, encoder_hidden_states=parts["encoder"](**other)
        )
    assert float((a["logits"] - b["logits"]).abs().max()) > 1e-3


def test_graph_loop_matches_model_generate(mllama):
    """Greedy decoding with the graphs' modules (encoder once, first step on the image
    token, then one step per token) gives the tokens of the model's own generate, given
    the processor's inputs."""
    parts, model = _parts(mllama), mllama.model.model
    images, new_tokens = _images(mllama, 2, 41), 6
    start = torch.full((2, 1), mllama.config.image_token_index)
    with torch.no_grad():
        states = parts["encoder"](**copy.deepcopy(images))
        out = parts["decoder_init"](decoder_input_ids=start, encoder_hidden_states=states)
        tokens = [out["logits"][:, -1].argmax(-1)]
        for _ in range(new_tokens - 1):
            out = parts["decoder"](
                decoder_input_ids=tokens[-1][:, None],
                encoder_hidden_states=states,
                cache=out["cache"],
            )
            tokens.append(out["logits"][:, -1].argmax(-1))
        want = model.generate(
            input_ids=start,
            attention_mask=torch.ones_like(start),
            cross_attention_mask=_cross_mask(images, 1),
            **images,
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
            num_beams=1,
        )
    assert torch.equal(torch.stack(tokens, 1), want[:, 1:])
