"""GLM-5 Next: a sparse-attention indexer that scores pools of keys, whose count export
specializes."""

from __future__ import annotations

from typing import Any

import torch

from ..patches import Patch
from ..patches.core import passthrough
from . import Family, register
from ._blocks import size_oblivious

MODULE = "transformers.models.glm5_next.modeling_glm5_next"


def glm5_next_pooled_states(self, *args, **kwargs):
    """Glm5NextTextIndexer.get_pooled_states, traced without guards on the pool count."""
    if not torch.compiler.is_exporting():
        return passthrough(glm5_next_pooled_states.original, self, *args, **kwargs)
    with size_oblivious():
        return glm5_next_pooled_states.original(self, *args, **kwargs)


def _install_glm5_next_pool_count(patcher: Any, model: Any) -> None:
    """Keep the indexer's pool count symbolic, one pool included.

    Fixes: the exported decoder step of glm5_next (image-text-to-text) refuses a call whose
    cached and new positions fit in one pool: ``Guard failed: (15 + inputs_embeds.size()[1]
    + cache['indexer_keys'][1].size()[1]) // 16 != 1``. The indexer groups the keys into
    ``ceil(length / index_kpool)`` pools (Glm5NextTextIndexer.get_pooled_states,
    transformers/models/glm5_next/modeling_glm5_next.py:967-983) and lays their offsets out
    as ``arange(pools * kpool).view(1, pools, kpool)``; the traced set has several pools, and
    torch asks whether a size is 1 when it computes the view's strides, which becomes a
    guard that holds for several pools only.

    The method runs unchanged, traced with torch's size-oblivious reasoning, so that one
    pool and several are the same graph: the same operations on the same values.

    Remove when: torch.export traces a dimension computed as a ceiling division without
    specializing its value 1.
    """
    patcher.replace_in(MODULE, "Glm5NextTextIndexer", "get_pooled_states", glm5_next_pooled_states)


GLM5_NEXT_POOL_COUNT = Patch(
    name="glm5_next_pool_count",
    fixes="Guard failed: ... // 16 != 1",
    remove_when="torch.export traces a dimension computed as a ceiling division without "
    "specializing its value 1",
    install=_install_glm5_next_pool_count,
    model_types=("glm5_next",),
)

register(Family(name="glm5_next", model_types=("glm5_next",), patches=(GLM5_NEXT_POOL_COUNT,)))
