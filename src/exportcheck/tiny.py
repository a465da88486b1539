"""Shrink any transformers config into a tiny one that builds in a fraction of a second.

:func:`tiny_config` applies the generic rules below to the config and to each of
its sub-configs, then the per-model entries of :data:`MODEL_FIXES`.

Generic rules:

* **Layers.** Keep one layer of each kind listed in ``layer_types`` (at least two
  layers); every attribute holding one value per layer (a list as long as the
  original number of layers) keeps the values of the kept layers.
* **Widths.** Hidden size 64, 4 attention heads of 16, 2 key-value heads (or 4 when
  the model has no grouped-query attention), intermediate size 128, vocabulary 1024.
  Special token ids beyond the vocabulary are moved inside it.
* **Experts.** 4 experts, 2 per token, expert width 32, one shared expert.
* **Other dimensions** (multi-head latent attention, state-space and linear-attention
  heads, convolution kernels) shrink to small values with the same ratios.
* Everything else (windows, rope, norms, activation) keeps the model's default.
"""

from __future__ import annotations

from typing import Any

__all__ = ["KNOWN_FAILURES", "MODEL_FIXES", "causal_lm_types", "tiny_config"]

# Attribute -> tiny value, applied when the config has the attribute and its value is
# an int larger than the tiny one.
_SIZES: dict[str, int] = {
    "hidden_size": 64,
    "d_model": 64,
    "n_embd": 64,
    "n_embed": 64,
    "embed_dim": 64,
    "emb_dim": 64,
    "attention_hidden_size": 64,
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
    "vocab_size": 1024,
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
    "max_position_embeddings": 4096,
    "n_positions": 4096,
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
)
_HEADS = (
    "num_attention_heads",
    "n_head",
    "num_heads",
    "n_heads",
    "decoder_attention_heads",
    "encoder_attention_heads",
)
_TOKEN_IDS = ("pad_token_id", "bos_token_id", "eos_token_id", "sep_token_id", "cls_token_id")
# Per-layer lists that say what kind each layer is: the layers kept cover every kind.
_LAYER_KINDS = ("layer_types", "layers_block_type", "block_types", "layers_type")


#: Per-model fixes applied after the generic rules: model_type -> (overrides, reason).
#: A key ``"text_config.head_dim"`` sets an attribute of a sub-config.
MODEL_FIXES: dict[str, tuple[dict[str, Any], str]] = {}

#: Causal-LM model types whose tiny model cannot be built or run here:
#: model_type -> (a regular expression matching the error, why). The tests check
#: that each still fails with that error, so a fix upstream shows up.
KNOWN_FAILURES: dict[str, tuple[str, str]] = {}


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _kept_layers(data: dict[str, Any], n_layers: int) -> list[int]:
    """One layer of each kind, in model order, at least two."""
    for key in _LAYER_KINDS:
        kinds = data.get(key)
        if isinstance(kinds, list | tuple) and len(kinds) == n_layers and n_layers > 0:
            first: dict[str, int] = {}
            for i, kind in enumerate(kinds):
                first.setdefault(repr(kind), i)
            kept = sorted(first.values())
            if len(kept) == 1 and n_layers > 1:
                kept.append(1)
            return sorted(kept)
    return list(range(min(2, n_layers)))


def _shrink_dict(data: dict[str, Any]) -> None:
    for attr, tiny in _SIZES.items():
        if _is_int(data.get(attr)) and data[attr] > tiny:
            data[attr] = tiny
    heads_attr = [a for a in _HEADS if _is_int(data.get(a))]
    if heads_attr:
        heads = data[heads_attr[0]]
        kv = data.get("num_key_value_heads")
        grouped = _is_int(kv) and kv < heads
        for a in heads_attr:
            data[a] = 4
        if _is_int(kv):
            data["num_key_value_heads"] = 2 if grouped else 4
        for a in ("head_dim", "attention_head_dim", "kv_channels"):
            if _is_int(data.get(a)) and data[a] > 16:
                data[a] = 16
    for a in ("rotary_dim", "rotary_emb_dim"):
        if _is_int(data.get(a)) and data[a] > 8:
            data[a] = 8
    counts = [a for a in _LAYER_COUNTS if _is_int(data.get(a))]
    if counts:
        n_layers = max(data[a] for a in counts)
        kept = _kept_layers(data, n_layers)
        if n_layers > len(kept):
            for name, value in list(data.items()):
                if isinstance(value, list | tuple) and len(value) == n_layers:
                    data[name] = type(value)(value[i] for i in kept)
            for a in counts:
                data[a] = min(data[a], len(kept))
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
    for value in data.values():
        if isinstance(value, dict) and "model_type" in value:
            _shrink_dict(value)


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
    tiny = type(config).from_dict(data)
    overrides, _ = MODEL_FIXES.get(config.model_type, ({}, ""))
    return set_attributes(tiny, overrides)


def causal_lm_types() -> list[str]:
    """The model types of the installed transformers' causal-LM mapping.

    >>> "llama" in causal_lm_types()
    True
    """
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    return sorted(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES)
