"""Dia: text to speech, in the speech sequence-to-sequence mapping.

Its encoder embeds text token ids (``DiaEncoder.forward``,
transformers/models/dia/modeling_dia.py:452), so the speech task gives it the text
encoder side of text2text-generation. Its decoder takes one id per audio codebook at each
position, ``(batch, seq, channels)`` (:583), and returns logits ``(batch x channels, seq,
vocab)`` (:833). Its ``generate`` is the greedy loop of the exported steps with three
differences said here: the decoder prompt DiaProcessor builds (a delay pattern), the ids
forced back to that pattern before each step, and two EOS logits processors it always
applies.
"""

from __future__ import annotations

from typing import Any

from . import Family, register


def codebooks(config: Any) -> int:
    """The ids per decoder position: one per audio codebook (``num_channels``)."""
    return int(config.decoder_config.num_channels)


def greedy_settings(model: Any) -> dict[str, Any]:
    """Classifier-free guidance off: with ``guidance_scale`` unset Dia's ``generate``
    neither doubles the batch with unconditioned (zero) text nor mixes two logits per row
    (generation_dia.py:137, :154 and :243); every other processor is off already."""
    return {"guidance_scale": None}


def processor_prompt(model: Any, batch: int) -> dict[str, Any]:
    """The decoder inputs ``DiaProcessor.__call__`` returns for text without audio
    (processing_dia.py:183-223): one position of the start token per codebook, laid out
    by the delay pattern over ``1 + max(delay_pattern)`` positions (codebook c holds the
    start token up to its delay, the padding token after it), and a mask of ones. The
    processor's own static functions lay it out; its tokenizers are not needed."""
    import torch
    from transformers import DiaProcessor

    config = model.config
    delays = list(config.delay_pattern)
    bos, pad = config.decoder_config.bos_token_id, config.decoder_config.pad_token_id
    length, channels = 1 + max(delays), len(delays)
    audio = torch.full((batch, length, channels), pad, dtype=torch.long)
    audio[:, :1] = bos
    indices = DiaProcessor.build_indices(
        bsz=batch, seq_len=length, num_channels=channels, delay_pattern=delays
    )
    ids = DiaProcessor.apply_audio_delay(audio, pad, bos, indices).long()
    return {
        "decoder_input_ids": ids,
        "decoder_attention_mask": torch.ones((batch, length), dtype=torch.long),
    }


def delay_feed(model: Any, prompt: Any, forced: Any, settings: dict[str, Any]) -> Any:
    """The decoder prompt and the new tokens as Dia's ``generate`` feeds them: the
    prompt cut before its first padding position in codebook 0 (generation_dia.py:201),
    the new tokens (rows ``batch x channels`` as the logits) laid out ``(batch, steps,
    channels)``, and every position the prompt fills with another token than padding
    overwritten by it (``apply_delay_mask``, :231 and :253): codebook c is fed the start
    token up to its delay, whatever was picked there."""
    import torch

    pad = model.config.decoder_config.pad_token_id
    channels = prompt.shape[-1]
    valid = prompt.shape[1] - int((prompt[:, :, 0] == pad).sum(-1).max())
    new = forced.reshape(prompt.shape[0], channels, -1).transpose(1, 2)
    whole = torch.cat([prompt[:, :valid], new], 1).clone()
    whole = model.apply_delay_mask(whole, pad, prompt)
    return whole[:, :valid], whole[:, valid:]


def eos_processors(model: Any, settings: dict[str, Any], max_length: int) -> Any:
    """The logits processors Dia's ``generate`` adds whatever its settings
    (generation_dia.py:71 and :105): only codebook 0 may end, and no codebook may pick the
    special ids above its end token (DiaEOSChannelFilterLogitsProcessor); once codebook 0
    ends, each other one is forced to end after its delay
    (DiaEOSDelayPatternLogitsProcessor, stateful: a fresh one per generation). The
    callable takes the ids fed so far ``(batch, seq, channels)`` and a step's logits."""
    from transformers.generation.logits_process import (
        DiaEOSChannelFilterLogitsProcessor,
        DiaEOSDelayPatternLogitsProcessor,
        LogitsProcessorList,
    )

    config = model.config
    eos = config.decoder_config.eos_token_id
    processors = LogitsProcessorList(
        [
            DiaEOSChannelFilterLogitsProcessor(
                num_channels=len(config.delay_pattern), eos_token_id=eos
            ),
            DiaEOSDelayPatternLogitsProcessor(
                delay_pattern=config.delay_pattern,
                eos_token_id=eos,
                max_generation_len=max_length,
                device="cpu",
            ),
        ]
    )

    def process(ids: Any, logits: Any) -> Any:
        # generate holds the ids as (batch x channels, seq) (generation_dia.py:401)
        flat = ids.transpose(1, 2).reshape(-1, ids.shape[1])
        return processors(flat, logits)

    return process


register(
    Family(
        name="dia",
        model_types=("dia",),
        config_fixes={
            "dia": (
                {"decoder_config.cross_hidden_size": 64},
                "the decoder's cross-attention projects the encoder's states "
                "(modeling_dia.py:339), so its input width is the encoder's hidden size "
                "(1024 for both in nari-labs/Dia-1.6B), shrunk to 64 with it",
            ),
        },
        input_layouts={
            "dia": (
                {"decoder_channels": codebooks},
                "one audio codebook id per channel (DiaDecoder.forward, "
                "transformers/models/dia/modeling_dia.py:583); the logits are (batch x "
                "channels, seq, vocab) (:833)",
            ),
        },
        generation_inputs={
            "dia": (
                None,
                greedy_settings,
                delay_feed,
                "guidance_scale unset (no classifier-free guidance: generate would double "
                "the batch with unconditioned text), and the ids as Dia's generate feeds "
                "them: the processor's delay-pattern prompt cut to its first position, "
                "then each codebook forced to the start token up to its delay",
            ),
        },
        decoder_prompts={
            "dia": (
                processor_prompt,
                "generate is given the delay-pattern prompt DiaProcessor builds for text "
                "(without it, it warns and generates without delays, generation_dia.py:181)",
            ),
        },
        logits_processors={
            "dia": (
                eos_processors,
                "its generate always applies two EOS processors (generation_dia.py:71, "
                ":105) that keep special ids out of the picks",
            ),
        },
    )
)
