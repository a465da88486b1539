"""text2text-generation: encoder-decoder LMs exported as encoder, first step, decoder step.

The model is built with ``AutoModelForSeq2SeqLM``
(``MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES``); the encoder takes right-padded token
ids and mask. See :mod:`._seq2seq` for the three graphs, their input sets and the
generation loop.
"""

from __future__ import annotations

from . import register
from ._seq2seq import Seq2Seq

__all__ = ["Text2TextGeneration"]


class Text2TextGeneration(Seq2Seq):
    """Encoder-decoder LMs: encoder, first decoder step and decoder step with cache."""

    name = "text2text-generation"
    mapping = "MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES"
    auto_class = "AutoModelForSeq2SeqLM"
    rank = 10
    status_intro = (
        "Every encoder-decoder LM of the installed transformers "
        "(``MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES``), built untrained from a tiny "
        "config and exported as three graphs, as a runtime drives them: the encoder, the "
        "first decoder step (no cache in, an ``EncoderDecoderCache`` out) and the decoder "
        "step with that cache. Each graph runs on seven input sets of distinct shapes "
        "(two with right-padded encoder inputs, one at the declared upper bounds) against "
        "eager PyTorch; the decoder step is first checked against a full decoder forward. "
        "Then 8 tokens are generated greedily through each runtime (encoder once, each "
        "step's cache fed back) and compared with eager ``generate(do_sample=False)``."
    )


register(Text2TextGeneration())
