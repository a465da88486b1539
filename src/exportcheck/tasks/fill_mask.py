"""fill-mask: a masked LM, token ids and mask in, logits over the vocabulary out.

The model is built with ``AutoModelForMaskedLM`` (``MODEL_FOR_MASKED_LM_MAPPING_NAMES``)
and checked on right-padded batches of distinct shapes (:mod:`._encoder`).
"""

from __future__ import annotations

from . import register
from ._encoder import TextEncoder

__all__ = ["FillMask"]


class FillMask(TextEncoder):
    """Masked LMs: one graph, ids + mask -> logits."""

    name = "fill-mask"
    mapping = "MODEL_FOR_MASKED_LM_MAPPING_NAMES"
    auto_class = "AutoModelForMaskedLM"
    rank = 20
    output = "logits"


register(FillMask())
