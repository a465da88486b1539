"""IDEFICS (image-text-to-text): the vision model exported as an image encoder, the
language model's steps (gated cross-attention layers reading the vision states again at
every step, the self-attention layers' keys and values in the cache) as the decoder.
Each test checks the decomposition against the model's own forward or generate, with
the processor's inputs (int64 ``image_attention_mask``), on images and prompts the
validation's input sets do not hold."""

import copy

import pytest
import torch
import transformers
from transformers.cache_utils import DynamicCache
from transformers.models.idefics import processing_idefics

from exportcheck import untrained_model
from exportcheck.families.idefics import as_encoder_decoder, image_inputs, image_token

pytestmark = pytest.mark.models

TASK = "image-text-to-text"


@pytest.fixture(scope="module")
def idefics():
    return untrained_model("idefics", task=TASK)


def _parts(m):
    return {c.name: c.module for c in m.components}


def _images(m, batch, seed):
    return image_inputs(m.config, batch, torch.Generator().manual_seed(seed))


def _prompt(m, batch, length, seed):
    """Prompts that start with the image token, then text tokens (none of them the
    end-of-sequence token, after which the processor lets no token see the image)."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, m.config.vocab_size, (batch, length), generator=generator)
    ids[:, 0] = image_token(m.config)
    return ids


def _image_mask(ids, eos):
    """The processor's image_attention_mask for ``ids`` (its own functions, given a
    tokenizer that knows the image and end-of-sequence tokens): int64, one column per
    image."""

    class Tokens:
        eos_token_id = eos

        def convert_tokens_to_ids(self, token):
            assert token == processing_idefics.IMAGE_TOKEN
            return int(ids[0, 0])

    incremental, _ = processing_idefics.image_attention_mask_for_packed_input_ids(
        ids.clone(), Tokens(), "pt"
    )
    return processing_idefics.incremental_to_binary_attention_mask(incremental, "pt", num_classes=1)


def test_tiny_config_reads_the_image(idefics):
    config, model = idefics.config, idefics.model.model
    assert config.additional_vocab_size >= 2
    gates = [p for n, p in model.named_parameters() if n.rsplit(".", 1)[-1].startswith("alpha_")]
    assert len(gates) == 2 * config.num_hidden_layers // config.cross_layer_interval
    assert all(bool(p.any()) for p in gates)
    parts = _parts(idefics)
    images, ids = _images(idefics, 2, 31), _prompt(idefics, 2, 4, 32)
    other = {k: v.flip(0) for k, v in images.items()}
    with torch.no_grad():
        a = parts["decoder_init"](ids, parts["encoder"](**images))["logits"]
        b = parts["decoder_init"](ids, parts["encoder"](**other))["logits"]
    assert float((a - b).abs().max()) > 1e-2


def test_the_mask_the_view_gives_is_the_processors(idefics):
    ids = _prompt(idefics, 3, 6, 5)
    mask = _image_mask(ids, idefics.config.eos_token_id)
    assert mask.dtype == torch.int64 and mask.shape == (3, 6, 1)
    assert bool((mask == 1).all())
    # the processor's mask is not always ones: after an end-of-sequence token no token
    # sees the image
    ids[:, 3] = idefics.config.eos_token_id
    assert not bool(_image_mask(ids, idefics.config.eos_token_id)[:, 4:].any())


def test_first_step_is_the_model_forward(idefics):
    parts, model = _parts(idefics), idefics.model.model
    images, ids = _images(idefics, 3, 11), _prompt(idefics, 3, 5, 12)
    with torch.no_grad():
        states = parts["encoder"](**copy.deepcopy(images))
        got = parts["decoder_init"](decoder_input_ids=ids, encoder_hidden_states=states)
        want = model(
            input_ids=ids,
            **images,
            image_attention_mask=_image_mask(ids, model.config.eos_token_id),
        )
    torch.testing.assert_close(got["logits"], want.logits, atol=1e-5, rtol=1e-5)


def test_step_is_the_model_cached_step(idefics):
    """The decoder step on the view's cache equals the model's cached step as generate
    makes it: the vision states of the first step handed back as
    image_encoder_embeddings, the mask's last row for the new tokens."""
    parts, model = _parts(idefics), idefics.model.model
    images, ids = _images(idefics, 2, 21), _prompt(idefics, 2, 7, 22)
    prefix, new = ids[:, :4], ids[:, 4:]
    mask = _image_mask(prefix, model.config.eos_token_id)
    with torch.no_grad():
        states = parts["encoder"](**copy.deepcopy(images))
        init = parts["decoder_init"](decoder_input_ids=prefix, encoder_hidden_states=states)
        got = parts["decoder"](
            decoder_input_ids=new, encoder_hidden_states=states, cache=init["cache"]
        )
        first = model(input_ids=prefix, **images, image_attention_mask=mask, use_cache=True)
        want = model(
            input_ids=new,
            image_encoder_embeddings=first.image_outputs.last_hidden_state,
            image_attention_mask=mask[:, -1:].expand(-1, new.shape[1], -1),
            cache=first.cache,
            use_cache=True,
        )
    torch.testing.assert_close(got["logits"], want.logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(states, first.image_outputs.last_hidden_state)
    assert got["cache"].self_attention_cache.get_seq_length() == 7
    assert len(got["cache"].cross_attention_cache.layers) == 0


def test_cache_split_and_merge_round_trip(idefics):
    view = idefics.model
    layers = idefics.config.num_hidden_layers
    cache = DynamicCache()
    tensors = [(torch.randn(2, 4, 3, 16), torch.randn(2, 4, 3, 16)) for _ in range(layers)]
    for i, (k, v) in enumerate(tensors):
        cache.update(k, v, i)
    split = view.to_view_cache(cache)
    assert len(split.self_attention_cache.layers) == layers
    assert len(split.cross_attention_cache.layers) == 0
    back = view.to_model_cache(split)
    assert isinstance(back, DynamicCache) and len(back.layers) == layers
    for layer, (k, v) in zip(back.layers, tensors, strict=True):
        assert torch.equal(layer.keys, k) and torch.equal(layer.values, v)


def test_graph_loop_matches_model_generate(idefics):
    """Greedy decoding with the graphs' modules (encoder once, first step on the image
    token, then one step per token) gives the tokens of the model's own generate, given
    the processor's inputs; the two images give two different continuations."""
    parts, model = _parts(idefics), idefics.model.model
    images, new_tokens = _images(idefics, 2, 41), 6
    start = torch.full((2, 1), image_token(idefics.config))
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
            image_attention_mask=_image_mask(start, model.config.eos_token_id),
            **images,
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
            num_beams=1,
        )
    got = torch.stack(tokens, 1)
    assert torch.equal(got, want[:, 1:])
    assert not torch.equal(got[0], got[1])


def test_view_with_the_resampler_is_the_model_forward(idefics):
    """With the perceiver resampler of the released checkpoints (the tiny config keeps
    the default without it), the view's steps still equal the model's forward: the
    decoder reruns the resampler on the vision states, as generate does."""
    config = copy.deepcopy(idefics.config)
    config.use_resampler = True
    config.perceiver_config.resampler_depth = 1
    config.perceiver_config.resampler_n_latents = 4
    torch.manual_seed(0)
    model = transformers.IdeficsForVisionText2Text(config).eval()
    view = as_encoder_decoder(model)
    images, ids = _images(idefics, 2, 51), _prompt(idefics, 2, 5, 52)
    mask = _image_mask(ids, config.eos_token_id)
    with torch.no_grad():
        states = view.get_encoder()(**images)
        first = view(encoder_outputs=states, decoder_input_ids=ids[:, :3])
        got = view(encoder_outputs=states, decoder_input_ids=ids[:, 3:], cache=first.cache)
        want = model(input_ids=ids, **images, image_attention_mask=mask)
    torch.testing.assert_close(first.logits, want.logits[:, :3], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got.logits, want.logits[:, 3:], atol=1e-5, rtol=1e-5)
