"""BLT: byte-level entropy patching with a data-dependent number of patches."""

from __future__ import annotations

import sys
from typing import Any

import torch

from ..patches import Patch
from . import Family, register

MODULE = "transformers.models.blt.modeling_blt"


def blt_patcher_forward(
    self,
    input_ids=None,
    attention_mask=None,
    position_ids=None,
    cache=None,
    inputs_embeds=None,
    use_cache=None,
    patch_size=None,
    threshold=None,
    max_patch_length=None,
    **kwargs,
):
    """BltPatcher.forward: entropy from an unvalidated Categorical, patches padded.

    The original code otherwise; with ``max_patch_length`` unset (the default) the patch
    lengths come from :func:`blt_patch_lengths_padded`. With it set, the original
    lengths and process_patch_lengths (data-dependent, ``.item()``) are used.
    """
    mod = sys.modules[MODULE]
    if (input_ids is None) ^ (inputs_embeds is not None):
        raise ValueError("You must specify exactly one of input_ids or inputs_embeds")
    if inputs_embeds is None:
        inputs_embeds = self.embed_tokens(input_ids)
    if use_cache and cache is None:
        cache = mod.DynamicCache(config=self.config)
    if position_ids is None:
        past_seen_tokens = cache.get_seq_length() if cache is not None else 0
        position_ids = (
            torch.arange(inputs_embeds.shape[1], device=inputs_embeds.device) + past_seen_tokens
        )
        position_ids = position_ids.unsqueeze(0)
    mask_function = (
        mod.create_causal_mask
        if self.config.sliding_window is None
        else mod.create_sliding_window_causal_mask
    )
    causal_mask = mask_function(
        config=self.config,
        inputs_embeds=inputs_embeds,
        attention_mask=attention_mask,
        cache=cache,
        position_ids=position_ids,
    )
    hidden_states = inputs_embeds
    position_embeddings = self.rotary_emb(hidden_states, position_ids)
    for layer in self.layers:
        hidden_states = layer(
            hidden_states, position_embeddings=position_embeddings, attention_mask=causal_mask
        )
    logits = self.lm_head(self.norm(hidden_states))
    # validate_args=False: the default check `constraints.real.check(logits).all()` is a
    # data-dependent Python bool; the entropy itself is the same computation.
    prediction_entropies = torch.distributions.Categorical(
        logits=logits, validate_args=False
    ).entropy()
    batch_size, sequence_length = inputs_embeds.shape[:2]
    if patch_size is not None:
        lengths_of = (
            blt_patch_lengths_padded
            if max_patch_length is None
            else self.patch_lengths_from_entropies
        )
        patch_lengths = lengths_of(
            entropies=prediction_entropies,
            sequence_length=sequence_length,
            patch_size=patch_size,
            threshold=threshold,
        )
    else:
        patch_lengths = torch.ones(
            (batch_size, sequence_length), dtype=inputs_embeds.dtype, device=inputs_embeds.device
        )
    patch_lengths = mod.process_patch_lengths(patch_lengths, max_patch_length)
    return prediction_entropies, patch_lengths, logits


def blt_patch_lengths_padded(entropies, sequence_length, patch_size=None, threshold=None):
    """BltPatcher.patch_lengths_from_entropies keeping all sequence_length + 1 patches.

    The original starts patches at 0, 1 and p + 1 for every byte p >= 1 whose entropy
    exceeds the threshold, pads shorter rows with starts at sequence_length + 1, and
    cuts the patch dimension to the longest row. Here byte 0 counts as a boundary too,
    so the starts are 0 and b_k + 1 for the k-th boundary b_k (b_0 = 0), and b_k is the
    number of bytes whose running count of boundaries is <= k: that is sequence_length
    when a row has fewer than k + 1 boundaries, the original's padding start. Nothing
    is cut: the patch dimension is sequence_length + 1 for every input. (No tensor of
    length sequence_length - 1 is made: its 0/1 sizes make torch.export specialize.)
    """
    seq = entropies.shape[1]
    positions = torch.arange(seq, device=entropies.device)
    boundary = (entropies > threshold) | (positions == 0)
    running = boundary.cumsum(dim=1)  # boundaries among bytes 0..p
    j = torch.arange(seq + 1, device=entropies.device)
    patch_start_ids = (running.unsqueeze(1) <= (j - 1).view(1, -1, 1)).sum(dim=-1) + (j > 0)
    last_token = torch.full_like(patch_start_ids[:, :1], sequence_length - 1)
    patch_ends = torch.cat((patch_start_ids[:, 1:] - 1, last_token), dim=1)
    return patch_ends - patch_start_ids + 1


def blt_patch_ids_from_lengths(self, patch_lengths, seq_len):
    """BltModel._patch_ids_from_lengths with the patch starts as cumsum - lengths.

    The original concatenates a 0 and ``cumsum[:, :-1]``: the same integers, but through
    a tensor one patch shorter (sequence_length - 1 patches for the decoder ids), whose
    0/1 sizes make torch.export specialize.
    """
    patch_starts = patch_lengths.cumsum(dim=-1) - patch_lengths
    token_positions = torch.arange(seq_len, device=patch_lengths.device)
    return (patch_starts.unsqueeze(1) <= token_positions.unsqueeze(0).unsqueeze(-1)).sum(dim=-1) - 1


