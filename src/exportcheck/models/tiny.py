"""Shrink any transformers config into a tiny one that builds in a fraction of a second.

:func:`tiny_config` applies the generic rules below to the config and to each of
its sub-configs, then the ``config_fixes`` of the model's family
(:data:`exportcheck.families.CONFIG_FIXES`).

Generic rules:

* **Layers.** Keep one layer of each kind listed in ``layer_types`` (at least two
  layers); every attribute holding one value per layer (a list as long as the
  original number of layers) keeps the values of the kept layers.
* **Widths.** Hidden size 64 (a drafter's ``backbone_hidden_size`` too), 4 attention heads of 16, 2 key-value heads (or 4 when
  the model has no grouped-query attention), intermediate size 128, vocabulary 1024.
  Special token ids beyond the vocabulary are moved inside it.
* **Experts.** 4 experts, 2 per token, expert width 32, one shared expert.
* **Speech.** 32 channels per feature-encoder convolution, adapters and speech
  encoders as wide and as deep as the rest.
* **Other dimensions** (multi-head latent attention, state-space and linear-attention
  heads, convolution kernels) shrink to small values with the same ratios.
* **Rope.** Longrope's per-frequency factor lists are resampled to half the shrunk
  rotary dimensions, and multimodal rope's ``mrope_section`` rescaled to sum to it;
  ``original_max_position_embeddings`` shrinks with ``max_position_embeddings`` so the
  scaling factor stays the published one.
* **Ties.** A width the published config ties to another (a vision tower's
  ``out_hidden_size`` to the text model's hidden size) stays tied.
* Everything else (windows, rope type and factors, norms, activation) keeps the
  model's default.
"""

from __future__ import annotations

import dataclasses
from typing import Any

__all__ = ["set_attributes", "tiny_config"]

