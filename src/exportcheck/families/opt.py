"""OPT: position ids sliced by the number of cached tokens."""

from __future__ import annotations

from typing import Any

import torch

from ..patches import Patch
from . import Family, register


def _opt_decoder_forward(
    self,
    input_ids=None,
    attention_mask=None,
    cache=None,
    inputs_embeds=None,
    use_cache=None,
    position_ids=None,
    **kwargs,
):
    if position_ids is None and attention_mask is not None and cache is not None:
        seq_len = input_ids.shape[-1] if input_ids is not None else inputs_embeds.shape[1]
        past_seen_tokens = cache.get_seq_length()
        positions = torch.cumsum(attention_mask, dim=1)
        positions = (positions * attention_mask - 1).long()
        position_ids = positions.narrow(1, past_seen_tokens, seq_len)
    return _opt_decoder_forward.original(
        self,
        input_ids=input_ids,
        attention_mask=attention_mask,
        cache=cache,
        inputs_embeds=inputs_embeds,
        use_cache=use_cache,
        position_ids=position_ids,
        **kwargs,
    )


def _install_opt_position_ids(patcher: Any, model: Any) -> None:
    """Give OPTDecoder position ids as wide as the new tokens instead of ``mask_width - cached``.

    Fixes: the ExportedProgram of OPT rejects one new token:
    ``AssertionError: Guard failed: attention_mask.size()[1] + -1 * cache['key_cache'][0].size()[2] != 1``.
    OPTDecoder.forward (transformers/models/opt/modeling_opt.py:361) computes
    ``position_ids = position_ids[:, past_seen_tokens:]``: a width ``mask_length - cache_length``
    that is an expression of two symbols (the mask's length has a dimension of its own), and
    the contiguity check of that slice guards it ``!= 1`` (0/1 specialisation of a traced
    size of 3). The wrapper computes the same ids (cumsum of the mask, minus one, at the
    positions of the new tokens) with ``narrow(1, past_seen_tokens, seq_len)``, whose width is
    the seq_length symbol itself, and passes them as ``position_ids``; the decoder then skips
    its own computation. Identical values whenever the mask covers cache + new tokens, the only
    case where eager runs.

    Remove when: transformers slices the positions by the number of new tokens
    (``[:, -seq_len:]`` / narrow) or torch stops guarding the size of that slice.
    """
    patcher.replace_in(
        "transformers.models.opt.modeling_opt", "OPTDecoder", "forward", _opt_decoder_forward
    )


OPT_POSITION_IDS = Patch(
    name="opt_position_ids",
    fixes="AssertionError: Guard failed: attention_mask.size()[1] + -1 * "
    "cache['key_cache'][0].size()[2] != 1",
    remove_when="transformers slices the positions by the number of new tokens (``[:, "
    "-seq_len:]`` / narrow) or torch stops guarding the size of that slice",
    install=_install_opt_position_ids,
    model_types=("opt",),
)


register(
    Family(
        name="opt",
        model_types=("opt",),
        patches=(OPT_POSITION_IDS,),
    )
)