def blt_byte_group_hash(token_ids, group_size=2, prime=1000000007, max_hash=30000):
    """byte_group_hash_function without ``unfold`` and without an int64 reduction.

    The original hashes ``windows = padded.unfold(1, group_size, 1)`` as
    ``sum(windows * prime ** arange(group_size), -1)`` in wrapping int64. Here term j is
    ``padded[:, j : j + seq_len] * prime ** j`` (the same window column) and the terms
    are added one by one: wrapping integer addition is associative, so the hash is the
    same, bit for bit.
    """
    with torch.no_grad():
        batch_size, seq_len = token_ids.shape
        padding = torch.zeros(
            batch_size, group_size - 1, dtype=torch.int64, device=token_ids.device
        )
        padded_tokens = torch.cat([padding, token_ids], dim=1)
        prime_powers = torch.tensor(
            prime, dtype=torch.int64, device=token_ids.device
        ) ** torch.arange(group_size, device=token_ids.device)
        hashes = padded_tokens[:, 0:seq_len] * prime_powers[0]
        for j in range(1, group_size):
            hashes = hashes + padded_tokens[:, j : j + seq_len] * prime_powers[j]
        return hashes % max_hash


def _install_blt_padded_patches(patcher: Any, model: Any) -> None:
    """Run BLT's entropy patcher with a fixed number of patches: sequence_length + 1.

    Fixes: torch.export of blt fails with ``Could not guard on data-dependent expression
    Eq(u0, 1)``: BltPatcher.forward (transformers/models/blt/modeling_blt.py:915) builds
    ``torch.distributions.Categorical(logits=logits)``, whose argument validation does
    ``if not valid.all()``. Past it, BltPatcher.patch_lengths_from_entropies (:968-973)
    selects patch starts with a boolean index and slices the patch dimension to
    ``patch_mask.sum(dim=1).max()``: the number of patches depends on the entropies.

    The replacements build the Categorical with ``validate_args=False`` (same entropy)
    and return patch lengths for all sequence_length + 1 possible patches (2 forced
    starts + one per entropy boundary among the sequence_length - 1 candidates), the
    original ones first, then padding patches starting at sequence_length + 1, past
    every byte: exactly what the original gives a row with fewer boundaries than the
    longest row of its batch. BltModel.forward only uses the lengths through their
    cumulative sums (_patch_ids_from_lengths, also of lengths[:, 1:]) and the patch
    count, so every byte keeps its patch id, and padding patches hold no byte:

    - local encoder: patch_reduce leaves them 0 and the patch-as-query cross-attention
      rows are separate rows; real rows see the same keys and mask;
    - global transformer: causal, and padding patches come after every real one, so
      real patches never attend to them;
    - local decoder: its cross-attention mask gives them finfo.min for every byte, a
      softmax weight of exactly 0 (every byte has its own patch, so no row is fully
      masked).

    The logits (per byte) are the same; only extra rows are computed. The patcher's own
    ``patch_lengths`` output gains the padding patches. With ``max_patch_length`` set
    the original patch lengths and process_patch_lengths (``.item()``) are kept: eager
    is unchanged but that configuration still does not export.

    Also fixes, once past the above, ``Constraints violated (seq_length)`` (specialized
    to 3): byte_group_hash_function (:1027-1028) multiplies an ``unfold`` view of the
    bytes, and the strides of that overlapping view make the meta function guard
    ``seq_length >= 3`` and ``< 4``. The replacement takes each window column as a shifted
    slice. The original ``torch.sum`` over the window would become an int64 ReduceSum in ONNX, which
    onnxruntime does not compute exactly once the products wrap (observed:
    sum([0, 0, -8680463014257304698]) = -8680463014257304576), so every hash id and then
    every logit differed; the replacement adds the window terms one by one (elementwise
    int64 Add, exact; wrapping addition is associative, so the same hash).

    Likewise BltModel._patch_ids_from_lengths (:1316-1322) builds ``cumsum[:, :-1]``, of
    sequence_length - 1 patches for the decoder: replaced by ``cumsum - lengths``, the
    same integers.

    Remove when: transformers computes BLT patches with a static patch dimension (or
    torch.export handles the data-dependent count).
    """
    patcher.replace_in(MODULE, "BltPatcher", "forward", blt_patcher_forward)
    patcher.replace_in(MODULE, "BltModel", "_patch_ids_from_lengths", blt_patch_ids_from_lengths)
    patcher.replace_in(MODULE, None, "byte_group_hash_function", blt_byte_group_hash)


BLT_PADDED_PATCHES = Patch(
    name="blt_padded_patches",
    fixes="Could not guard on data-dependent expression Eq(u0, 1)",
    remove_when="transformers computes BLT patches with a static patch dimension (or "
    "torch.export handles the data-dependent count)",
    install=_install_blt_padded_patches,
    model_types=("blt",),
)


register(
    Family(
        name="blt",
        model_types=("blt",),
        config_fixes={
            "blt": (
                {
                    "num_hidden_layers": 2,
                    "encoder_hash_byte_group_vocab": 1024,
                    "decoder_config.hidden_size_global": 64,
                },
                "the cache is built from the top config, which has no num_hidden_layers; hash "
                "embeddings and the decoder's global width are not shrunk",
            )
        },
        patches=(BLT_PADDED_PATCHES,),
        task_known_failures={
            "text-generation": {
                "blt": (
                    r"eager is inconsistent: the decode step differs from a full forward",
                    "no decode step can equal the full forward: on a cached step "
                    "BltModel.forward (transformers/models/blt/modeling_blt.py:1211-1281) "
                    "cuts only the new bytes into patches (the patcher sees the call's "
                    "input_ids alone) and runs the global transformer with cache=None over "
                    "those patches, so the prompt's patches, the latent context of the "
                    "model, never reach it; the byte-group hash embeddings (:1202-1209) also "
                    "see only the new bytes. The cache keeps the local encoder's and "
                    "decoder's keys only. The step's logits differ from the forward over "
                    "prompt + new bytes by 3.4 to 6.1 on every input set, and eager's "
                    "step-by-step loop differs from its generate in 11 of 16 tokens",
                ),
            },
        },
    )
)