# Attribute -> tiny value, applied when the config has the attribute and its value is
# an int larger than the tiny one.
_SIZES: dict[str, int] = {
    "hidden_size": 64,
    "d_model": 64,
    "n_embd": 64,
    "n_embed": 64,
    "embed_dim": 64,
    "emb_dim": 64,
    "dim": 64,
    "intermediate_size": 128,
    "ffn_dim": 128,
    "n_inner": 128,
    "d_ff": 128,
    "decoder_ffn_dim": 128,
    "encoder_ffn_dim": 128,
    "ffn_hidden_size": 128,
    "block_ff_dim": 128,
    "moe_intermediate_size": 32,
    "expert_intermediate_size": 32,
    "shared_expert_intermediate_size": 32,
    "moe_shared_expert_intermediate_size": 32,  # nemotron_h
    "vocab_size": 1024,
    # the logits width of models that pad their embedding table (inkling2)
    "unpadded_vocab_size": 1024,
    # the decoder's own vocabulary of encoder-decoders that may embed two (marian)
    "decoder_vocab_size": 1024,
    "num_local_experts": 4,
    "num_experts": 4,
    "n_routed_experts": 4,
    "moe_num_experts": 4,
    "num_experts_per_tok": 2,
    "moe_topk": 2,
    "top_k": 2,
    "n_shared_experts": 1,
    "num_shared_experts": 1,
    "q_lora_rank": 32,
    "kv_lora_rank": 32,
    "qk_rope_head_dim": 8,
    "qk_nope_head_dim": 8,
    "v_head_dim": 16,
    "state_size": 8,
    "ssm_state_size": 8,
    "mamba_d_state": 8,
    "mamba_n_heads": 4,
    "mamba_num_heads": 4,  # nemotron_h
    "mamba_head_dim": 16,
    "mamba_d_conv": 4,
    "time_step_rank": 8,
    "linear_num_key_heads": 2,
    "linear_num_value_heads": 4,
    "linear_key_head_dim": 16,
    "linear_value_head_dim": 16,
    "global_head_dim": 16,
    "num_global_key_value_heads": 2,
    "hidden_size_per_layer_input": 16,
    "vocab_size_per_layer_input": 1024,
    "linear_num_heads": 4,
    "linear_head_dim": 16,
    "hc_lowrank": 32,
    "dim_ff": 128,
    "moe_num_shared_experts": 1,
    "zero_expert_num": 2,
    "mamba_dt_rank": 8,
    "d_inner": 128,
    "feed_forward_size": 128,
    "shared_intermediate_size": 128,
    "expert_ffn_hidden_size": 32,
    "adapter_in_dim": 64,
    "adapter_out_dim": 64,
    "adapter_input_size": 64,
    "backbone_hidden_size": 64,  # a drafter's main model, shrunk to hidden size 64 too
    "max_position_embeddings": 4096,
    "n_positions": 4096,
    # speech: the channels of each convolution of a raw-audio feature encoder, the
    # width of an adapter after it, and the encoder width of speech-to-text models
    "conv_dim": 32,
    "output_hidden_size": 64,
    "speech_encoder_intermediate_size": 128,
}
_LAYER_COUNTS = (
    "num_hidden_layers",
    "n_layer",
    "num_layers",
    "n_layers",
    "decoder_layers",
    "encoder_layers",
    "num_decoder_layers",
    "num_encoder_layers",
    "encoder_num_hidden_layers",
    "decoder_num_hidden_layers",
    "speech_encoder_layers",
)
_HEADS = (
    "num_attention_heads",
    "n_head",
    "num_heads",
    "n_heads",
    "decoder_attention_heads",
    "encoder_attention_heads",
    "speech_encoder_attention_heads",
)
_WIDTH_RATIOS = ("attention_hidden_size", "lru_width", "embedding_dim")
_EXPERT_COUNTS = ("num_local_experts", "num_experts", "n_routed_experts", "moe_num_experts")
_KEEP_KEYS = {
    "model_type",
    "_name_or_path",
    "output_attentions",
    "transformers_version",
    "per_layer_config",
}
_TOKEN_IDS = (
    "pad_token_id",
    "bos_token_id",
    "eos_token_id",
    "sep_token_id",
    "cls_token_id",
    "decoder_start_token_id",
)
# Per-layer lists that say what kind each layer is: the layers kept cover every kind.
_LAYER_KINDS = ("layer_types", "layers_block_type", "block_types", "layers_type")
# Per-layer lists that say what kind of feed-forward each layer has (dense or experts,
# deepseek_v32 and glm_moe_dsa): the kept layers cover these kinds too, or the tiny
# model keeps only the first dense layers and loses its mixture of experts.
_MLP_KINDS = ("mlp_layer_types",)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _layer_overrides(data: dict[str, Any]) -> dict[int, dict[str, Any]]:
    """``per_layer_config`` of heterogeneous configs: layer index -> overridden attributes.

    ``to_dict()`` stores only the layers that differ, under zero-padded string keys.
    """
    per_layer = data.get("per_layer_config")
    if not isinstance(per_layer, dict):
        return {}
    return {int(k): v for k, v in per_layer.items() if isinstance(v, dict)}


def _first_kv_shared(data: dict[str, Any], n_layers: int) -> int | None:
    """Index of the first layer that reads another layer's key-value cache."""
    shared = data.get("num_kv_shared_layers")
    return n_layers - shared if _is_int(shared) and 0 < shared <= n_layers else None


