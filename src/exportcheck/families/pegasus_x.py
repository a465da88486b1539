"""PEGASUS-X: an encoder of global tokens and local attention within blocks of
``block_size`` tokens."""

from __future__ import annotations

import functools
import sys
from typing import Any

import torch

from ..patches import Patch
from ..patches.core import passthrough
from . import Family, register
from ._blocks import first, size_oblivious

MODULE = "transformers.models.pegasus_x.modeling_pegasus_x"


def _encode(self, input_ids=None, attention_mask=None, inputs_embeds=None,
            output_hidden_states=None, **kwargs):  # fmt: skip
    """PegasusXEncoder.forward (eval, before its decorators), padded to whole blocks by a
    computed count and unpadded by index."""
    mod = sys.modules[MODULE]
    pad = torch.nn.functional.pad
    if output_hidden_states is None:
        output_hidden_states = self.config.output_hidden_states
    if (input_ids is None) ^ (inputs_embeds is not None):
        raise ValueError("You must specify exactly one of input_ids or inputs_embeds")
    if inputs_embeds is None:
        inputs_embeds = self.embed_tokens(input_ids)
    hidden = inputs_embeds + self.embed_positions(inputs_embeds).to(inputs_embeds.device)
    batch, length, _ = hidden.shape
    if attention_mask is None:
        attention_mask = torch.ones(
            *inputs_embeds.shape[:-1], dtype=inputs_embeds.dtype, device=inputs_embeds.device
        )
    lowest = torch.finfo(hidden.dtype).min
    # 0 where attended, the lowest float where masked
    inverted = 1.0 - attention_mask.to(dtype=hidden.dtype)
    attention_mask = inverted.masked_fill(inverted.to(torch.bool), lowest)
    # zeros up to a whole number of blocks: none when the length is a multiple
    block = self.config.block_size
    padding = (length + block - 1) // block * block - length
    hidden = pad(hidden, (0, 0, 0, padding), value=0)
    attention_mask = pad(attention_mask, (0, padding), value=lowest)
    ids = torch.arange(self.config.num_global_tokens, device=hidden.device)
    global_hidden = self.embed_global(ids[None].expand(batch, -1))
    states = () if output_hidden_states else None
    for layer in self.layers:
        if output_hidden_states:
            states += (hidden,)
        hidden, global_hidden = layer(hidden, global_hidden, attention_mask, **kwargs)
    hidden = self.layer_norm(first(hidden, length, 1))
    if output_hidden_states:
        states += ((hidden, global_hidden),)
    return mod.BaseModelOutput(last_hidden_state=hidden, hidden_states=states)


@functools.cache
def _decorated(module: Any) -> Any:
    """:func:`_encode` behind the decorators the original forward has (config defaults,
    the recorded attentions, ``return_dict``)."""
    return module.merge_with_config_defaults(module.capture_outputs(_encode))


def pegasus_x_encoder_forward(self, *args, **kwargs):
    """PegasusXEncoder.forward in eval mode: :func:`_encode`; training runs the original
    (dropout, LayerDrop)."""
    if self.training:
        return passthrough(pegasus_x_encoder_forward.original, self, *args, **kwargs)
    return _decorated(sys.modules[MODULE])(self, *args, **kwargs)


def pegasus_x_block_attention(self, *args, **kwargs):
    """PegasusXGlobalLocalAttention.forward, traced without guards on the block count."""
    if not torch.compiler.is_exporting():
        return passthrough(pegasus_x_block_attention.original, self, *args, **kwargs)
    with size_oblivious():
        return pegasus_x_block_attention.original(self, *args, **kwargs)


def _install_pegasus_x_block_padding(patcher: Any, model: Any) -> None:
    """Keep the encoder length of PEGASUS-X's block attention symbolic.

    Fixes: torch.export of pegasus_x's encoder (text2text-generation): ``Constraints
    violated (encoder_length)! ... Not all values of encoder_length ... satisfy the
    generated guard (L['input_ids'].size()[1] % 512) != 0``, and guards on the padded
    length: PegasusXEncoder.forward
    (transformers/models/pegasus_x/modeling_pegasus_x.py:863-866) pads the sequence to a
    multiple of ``block_size`` only ``if seq_len % block_size != 0``, by ``block_size -
    seq_len % block_size``, a length the solver cannot prove to be a multiple of the
    block when the attention views it as ``(num_blocks, block_size)`` (:465-473); and it
    drops the padding with ``hidden_states[:, :seq_len]`` (:895), a slice it guards
    against the padded length.

    The replacement of the encoder's forward computes the padding as ``count *
    block_size - length``, ``count`` the ceiling of length / block_size (the zeros and
    lowest-float mask the original adds, none when the length is a multiple), always
    pads, and takes the first ``length`` rows by index instead of slicing; the rest is the
    original's code, behind the same decorators. The attention runs unchanged, traced
    with torch's size-oblivious reasoning so that one block (any input shorter than
    ``block_size``, the traced one included) and several are the same graph; without it,
    with blocks shorter than the traced input, export guards the block count (``5 <=
    L['input_ids'].size()[1]``) and the staggered layers' view of count + 1 blocks
    (``(4 + 4*(...)) % (1 + (...)) == 0``). The same
    operations on the same values: the numbers do not change (``tests/test_patches.py``
    compares them). Training runs the original forward.

    Remove when: PEGASUS-X pads to whole blocks without branching on the remainder, drops
    the padding without a slice, and torch.export traces a block count of 1 without
    specializing it.
    """
    patcher.replace_in(MODULE, "PegasusXEncoder", "forward", pegasus_x_encoder_forward)
    patcher.replace_in(MODULE, "PegasusXGlobalLocalAttention", "forward", pegasus_x_block_attention)


PEGASUS_X_BLOCK_PADDING = Patch(
    name="pegasus_x_block_padding",
    fixes="Constraints violated (encoder_length)! ... satisfy the generated guard "
    "(L['input_ids'].size()[1] % 512) != 0",
    remove_when="PEGASUS-X pads to whole blocks without branching on the remainder, drops "
    "the padding without a slice, and torch.export traces a block count of 1 without "
    "specializing it",
    install=_install_pegasus_x_block_padding,
    model_types=("pegasus_x",),
)


register(
    Family(
        name="pegasus_x",
        model_types=("pegasus_x",),
        patches=(PEGASUS_X_BLOCK_PADDING,),
    )
)
