"""RWKV: a recurrent state, one token per decode step; eager mixes batch rows there."""

from __future__ import annotations

from typing import Any

import torch

from ..patches import Patch
from . import Family, register

MODULE = "transformers.models.rwkv.modeling_rwkv"


def _rwkv_previous_token(self, hidden, saved):
    """The hidden state before each position, (batch, seq, hidden); ``saved`` is the
    layer's state slot (batch, hidden), the last token seen before ``hidden``."""
    if hidden.size(1) == 1:
        return saved.unsqueeze(1)  # the original omits this unsqueeze
    shifted = self.time_shift(hidden)
    shifted[:, 0] = saved
    return shifted


def _rwkv_shift(self, hidden, state, slot):
    if state is None:
        return self.time_shift(hidden)
    return _rwkv_previous_token(self, hidden, state[slot][:, :, self.layer_id])


def rwkv_attention_extract_key_value(self, hidden, state=None):
    """RwkvSelfAttention.extract_key_value with the previous token taken per batch row."""
    shifted = _rwkv_shift(self, hidden, state, 1)
    key = hidden * self.time_mix_key + shifted * (1 - self.time_mix_key)
    value = hidden * self.time_mix_value + shifted * (1 - self.time_mix_value)
    receptance = hidden * self.time_mix_receptance + shifted * (1 - self.time_mix_receptance)
    key, value = self.key(key), self.value(value)
    receptance = torch.sigmoid(self.receptance(receptance))
    if state is not None:
        state[1][:, :, self.layer_id] = hidden[:, -1]
    return receptance, key, value, state


def rwkv_feed_forward(self, hidden, state=None):
    """RwkvFeedForward.forward with the previous token taken per batch row."""
    shifted = _rwkv_shift(self, hidden, state, 0)
    key = hidden * self.time_mix_key + shifted * (1 - self.time_mix_key)
    receptance = hidden * self.time_mix_receptance + shifted * (1 - self.time_mix_receptance)
    value = self.value(torch.square(torch.relu(self.key(key))))
    receptance = torch.sigmoid(self.receptance(receptance))
    if state is not None:
        state[0][:, :, self.layer_id] = hidden[:, -1]
    return receptance * value, state


def _install_rwkv_one_token_shift(patcher: Any, model: Any) -> None:
    """Give each batch row its own previous token in RWKV's one-token decode step.

    Fixes a wrong result of eager transformers: rwkv with a state and one new token
    returns logits of shape (batch, batch, vocab) for batch > 1, and torch.export fails
    with ``Constraints violated (batch)``: RwkvSelfAttention.extract_key_value
    (transformers/models/rwkv/modeling_rwkv.py:250-251) and RwkvFeedForward.forward
    (:306-307) take the previous token as ``state[i][:, :, layer_id]``, of shape
    (batch, hidden), and mix it with ``hidden`` of shape (batch, 1, hidden): every row
    of the new token meets every row of the state. The replacements add the missing
    ``unsqueeze(1)``, which is what the several-token branch computes for its first
    token; everything else is the original code, so batch 1, several tokens and no
    state give the same numbers as before.

    Since it corrects eager itself, :func:`exportcheck.validate` also computes its
    eager reference with it (``corrects_eager``, see
    :func:`exportcheck.patches.eager_fixes`).

    Remove when: transformers unsqueezes the saved token in both one-token branches.
    """
    for owner, attribute, value in (
        ("RwkvSelfAttention", "extract_key_value", rwkv_attention_extract_key_value),
        ("RwkvFeedForward", "forward", rwkv_feed_forward),
    ):
        patcher.replace_in(MODULE, owner, attribute, value)


RWKV_ONE_TOKEN_SHIFT = Patch(
    name="rwkv_one_token_shift",
    fixes="eager logits of shape (batch, batch, vocab) for one new token and batch > 1; "
    "torch.export: Constraints violated (batch)",
    remove_when="transformers unsqueezes the saved token in both one-token branches",
    install=_install_rwkv_one_token_shift,
    model_types=("rwkv",),
    corrects_eager=True,
)


register(
    Family(
        name="rwkv",
        model_types=("rwkv",),
        one_token_decode={
            "rwkv": "the recurrence loops over the new tokens in Python: one token at a time is the "
            "decode step"
        },
        patches=(RWKV_ONE_TOKEN_SHIFT,),
    )
)