def _kept_layers(data: dict[str, Any], n_layers: int) -> list[int]:
    """One layer of each kind, in model order, at least two.

    A kind combines the layer's entry in ``layer_types`` (or a similar list), its
    feed-forward kind (``mlp_layer_types``), the attributes ``per_layer_config``
    overrides for it, and whether it reuses another layer's key-value cache.
    """
    if n_layers <= 0:
        return []
    kinds = next(
        (
            data[key]
            for key in _LAYER_KINDS
            if isinstance(data.get(key), list | tuple) and len(data[key]) == n_layers
        ),
        None,
    )
    mlp_kinds = [
        data[key]
        for key in _MLP_KINDS
        if isinstance(data.get(key), list | tuple) and len(data[key]) == n_layers
    ]
    overrides = _layer_overrides(data)
    shared_from = _first_kv_shared(data, n_layers)
    first: dict[str, int] = {}
    for i in range(n_layers):
        kind = (
            None if kinds is None else repr(kinds[i]),
            tuple(repr(m[i]) for m in mlp_kinds),
            tuple(sorted(overrides.get(i, {}))),
            shared_from is not None and i >= shared_from,
        )
        first.setdefault(repr(kind), i)
    kept = sorted(first.values())
    if len(kept) == 1 and n_layers > 1:
        kept.append(1)
    return sorted(kept)


def _shrink_per_layer(
    data: dict[str, Any], kept: list[int], n_layers: int, before: dict[str, Any]
) -> None:
    """Renumber ``per_layer_config`` after the layer selection and shrink each entry.

    Kept layer ``kept[j]`` becomes layer ``j``; each layer's overrides go through the
    generic rules together with the global attributes, so a layer stays as
    consistent as the whole config (``head_dim == qk_nope + qk_rope`` per layer).
    """
    if not isinstance(data.get("per_layer_config"), dict):
        return
    overrides = _layer_overrides(data)
    width = len(str(max(len(kept) - 1, 0)))
    result: dict[str, dict[str, Any]] = {}
    for new, old in enumerate(kept):
        layer = overrides.get(old)
        if not layer:
            continue
        full = {k: v for k, v in before.items() if not isinstance(v, dict | list | tuple)}
        for count in _LAYER_COUNTS:
            full.pop(count, None)
        full.update(layer)
        _shrink_dict(full)
        result[str(new).zfill(width)] = {attr: full.get(attr, layer[attr]) for attr in layer}
    data["per_layer_config"] = result


def _config_class(data: dict[str, Any]) -> type | None:
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    try:
        return CONFIG_MAPPING[data.get("model_type")]
    except KeyError:
        return None


def _derived_keys(cls: type | None, data: dict[str, Any]) -> set[str]:
    """Keys of ``to_dict()`` that the constructor computes from others.

    ``to_dict()`` saves them and ``from_dict`` would pass them back, overwriting what
    the constructor computes from the shrunk sizes (MLA ``head_dim``, ``qk_head_dim``,
    Mamba head dims): they are dropped so the constructor recomputes them.
    """
    if cls is None or not dataclasses.is_dataclass(cls):
        return set()
    fields = {f.name for f in dataclasses.fields(cls)}
    aliases = set(getattr(cls, "attribute_map", {}) or {}) | set(
        (getattr(cls, "attribute_map", {}) or {}).values()
    )
    return set(data) - fields - aliases - _KEEP_KEYS


