"""Granite Speech 5: a conformer encoder with block-local attention over stacked frames."""

from __future__ import annotations

from typing import Any

from ..patches import Patch
from ..patches.core import module_of
from . import Family, register

MODULE = "transformers.models.granite_speech5.modeling_granite_speech5"


def block_attention_forward(
    self: Any,
    hidden_states: Any,
    position_embeddings: Any,
    attention_mask: Any = None,
    **kwargs: Any,
) -> tuple[Any, None]:
    """GraniteSpeech5EncoderAttention.forward with the frames always padded to whole blocks
    (by zero frames when they already fill them) and the blocks kept as their own axis
    until the attention call."""
    import torch

    granite = module_of(MODULE)
    batch, frames, _ = hidden_states.shape
    block, heads = self.context_size, self.config.num_attention_heads
    # At least two filler frames, never none: torch.export assumes sizes of 0 or 1 are
    # special and guards on them. A filler of a whole block (when the frames fill theirs)
    # is one more block whose keys are all masked: the blocks attend independently and
    # its rows are cut off, so the frames' outputs are the same. The padded length is
    # written as blocks * block, so that splitting it into blocks needs no proof.
    blocks = (frames + 1) // block + 1
    missing = blocks * block - frames
    filler = hidden_states.new_zeros(batch, missing, hidden_states.shape[-1])
    hidden_states = torch.cat([hidden_states, filler], dim=1)
    if attention_mask is None:
        attention_mask = torch.ones(batch, frames, dtype=torch.bool, device=filler.device)
    masked = torch.zeros(batch, missing, dtype=torch.bool, device=filler.device)
    keys_kept = torch.cat([attention_mask.bool(), masked], dim=1)

    def split(projection: Any) -> Any:
        # (batch, blocks * block, heads * dim) -> (batch * blocks, heads, block, dim)
        states = projection(hidden_states).unflatten(1, (blocks, block)).flatten(0, 1)
        return states.unflatten(-1, (heads, -1)).transpose(1, 2)

    query, key, value = split(self.q_proj), split(self.k_proj), split(self.v_proj)
    # distance embeddings of every (query, key) pair of a block: (block, block, dim)
    distances = self.rel_pos_emb(position_embeddings) * self.scaling
    # bias[n, h, i, j] = query[n, h, i] . distances[i, j]
    bias = torch.einsum("nhid,ijd->nhij", query, distances)
    bias = bias.masked_fill(
        ~keys_kept.unflatten(1, (blocks, block)).flatten(0, 1)[:, None, None, :],
        torch.finfo(bias.dtype).min,
    )
    attention = granite.ALL_ATTENTION_FUNCTIONS.get_interface(
        self.config._attn_implementation, granite.eager_attention_forward
    )
    output, _ = attention(
        self,
        query,
        key,
        value,
        attention_mask=bias.contiguous(),
        dropout=0.0 if not self.training else self.attention_dropout,
        scaling=self.scaling,
        **kwargs,
    )
    # (batch * blocks, block, heads, dim) -> (batch, blocks * block, heads * dim)
    output = output.unflatten(0, (batch, blocks)).flatten(1, 2).flatten(2)
    return self.o_proj(output[:, :frames]), None


def _install_block_attention(patcher: Any, model: Any) -> None:
    """Pad to whole attention blocks unconditionally, and fold blocks without views.

    Fixes: ``torch.export`` of granite_speech5_ctc with a dynamic number of frames (blocks
    of 8 frames, the task config fix): ``Constraints violated (frames)! ... satisfy the
    generated guard (((-1)*(L['input_features'].size()[1] // 2)) % 8) > 0``, and once the
    frames are relaxed to ``Dim.AUTO``, ``Guard failed: -1 * (input_features.size()[1] //
    2) % 8 > 0`` on the lengths whose frames fill their blocks.
    GraniteSpeech5EncoderAttention.forward
    (transformers/models/granite_speech5/modeling_granite_speech5.py:117) pads the frames
    to a whole number of context_size blocks only ``if num_padded > 0`` (a branch on the
    length) and folds the blocks into the batch by reshapes of transposed and permuted
    tensors (guards on batch * blocks). Here two to ``block + 1`` masked zero frames are
    always appended (a whole extra block when the frames fill theirs: its keys are all
    masked, blocks attend independently and its rows are cut off), the mask of the kept
    keys is always built, blocks are split with ``unflatten``, and the relative-position
    bias of each query is an einsum with the distance embeddings: the same numbers for the
    real frames.

    Remove when: transformers pads without a branch and folds the blocks without the
    reshape of a permuted tensor, or torch.export proves these guards.
    """
    patcher.replace_in(MODULE, "GraniteSpeech5EncoderAttention", "forward", block_attention_forward)


BLOCK_ATTENTION = Patch(
    name="granite_speech5_block_attention",
    fixes="satisfy the generated guard (((-1)*(L['input_features'].size()[1] // 2)) % 8) > 0",
    remove_when="transformers pads Granite Speech 5's attention blocks without a branch on "
    "the length, or torch.export proves the guards of its block folding",
    install=_install_block_attention,
    model_types=("granite_speech5_ctc",),
)

register(
    Family(
        name="granite_speech5",
        model_types=("granite_speech5_ctc",),
        input_layouts={
            "granite_speech5_ctc": (
                {"values_per_bin": 4},
                "GraniteSpeech5FeatureExtractor appends each mel frame's delta and stacks "
                "two consecutive frames: 4 values per mel bin (input_linear takes "
                "num_mel_bins * 4)",
            ),
        },
        patches=(BLOCK_ATTENTION,),
        task_config_fixes={
            "automatic-speech-recognition-ctc": {
                "granite_speech5_ctc": (
                    {"encoder_config.context_size": 8},
                    "attention blocks of 8 frames instead of 128, so that every input set "
                    "(24 to 128 frames, halved by each subsampling layer) spans two blocks "
                    "or more: traced on a single block, torch.export specializes the "
                    "number of blocks to 1 (a size of 1 is special to it) and the program "
                    "then fails longer inputs with 'Guard failed: "
                    "input_features.size()[1] <= 126'",
                )
            }
        },
    )
)
