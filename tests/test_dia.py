"""Dia in the speech task: text token ids into the encoder, decoder ids of one id per
audio codebook, and a generation loop that feeds and picks as Dia's generate does (the
delay pattern of DiaProcessor's prompt, its EOS logits processors)."""

import pytest
import torch

from exportcheck import untrained_model
from exportcheck.families.dia import delay_feed, eos_processors, processor_prompt
from exportcheck.tasks import get_task

pytestmark = pytest.mark.models

TASK = "automatic-speech-recognition"


@pytest.fixture(scope="module")
def dia():
    return untrained_model("dia", task=TASK)


def test_the_encoder_takes_text_ids_and_the_decoder_one_id_per_codebook(dia):
    channels = dia.config.decoder_config.num_channels
    encoder, init, step = dia.components
    for feeds in encoder.input_sets:
        assert set(feeds) == {"input_ids", "attention_mask"}
        assert int(feeds["input_ids"].max()) < dia.config.encoder_config.vocab_size
    # right-padded rows in the padded sets, as a tokenizer pads a batch
    assert (encoder.input_sets[4]["attention_mask"] == 0).any()
    for feeds in [*init.input_sets, *step.input_sets]:
        ids = feeds["decoder_input_ids"]
        assert ids.dim() == 3 and ids.shape[-1] == channels
    with torch.no_grad():
        logits = step.module(**step.input_sets[0])["logits"]
    batch, new = step.input_sets[0]["decoder_input_ids"].shape[:2]
    assert logits.shape[:2] == (batch * channels, new)
    assert any("as text2text-generation builds them" in n for n in dia.notes)


def test_the_processor_prompt_holds_the_start_token_up_to_each_codebooks_delay(dia):
    decoder = dia.config.decoder_config
    delays = dia.config.delay_pattern
    prompt = processor_prompt(dia.model, 2)
    ids = prompt["decoder_input_ids"]
    assert ids.shape == (2, 1 + max(delays), len(delays))
    assert prompt["decoder_attention_mask"].shape == ids.shape[:2]
    for channel, delay in enumerate(delays):
        column = ids[:, :, channel]
        assert (column[:, : delay + 1] == decoder.bos_token_id).all()
        assert (column[:, delay + 1 :] == decoder.pad_token_id).all()


def test_the_feed_cuts_the_prompt_and_forces_the_start_token_until_each_delay_ends(dia):
    decoder = dia.config.decoder_config
    delays = dia.config.delay_pattern
    prompt = processor_prompt(dia.model, 2)["decoder_input_ids"]
    steps = max(delays) + 2
    # the picks as generate holds them: rows batch x channels
    forced = torch.randint(0, decoder.eos_token_id, (2 * len(delays), steps))
    first, fed = delay_feed(dia.model, prompt, forced, {})
    assert first.shape == (2, 1, len(delays)) and (first == decoder.bos_token_id).all()
    assert fed.shape == (2, steps, len(delays))
    for b in range(2):
        for channel, delay in enumerate(delays):
            for t in range(steps):
                # position t + 1 of the sequence: the start token up to the delay
                want = (
                    decoder.bos_token_id if t + 1 <= delay else forced[b * len(delays) + channel, t]
                )
                assert int(fed[b, t, channel]) == int(want)


def test_the_eos_processors_keep_special_ids_out_of_the_picks(dia):
    decoder = dia.config.decoder_config
    channels = decoder.num_channels
    process = eos_processors(dia.model, {}, 9)
    logits = torch.zeros((2 * channels, decoder.vocab_size))
    logits[:, 7] = 1.0
    logits[:, decoder.pad_token_id] = 5.0  # above the end token: never picked
    logits[channels, decoder.eos_token_id] = 3.0  # row 1's codebook 0 ends
    logits[channels + 1, decoder.eos_token_id] = 3.0  # another codebook may not
    ids = torch.full((2, 1, channels), decoder.bos_token_id)
    picks = process(ids, logits.clone()).argmax(-1)
    assert int(picks[channels]) == decoder.eos_token_id
    others = [i for i in range(2 * channels) if i != channels]
    assert picks[others].tolist() == [7] * len(others)
    # the plain argmax would have picked the padding token everywhere
    assert (logits.argmax(-1) == decoder.pad_token_id).all()


def test_the_step_by_step_loop_equals_dias_generate(dia):
    task = get_task(TASK)
    reference = task.generate_eager(dia)
    channels = dia.config.decoder_config.num_channels
    assert reference.tokens.shape == (2 * channels, task.new_tokens)
    # no special id picked, as Dia's processors keep them out
    assert int(reference.tokens.max()) < dia.config.decoder_config.eos_token_id

    def call(name, feeds):
        return next(c.module for c in dia.components if c.name == name)(**feeds)

    with torch.no_grad():
        loop = task.generate(dia, call, reference.tokens)
    assert torch.equal(loop.tokens, reference.tokens)
    for got, want in zip(loop.logits, reference.logits, strict=True):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    assert "decoder prompt as generate feeds it" in loop.prefill


def test_the_loop_picks_as_generate_where_the_plain_argmax_is_a_special_id():
    m = untrained_model("dia", task=TASK)
    task = get_task(TASK)
    decoder = m.config.decoder_config
    vocab, channels = decoder.vocab_size, decoder.num_channels
    first = task.generate_eager(m)
    # codebook 1's padding token made three times as likely as the first pick of row 0
    weight = m.model.logits_dense.weight
    with torch.no_grad():
        weight[vocab + decoder.pad_token_id] = 3 * weight[vocab + int(first.tokens[1, 0])]
    reference = task.generate_eager(m)
    raw = torch.stack([step.argmax(-1) for step in reference.logits], 1)
    assert int(raw[1, 0]) == decoder.pad_token_id
    assert int(reference.tokens.max()) < decoder.eos_token_id

    def call(name, feeds):
        return next(c.module for c in m.components if c.name == name)(**feeds)

    with torch.no_grad():
        loop = task.generate(m, call, reference.tokens)
    assert torch.equal(loop.tokens, reference.tokens)
    assert loop.tokens.shape == (2 * channels, task.new_tokens)
