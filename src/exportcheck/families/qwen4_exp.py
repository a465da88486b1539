"""Qwen4Exp: a QSA indexer that selects keys query by query with nonzero()."""

from __future__ import annotations

import math
import sys
from typing import Any

import torch

from ..patches import Patch
from . import Family, register

MODULE = "transformers.models.qwen4_exp.modeling_qwen4_exp"


def qwen4_indexer_forward(self, hidden_states, position_embeddings, attention_mask, cache):
    """Qwen4ExpTextQSAIndexer.forward for all batches and queries at once, without nonzero()."""
    mod = sys.modules[MODULE]
    batch, seq, _ = hidden_states.shape
    full_cos, full_sin = position_embeddings
    qk = self.index_qk_proj(hidden_states)
    q, raw_keys = torch.split(
        qk,
        [self.index_n_heads * self.index_head_dim, self.index_kv_heads * self.index_head_dim],
        dim=-1,
    )
    q = self.q_layernorm(q.reshape(batch, seq, -1, self.index_head_dim))
    cos, sin = full_cos[:, -seq:, :], full_sin[:, -seq:, :]
    q = mod.apply_rotary_pos_emb(q, cos=cos, sin=sin, unsqueeze_dim=2)
    raw_keys = raw_keys.reshape(batch, seq, -1, self.index_head_dim).squeeze(2)
    if cache is not None:
        raw_keys = cache.update_indexer(raw_keys, self.layer_idx)

    visible = attention_mask if attention_mask.dtype == torch.bool else attention_mask == 0
    visible = visible[:, 0]  # (batch, seq, keys): the keys each query sees
    keys = visible.shape[-1]
    ratio = self.compress_ratio
    rank = visible.long().cumsum(-1) - 1  # rank among the visible keys (nonzero's order)
    n_visible = visible.long().sum(-1, keepdim=True)
    in_block = visible & (rank < (n_visible // ratio) * ratio)
    in_tail = visible & ~in_block
    block = torch.where(in_block, rank // ratio, torch.zeros_like(rank))
    # Block m of a query holds its visible keys of ranks m*r .. m*r+r-1; `keys` slots
    # are allocated, those from n_visible // r on are invalid.
    masked = raw_keys.float()[:, None, :, :] * in_block[..., None].float()
    pooled = torch.zeros_like(masked).scatter_add(
        2, block[..., None].expand(-1, -1, -1, masked.shape[-1]), masked
    )
    pooled = self.k_layernorm((pooled / ratio).to(raw_keys.dtype))  # mean of a full block
    positions = torch.arange(keys, device=visible.device).expand_as(rank)
    is_start = in_block & (rank % ratio == 0)
    starts = torch.zeros_like(rank).scatter_add(
        2, block, torch.where(is_start, positions, torch.zeros_like(positions))
    )  # the position of each block's first key gives its rotary angle
    index = starts.reshape(batch, -1, 1).expand(-1, -1, full_cos.shape[-1])
    block_cos = full_cos.gather(1, index).view(batch, seq, keys, -1)
    block_sin = full_sin.gather(1, index).view(batch, seq, keys, -1)
    block_keys = mod.apply_rotary_pos_emb(
        pooled.unsqueeze(-2), cos=block_cos, sin=block_sin, unsqueeze_dim=-2
    ).squeeze(-2)
    # score of a block: sum over index heads of relu(q_h . k) / sqrt(head_dim)
    scores = torch.relu(block_keys.float() @ q.float().transpose(-1, -2)).sum(dim=-1)
    scores = scores / math.sqrt(self.index_head_dim)
    valid = torch.arange(keys, device=visible.device) < (n_visible // ratio)
    scores = torch.where(valid, scores, torch.full_like(scores, -math.inf))
    # the top min(block_topk, blocks) valid blocks: padding with -inf keeps k constant
    padding = torch.full_like(scores[..., :1], -math.inf).expand(-1, -1, self.block_topk)
    top = torch.cat([scores, padding], dim=-1).topk(self.block_topk, dim=-1).indices
    chosen = (
        torch.zeros(
            (batch, seq, keys + self.block_topk), dtype=torch.bool, device=visible.device
        ).scatter(-1, top, True)[..., :keys]
        & valid
    )
    return (in_tail | (in_block & chosen.gather(-1, block))).unsqueeze(1)


def _install_qwen4_exp_indexer(patcher: Any, model: Any) -> None:
    """Compute Qwen4Exp's QSA indexer selection for all queries at once, without nonzero().

    Fixes: torch.export of qwen4_exp and qwen4_exp_text: ``GuardOnDataDependentSymNode: Could
    not guard on data-dependent expression ((u0//4)) > 0``: Qwen4ExpTextQSAIndexer.forward
    (transformers/models/qwen4_exp/modeling_qwen4_exp.py:746-768) loops in Python over batch and
    queries, takes ``nonzero()`` of each mask row (u0 keys visible), branches on
    ``u0 // compress_ratio > 0`` and calls ``topk(min(block_topk, u0 // r))``; the loops would
    also fix batch and seq_length.

    The replacement gives the same selection mask with fixed shapes: a visible key's rank
    (cumsum of the row) gives its block, keys past the last full block are selected as the
    original's tail; blocks are averaged with a scatter_add, normed, rotated at their first
    key and scored as in the original, and one ``topk`` of constant k over scores padded with
    -inf picks the blocks. Only ties of block scores at the top-k boundary may select other
    blocks (topk's order among equal values is not defined; none in the checked inputs).

    Remove when: transformers computes the indexer without per-query nonzero() and loops.
    """
    patcher.replace_in(MODULE, "Qwen4ExpTextQSAIndexer", "forward", qwen4_indexer_forward)


QWEN4_EXP_INDEXER = Patch(
    name="qwen4_exp_indexer",
    fixes="GuardOnDataDependentSymNode: Could not guard on data-dependent expression ((u0//4)) > 0",
    remove_when="transformers computes the indexer without per-query nonzero() and loops",
    install=_install_qwen4_exp_indexer,
    model_types=("qwen4_exp", "qwen4_exp_text"),
)


register(
    Family(
        name="qwen4_exp",
        model_types=("qwen4_exp", "qwen4_exp_text"),
        config_fixes={
            "qwen4_exp": (
                {
                    "text_config.indexer_n_heads": 4,
                    "text_config.indexer_kv_heads": 1,
                    "text_config.indexer_head_dim": 16,
                    "text_config.indexer_budget": 16,
                    "text_config.indexer_compress_ratio": 4,
                },
                "indexed-attention layers build an indexer whose attributes default to None",
            ),
            "qwen4_exp_text": (
                {
                    "indexer_n_heads": 4,
                    "indexer_kv_heads": 1,
                    "indexer_head_dim": 16,
                    "indexer_budget": 16,
                    "indexer_compress_ratio": 4,
                },
                "indexed-attention layers build an indexer whose attributes default to None",
            ),
        },
        patches=(QWEN4_EXP_INDEXER,),
    )
)
