"""LongT5: an encoder whose local attention works on blocks of ``local_radius + 1`` tokens."""

from __future__ import annotations

import sys
from typing import Any

import torch

from ..patches import Patch
from ..patches.core import passthrough
from . import Family, register
from ._blocks import first, size_oblivious, split_blocks

MODULE = "transformers.models.longt5.modeling_longt5"


def longt5_split_into_blocks(x, block_len, dim):
    """_split_into_blocks: zeros up to ``count * block_len``, then ``(count, block_len)``."""
    if any(type(size) is int and size == 0 for size in x.shape):  # an empty input
        return passthrough(longt5_split_into_blocks.original, x, block_len, dim)
    return split_blocks(x, block_len, dim)


def longt5_local_mask(attention_mask, block_len, device):
    """_get_local_attention_mask, traced without guards on the block count."""
    if not torch.compiler.is_exporting():
        return passthrough(longt5_local_mask.original, attention_mask, block_len, device)
    with size_oblivious():
        return longt5_local_mask.original(attention_mask, block_len, device)


def longt5_local_attention(
    self, hidden_states, mask=None, position_bias=None, output_attentions=False
):
    """LongT5LocalAttention.forward (eval): blocks of zero-padded states, each query
    block against the block before, itself and the block after, the padding dropped by
    index."""
    if self.training:
        return passthrough(
            longt5_local_attention.original, self, hidden_states, mask=mask,
            position_bias=position_bias, output_attentions=output_attentions,
        )  # fmt: skip
    mod = sys.modules[MODULE]
    batch, length = hidden_states.shape[:2]
    block = self.block_len

    def blocks(states):  # (batch, length, inner) -> (batch, count, block, heads, head dim)
        return split_blocks(states.view(batch, -1, self.n_heads, self.key_value_proj_dim), block, 1)

    def around(states):  # each block with the block before and the block after
        return mod._concatenate_3_blocks(blocks(states), block_dim=1, sequence_dim=2)

    with size_oblivious():
        query = blocks(self.q(hidden_states))
        key, value = around(self.k(hidden_states)), around(self.v(hidden_states))
        # (batch, count, heads, block, 3 * block)
        scores = torch.einsum("...qhd,...khd->...hqk", query, key)
        if position_bias is None:
            if self.has_relative_attention_bias:
                position_bias = self.compute_bias(block)
            else:
                shape = (1, 1, self.n_heads, block, 3 * block)
                position_bias = torch.zeros(shape, device=scores.device, dtype=scores.dtype)
            if mask is not None:
                blocked = torch.where(mask > 0, 0.0, -1e10)
                position_bias = position_bias + blocked.transpose(1, 2)
        scores = scores + position_bias
        weights = torch.nn.functional.softmax(scores.float(), dim=-1).type_as(scores)
        out = torch.einsum("...hqk,...khd->...qhd", weights.type(value.dtype), value)
        out = out.contiguous().view(batch, -1, self.inner_dim)
        out = self.o(first(out, length, 1))
    outputs = (out, position_bias)
    return (*outputs, weights) if output_attentions else outputs


def _install_longt5_local_blocks(patcher: Any, model: Any) -> None:
    """Keep the encoder length of LongT5's local attention symbolic.

    Fixes: torch.export of longt5's encoder (text2text-generation): ``Constraints violated
    (encoder_length)! ... Not all values of encoder_length ... satisfy the generated guard
    (L['input_ids'].size()[1] % 128) != 0``, and a dozen guards on the padded length: the
    local attention (LongT5LocalAttention.forward,
    transformers/models/longt5/modeling_longt5.py:632-703) and its mask
    (_get_local_attention_mask, :164) split the sequence into blocks of ``local_radius +
    1`` tokens with _split_into_blocks (:106), which pads only ``if length % block_len !=
    0`` (:111) by ``-length % block_len`` (_pad_to_multiple, :92), a length the solver
    cannot prove to be a multiple of the block; the attention drops the padding with
    ``attn_output[:, :seq_length]`` (:693), a slice it guards against the padded length;
    and an input shorter than a block (the traced one, 12 tokens in blocks of 128) has one
    block, which reshapes and broadcasts turn into a guard (``... // 128) == 1``).

    The replacements (the helpers of families/_blocks.py) pad with zeros up to ``count *
    block_len`` tokens, ``count`` the ceiling of length / block_len: the zeros the
    original adds, none when the length is a multiple. The attention takes the first
    ``length`` rows by index instead of slicing, and its blocked code and the mask's are
    traced with torch's size-oblivious reasoning, so that one block and several are the
    same graph. The same operations on the same values as the original: the numbers do
    not change (``tests/test_patches.py`` compares them). Training runs the original
    attention.

    Remove when: LongT5 pads to whole blocks without branching on the remainder, drops
    the padding without a slice, and torch.export traces a block count of 1 without
    specializing it.
    """
    patcher.replace_in(MODULE, None, "_split_into_blocks", longt5_split_into_blocks)
    patcher.replace_in(MODULE, None, "_get_local_attention_mask", longt5_local_mask)
    patcher.replace_in(MODULE, "LongT5LocalAttention", "forward", longt5_local_attention)


LONGT5_LOCAL_BLOCKS = Patch(
    name="longt5_local_blocks",
    fixes="Constraints violated (encoder_length)! ... satisfy the generated guard "
    "(L['input_ids'].size()[1] % 128) != 0",
    remove_when="LongT5 pads to whole blocks without branching on the remainder, drops the "
    "padding without a slice, and torch.export traces a block count of 1 without "
    "specializing it",
    install=_install_longt5_local_blocks,
    model_types=("longt5",),
)


register(
    Family(
        name="longt5",
        model_types=("longt5",),
        patches=(LONGT5_LOCAL_BLOCKS,),
    )
)
