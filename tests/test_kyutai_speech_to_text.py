"""Kyutai speech-to-text: the codec's codes summed into the text stream, exported as the
audio LMs with added audio are (audio encoder, text embedding, decoder step)."""

import copy

import pytest
import torch

from exportcheck import export_patches, untrained_model
from exportcheck.families.kyutai_speech_to_text import FirstWindowPadding
from exportcheck.models.untrained import randomize_zero_weights
from exportcheck.tasks import _audio_lm

pytestmark = pytest.mark.models


@pytest.fixture(scope="module")
def kyutai():
    return untrained_model("kyutai_speech_to_text", task="automatic-speech-recognition")


def _calls(m):
    modules = {c.name: c.module for c in m.components}

    def call(name, feeds):
        with torch.no_grad():
            return modules[name](**feeds)

    return call


def test_the_first_window_padding_gives_the_codes_of_the_codecs_own_streaming_cache(kyutai):
    codec = kyutai.model.codec_model
    audio = kyutai.components[0].input_sets[0]["input_values"]
    with torch.no_grad():
        # use_streaming without a cache: the codec builds its own, empty (generate's first
        # window), whose widths it reads from tensors
        own = codec.encode(audio, use_streaming=True).audio_codes
        ours = codec.encode(audio, padding_cache=FirstWindowPadding(codec)).audio_codes
        unpadded = codec.encode(audio).audio_codes  # no cache: also padded on the right
    assert torch.equal(ours, own)
    assert own.shape[1] == kyutai.config.num_codebooks
    assert unpadded.shape[-1] >= own.shape[-1]


def test_text_embedding_plus_frame_is_the_models_embedding_of_text_and_codes(kyutai):
    m = kyutai
    encoder, embed = m.components[0], m.components[1]
    audio = encoder.input_sets[0]["input_values"]
    batch = audio.shape[0]
    with torch.no_grad():
        frames = encoder.module(input_values=audio).reshape(batch, -1, m.config.hidden_size)
        codes = m.model.codec_model.encode(audio, use_streaming=True).audio_codes.transpose(1, 2)
        text = torch.randint(0, m.config.vocab_size, (batch, frames.shape[1]))
        # as prepare_inputs_for_generation lays them out: position 0 reads the audio BOS
        # code in every codebook, position p the codes of frame p - 1
        bos = torch.full_like(codes[:, :1], m.config.audio_bos_token_id)
        stacked = torch.cat([text[..., None], torch.cat([bos, codes], 1)], 2)
        expected = m.model.model.embed_tokens(stacked)
        got = embed.module(input_ids=text) + frames
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_the_codes_depend_on_the_audio(kyutai):
    # Mimi initialises its centroids to zero: every frame would take code 0
    codec = kyutai.model.codec_model
    audio = kyutai.components[0].input_sets[0]["input_values"]
    with torch.no_grad():
        codes = codec.encode(audio, use_streaming=True).audio_codes
    # the clip's frames take many codes (its 1 s of silence padding, one)
    assert len(codes[0, 0].unique()) > codes.shape[-1] // 4
    fresh = type(codec)(codec.config)
    layer = fresh.quantizer.semantic_residual_vector_quantizer.layers[0].codebook
    assert not bool(layer.embed_sum.any())
    changed = randomize_zero_weights(fresh, 0.02)
    assert sum(name.endswith("embed_sum") for name in changed) == kyutai.config.num_codebooks
    assert 0.9 < float(layer.embed_sum.std()) < 1.1  # the scale of latents, not of weights


def test_generation_through_the_graphs_equals_generate(kyutai):
    m = kyutai
    assert _audio_lm.added_audio(m.config)
    reference = _audio_lm.generate_eager(m)
    got = _audio_lm.generate(m, _calls(m), reference.tokens)
    for expected, step in zip(reference.logits, got.logits, strict=True):
        torch.testing.assert_close(step, expected, atol=1e-4, rtol=0)
    assert torch.equal(got.tokens, reference.tokens)
    # the two rows' clips differ, and so do their tokens
    assert not torch.equal(reference.tokens[0], reference.tokens[1])


def test_the_exported_encoder_takes_a_short_single_clip(kyutai):
    # the set traced has more than 25 frames in all; a single clip of under 2 s has fewer,
    # which torch.cdist's default mode put a guard on (mimi_codebook_matmul)
    encoder = kyutai.components[0]
    with export_patches(encoder.module, runtime="exported_program"), torch.no_grad():
        program = torch.export.export(
            encoder.module,
            (),
            kwargs=copy.deepcopy(encoder.input_sets[0]),
            dynamic_shapes=encoder.dynamic_shapes,
        )
        short = next(s for s in encoder.input_sets if s["input_values"].shape[0] == 1)
        assert short["input_values"].shape[-1] // 1920 <= 25
        torch.testing.assert_close(program.module()(**short), encoder.module(**short))