def _shrink_sizes(data: dict[str, Any], cls: type | None, original: dict[str, Any]) -> None:
    aliases = getattr(cls, "attribute_map", {}) or {}
    for attr, tiny in _SIZES.items():
        for key in {attr, aliases.get(attr, attr)}:
            value = data.get(key)
            if _is_int(value) and value > tiny:
                data[key] = tiny
            elif isinstance(value, list) and value and all(_is_int(v) for v in value):
                data[key] = [min(v, tiny) for v in value]  # one value per layer
    hidden, old_hidden = data.get("hidden_size"), original.get("hidden_size")
    if _is_int(hidden) and _is_int(old_hidden) and old_hidden:
        for key in _WIDTH_RATIOS:  # widths that keep their ratio to the hidden size
            if _is_int(original.get(key)):
                data[key] = max(1, original[key] * hidden // old_hidden)
    # MoE counts left to None by a config that still builds experts.
    if _is_int(data.get("moe_intermediate_size")):
        for attr in ("num_experts_per_tok", "n_routed_experts", "n_shared_experts"):
            key = aliases.get(attr, attr)
            if key in data and data[key] is None:
                data[key] = _SIZES[attr]
    # Grouped routing takes a top-2 inside each group: the groups must split the experts.
    experts = next(
        (data[aliases.get(a, a)] for a in _EXPERT_COUNTS if _is_int(data.get(aliases.get(a, a)))),
        None,
    )
    group_key = aliases.get("n_group", "n_group")
    if group_key not in data and "num_expert_group" in data:
        group_key = "num_expert_group"
    groups = data.get(group_key)
    if _is_int(experts) and _is_int(groups) and (experts % groups or experts // groups < 2):
        data[group_key] = 2 if experts >= 4 and experts % 2 == 0 else 1
        if "topk_group" in data:
            data["topk_group"] = 1
    for key in ("first_k_dense_replace", "num_dense_layers"):
        if _is_int(data.get(key)) and data[key] > 1:
            data[key] = 1  # keep a mixture-of-experts layer among the two kept


def _shrink_heads(data: dict[str, Any]) -> None:
    heads_attr = [a for a in _HEADS if _is_int(data.get(a))]
    if not heads_attr:
        return
    heads = data[heads_attr[0]]
    kv = data.get("num_key_value_heads")
    grouped = _is_int(kv) and kv < heads
    for a in heads_attr:
        data[a] = 4
    if _is_int(kv):
        data["num_key_value_heads"] = 2 if grouped else 4
    elif "num_key_value_heads" in data and kv is None:
        data["num_key_value_heads"] = 4  # None means one key-value head per head
    for a in ("head_dim", "attention_head_dim", "kv_channels", "attention_head_size", "dim_head"):
        if (_is_int(data.get(a)) and data[a] > 16) or (
            a == "head_dim" and a in data and data[a] is None
        ):
            data[a] = 16
    if _is_int(data.get("d_head")) and _is_int(data.get("d_model")):
        data["d_head"] = data["d_model"] // 4


def _shrink_state_space(data: dict[str, Any]) -> None:
    """Mamba-2 style blocks: inner width = heads x head dim, groups divide the heads."""
    hidden = data.get("hidden_size")
    for heads, head_dim, groups, inner in (
        ("mamba_n_heads", "mamba_d_head", "mamba_n_groups", "mamba_d_ssm"),
        ("n_mamba_heads", "mamba_headdim", "mamba_ngroups", None),
        ("mamba_num_heads", "mamba_head_dim", "n_groups", None),  # nemotron_h
        ("num_heads", "head_dim", "n_groups", None),
    ):
        if not _is_int(data.get(heads)) or head_dim not in data:
            continue
        if heads == "num_heads" and not ("n_groups" in data and "expand" in data):
            continue  # attention heads, not state-space heads
        expand = data.get("mamba_expand", data.get("expand"))
        if inner and _is_int(data.get(inner)):
            data[inner] = data[heads] * 16
            width = data[inner]
        elif _is_int(expand) and _is_int(hidden):
            width = expand * hidden
        else:
            continue
        data[head_dim] = width // data[heads]
        if _is_int(data.get(groups)) and data[heads] % data[groups]:
            data[groups] = 1
    if any(k in data for k in ("mamba_d_state", "ssm_state_size", "state_size")):
        # The chunked scan pads by a modulo of the length that export cannot bound;
        # chunks of one token give the same numbers and never pad.
        for key in ("chunk_size", "mamba_chunk_size"):
            if _is_int(data.get(key)) and data[key] > 1:
                data[key] = 1


def _shrink_layers(data: dict[str, Any], original: dict[str, Any]) -> None:
    counts = [a for a in _LAYER_COUNTS if _is_int(data.get(a))]
    if not counts:
        # The layer count is a property computed from the kinds (nemotron_h saves
        # ``layers_block_type`` and no ``num_hidden_layers``): cut the kinds list.
        kinds = next((data[k] for k in _LAYER_KINDS if isinstance(data.get(k), list)), None)
        if kinds and len(kinds) > 2:
            kept = _kept_layers(data, len(kinds))
            for name, value in list(data.items()):
                if isinstance(value, list | tuple) and len(value) == len(kinds):
                    data[name] = type(value)(value[i] for i in kept)
        return
    n_layers = max(data[a] for a in counts)
    kept = _kept_layers(data, n_layers)
    if n_layers > len(kept):
        for name, value in list(data.items()):
            if isinstance(value, list | tuple) and len(value) == n_layers:
                data[name] = type(value)(value[i] for i in kept)
        for a in counts:
            data[a] = min(data[a], len(kept))
        if _is_int(data.get("num_blocks")) and original.get("num_blocks") == n_layers:
            data["num_blocks"] = len(kept)
        shared_from = _first_kv_shared(original, n_layers)
        if shared_from is not None:
            data["num_kv_shared_layers"] = sum(1 for i in kept if i >= shared_from)
    _shrink_per_layer(
        data, kept if n_layers > len(kept) else list(range(n_layers)), n_layers, original
    )
    n = min(data[a] for a in counts)
    # A kind pattern shorter than the model, cycled over the layers (recurrent_gemma):
    # the kept layers must still see every kind.
    for key in _LAYER_KINDS:
        kinds = data.get(key)
        if isinstance(kinds, list) and 0 < len(kinds) != n:
            firsts = list(dict.fromkeys(kinds))
            if set(firsts) - set((kinds * n)[:n]):
                data[key] = firsts
                for a in counts:
                    data[a] = len(firsts)
    # Periodic attention or expert layers (jamba): one must fall among the kept layers.
    n = min(data[a] for a in counts)
    for period, offset in (
        ("attn_layer_period", "attn_layer_offset"),
        ("expert_layer_period", "expert_layer_offset"),
    ):
        if _is_int(data.get(period)) and not any(
            i % data[period] == data.get(offset) for i in range(n)
        ):
            data[period], data[offset] = 2, 1


_ROPE_KEYS = ("rope_parameters", "rope_scaling")
# Rope parameters with one value per rotary frequency (longrope): as many as half the
# rotary dimensions.
_FREQUENCY_LISTS = ("short_factor", "long_factor")
# Multimodal rope's rotary frequencies given to time, height and width: they sum to half
# the rotary dimensions.
_SECTIONS = "mrope_section"


def _rope_dicts(data: dict[str, Any]) -> list[dict[str, Any]]:
    """The rope parameter sets of a config: one, or one per attention kind (gemma3)."""
    found = []
    for key in _ROPE_KEYS:
        value = data.get(key)
        if not isinstance(value, dict):
            continue
        if value and all(isinstance(v, dict) for v in value.values()):
            found.extend(value.values())
        else:
            found.append(value)
    return found


def _resample(values: list[Any], n: int) -> list[Any]:
    """``n`` values picked evenly along ``values``, the first and the last kept."""
    if n <= 1 or len(values) <= 1:
        return values[:n]
    return [values[round(i * (len(values) - 1) / (n - 1))] for i in range(n)]


def _shrink_rope(data: dict[str, Any], original: dict[str, Any]) -> None:
    """Keep the rope parameters consistent with the shrunk heads and positions.

    * Longrope's ``short_factor`` and ``long_factor`` hold one rescale factor per
      rotary frequency: the config validation wants exactly half the shrunk rotary
      dimensions (head dim x ``partial_rotary_factor``). They are resampled evenly, the
      lowest and highest frequency factors kept, so the lists still rise as published.
    * ``original_max_position_embeddings`` (llama3, yarn, longrope) is the pretraining
      context the scaling extends to ``max_position_embeddings``: when the latter
      shrinks, the former shrinks by the same ratio, so the scaling factor (and
      longrope's attention factor, which derives from the ratio) stay the published
      ones, and the original context stays below the maximum as validation expects.
    * Multimodal rope's ``mrope_section`` must sum to half the rotary dimensions: the
      sections are rescaled in their published proportions.
    """
    rope = _rope_dicts(data)
    old_max, new_max = original.get("max_position_embeddings"), data.get("max_position_embeddings")
    if _is_int(old_max) and _is_int(new_max) and new_max < old_max:
        for holder in [data, *rope]:
            value = holder.get("original_max_position_embeddings")
            if _is_int(value):
                holder["original_max_position_embeddings"] = max(1, value * new_max // old_max)
    if not any(isinstance(r.get(k), list) for r in rope for k in (*_FREQUENCY_LISTS, _SECTIONS)):
        return
    # multi-head latent attention rotates qk_rope_head_dim of each head
    head_dim = data.get("qk_rope_head_dim", data.get("head_dim"))
    heads = data.get("num_attention_heads")
    if not _is_int(head_dim) and _is_int(data.get("hidden_size")) and _is_int(heads):
        head_dim = data["hidden_size"] // heads
    if not _is_int(head_dim):
        return
    for params in rope:
        partial = params.get("partial_rotary_factor", data.get("partial_rotary_factor", 1.0))
        half = int(head_dim * (partial or 1.0)) // 2
        for key in _FREQUENCY_LISTS:
            if isinstance(params.get(key), list) and len(params[key]) != half:
                params[key] = _resample(params[key], half)
        sections = params.get(_SECTIONS)
        ints = isinstance(sections, list) and sections and all(map(_is_int, sections))
        if ints and sum(sections) != half:
            params[_SECTIONS] = rescale_sections(sections, half)


def rescale_sections(sections: list[int], total: int) -> list[int]:
    """``sections`` rescaled to sum to ``total``, in the same proportions, none empty.

    >>> rescale_sections([16, 24, 24], 8)
    [2, 3, 3]
    """
    new = [max(1, round(x * total / sum(sections))) for x in sections[:-1]]
    return [*new, total - sum(new)]


def _shrink_dict(data: dict[str, Any]) -> None:
    cls = _config_class(data)
    original = dict(data)
    _shrink_sizes(data, cls, original)
    _shrink_heads(data)
    _shrink_state_space(data)
    _shrink_rope(data, original)
    for a in ("rotary_dim", "rotary_emb_dim"):
        if _is_int(data.get(a)) and data[a] > 8:
            data[a] = 8
    _shrink_layers(data, original)
    vocab = data.get("vocab_size")
    if _is_int(vocab):
        for i, attr in enumerate(_TOKEN_IDS):
            value = data.get(attr)
            if _is_int(value) and value >= vocab:
                data[attr] = vocab - 1 - i
            elif isinstance(value, list):
                data[attr] = [v if not _is_int(v) or v < vocab else vocab - 1 for v in value]
    # A decoder that can take a cache: BERT-like models only build one as decoders.
    if data.get("is_decoder") is False:
        data["is_decoder"] = True
    for key in _derived_keys(cls, data):
        data.pop(key, None)
    subs = {k: v for k, v in data.items() if isinstance(v, dict) and "model_type" in v}
    published = {k: dict(v) for k, v in subs.items()}
    for value in subs.values():
        _shrink_dict(value)
    _keep_ties(subs, published)
    _move_placeholder_tokens(data)  # once the text sub-config has its tiny vocabulary


#: widths of a sub-config named for the language model's width they feed (a vision
#: tower's merger output, an encoder's projection into the text embeddings)
_TEXT_WIDTHS = ("out_hidden_size", "text_hidden_size")
#: widths a config ties to its own hidden size when it has no projection between them
#: (an OPT language model's embedding width: a composite model's projected image
#: features are merged into its embeddings at the text hidden size)
_OWN_WIDTHS = ("codebook_dim", "word_embed_proj_dim")


def _keep_ties(subs: dict[str, dict[str, Any]], published: dict[str, dict[str, Any]]) -> None:
    """Widths the published config ties together stay tied once shrunk: a sub-config's
    :data:`_TEXT_WIDTHS` equal to the text config's hidden size follow its tiny hidden
    size, and its :data:`_OWN_WIDTHS` equal to its own hidden size follow that (the
    configs validate these ties). An adapter's ``vision_feature_layer`` indices are
    clamped to the vision layers kept."""
    text, old_text = subs.get("text_config", {}), published.get("text_config", {})
    for name, sub in subs.items():
        before = published[name]
        for key in _TEXT_WIDTHS:
            tied = _is_int(before.get(key)) and before.get(key) == old_text.get("hidden_size")
            if name != "text_config" and tied and _is_int(text.get("hidden_size")):
                sub[key] = text["hidden_size"]
        for key in _OWN_WIDTHS:
            if _is_int(before.get(key)) and before.get(key) == before.get("hidden_size"):
                sub[key] = sub["hidden_size"]
    # an adapter's layer indices into the vision tower stay inside the layers kept
    layers = subs.get("vision_config", {}).get("num_hidden_layers")
    for sub in subs.values():
        chosen = sub.get("vision_feature_layer")
        if _is_int(layers) and isinstance(chosen, list) and all(map(_is_int, chosen)):
            sub["vision_feature_layer"] = [max(-layers, min(i, layers - 1)) for i in chosen]


def _move_placeholder_tokens(data: dict[str, Any]) -> None:
    """A composite config (its vocabulary in a text sub-config) names placeholder tokens
    (``audio_token_id``, ``image_token_index``) of the full vocabulary: move those beyond
    the tiny text vocabulary inside it, below the special tokens, each its own id. A
    config that also keeps a vocabulary of its own (Ovis 2) has both shrunk: the
    smaller bounds the ids."""
    text = data.get("text_config")
    vocab = text.get("vocab_size") if isinstance(text, dict) else None
    if not _is_int(vocab):
        return
    if _is_int(data.get("vocab_size")):
        vocab = min(vocab, data["vocab_size"])
    names = sorted(k for k in data if k.endswith(("_token_id", "_token_index")))
    free = vocab - 1 - len(_TOKEN_IDS)
    moved: dict[int, int] = {}
    for name in names:
        value = data[name]
        if _is_int(value) and value >= vocab:
            if value not in moved:  # two names for one token keep one id
                moved[value] = free - len(moved)
            data[name] = moved[value]


def _merge_dotted(data: dict[str, Any], overrides: dict[str, Any]) -> None:
    for key, value in overrides.items():
        target = data
        *path, name = key.split(".")
        for part in path:
            target = target.setdefault(part, {})
        target[name] = value


def set_attributes(config: Any, overrides: dict[str, Any]) -> Any:
    """Set config attributes; a dotted key (``text_config.head_dim``) reaches a sub-config."""
    for key, value in overrides.items():
        target = config
        *path, name = key.split(".")
        for part in path:
            target = getattr(target, part)
        setattr(target, name, value)
    return config


def tiny_config(config: Any) -> Any:
    """Return a shrunk copy of a transformers config (see the module documentation).

    The shrunk values go through the config's constructor, so that attributes derived
    from others (``head_dim`` of multi-head latent attention, ...) follow.

    >>> from transformers import LlamaConfig
    >>> tiny = tiny_config(LlamaConfig())
    >>> tiny.num_hidden_layers, tiny.hidden_size, tiny.num_attention_heads, tiny.vocab_size
    (2, 64, 4, 1024)
    """
    if not hasattr(config, "to_dict") or not hasattr(config, "model_type"):
        raise TypeError(
            f"tiny_config: expected a transformers config, got {type(config).__name__}."
        )
    data = config.to_dict()
    _shrink_dict(data)
    from ..families import CONFIG_FIXES

    overrides, _ = CONFIG_FIXES.get(config.model_type, ({}, ""))
    # Before the constructor, which validates consistency, and after it, which may
    # recompute some of them.
    _merge_dotted(data, overrides)
    tiny = type(config).from_dict(data)
    return set_attributes(tiny, overrides)
