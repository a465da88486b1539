"""feature-extraction: a text encoder, token ids and mask in, hidden states out.

The model is built with ``AutoModelForTextEncoding``
(``MODEL_FOR_TEXT_ENCODING_MAPPING_NAMES``: encoders, and the encoder half of T5-like
models) and checked on right-padded batches of distinct shapes (:mod:`._encoder`).
"""

from __future__ import annotations

from . import register
from ._encoder import TextEncoder

__all__ = ["FeatureExtraction"]


class FeatureExtraction(TextEncoder):
    """Text encoders: one graph, ids + mask -> hidden states."""

    name = "feature-extraction"
    mapping = "MODEL_FOR_TEXT_ENCODING_MAPPING_NAMES"
    auto_class = "AutoModelForTextEncoding"
    rank = 30
    output = "last_hidden_state"


register(FeatureExtraction())
