"""
Untrained models from shipped configs: inputs and dynamic shapes for any architecture
======================================================================================

:func:`exportcheck.untrained_model` builds a model with random weights from a hub id
whose config ships with exportcheck, a config, or a transformers ``model_type``. It
also builds input sets for a decode step and the dynamic shapes to export them with.
This recipe does it for three families: a dense Llama, a sliding-window Gemma 3 and a
mixture-of-experts Qwen3, then shows that the inputs are a faithful decode step.
"""

# %%
# Which configs ship
# ------------------
#
# Nothing is downloaded: the configs of well-known hub ids are package data.

from exportcheck import available_configs

ids = available_configs()
print(f"{len(ids)} configs ship with exportcheck, for example:")
for hub_id in ids[:8]:
    print("  ", hub_id)

# %%
# Three families
# --------------
#
# Tiny-LLM is small enough to build as published. Gemma 3 and Qwen3-MoE are shrunk with
# ``shrink=True``: fewer and narrower layers, a smaller vocabulary and fewer experts,
# but the same kinds of layers (sliding window, experts) as the published model.

import torch

from exportcheck import string_type, untrained_model

models = {
    "arnir0/Tiny-LLM": untrained_model("arnir0/Tiny-LLM"),
    "google/gemma-3-1b-it": untrained_model("google/gemma-3-1b-it", shrink=True),
    "Qwen/Qwen3-30B-A3B": untrained_model("Qwen/Qwen3-30B-A3B", shrink=True),
}
for hub_id, m in models.items():
    n_params = sum(p.numel() for p in m.model.parameters())
    layers = sorted({type(layer).__name__ for layer in m.inputs[m.cache_argument].layers})
    print(f"{hub_id}: {type(m.model).__name__}, {n_params:,} parameters, cache layers {layers}")

# %%
# The inputs of a decode step
# ---------------------------
#
# Each model gets a batch of 2 with 3 new tokens and 30 cached tokens. The cache comes
# from running the model on a prompt, so it has the model's own layer kinds: Gemma 3
# mixes sliding-window and full-attention layers.

for hub_id, m in models.items():
    print(f"{hub_id}:\n  {string_type(m.inputs, with_shape=True)}")

# %%
# The other input sets have shapes an export will not see: batch 1, one new token, a
# longer cache, another batch and length.

m = models["arnir0/Tiny-LLM"]
for feeds in m.other_inputs:
    print(string_type(feeds, with_shape=True))

# %%
# The dynamic shapes
# ------------------
#
# Every input has its dynamic dimensions, named ``batch``, ``seq_length`` and
# ``cache_length``; the cache's spec follows its flattened layout (one list of keys, one
# of values). The attention mask spans cached and new tokens: a sum, which a ``Dim``
# cannot express, so its length has a dimension of its own.

for hub_id, m in models.items():
    print(f"{hub_id}:\n  {string_type(m.dynamic_shapes)}")

# %%
# A faithful decode step
# ----------------------
#
# ``prompts`` keeps the tokens whose prefill filled each cache. Running the model
# without a cache on the prompt followed by the new tokens must give the logits of
# the decode step: this checks that the cache and the mask are what the model expects.
# The last input set is left-padded, as ``generate`` pads a batch: the full forward
# gets the same mask.

import copy

from exportcheck import max_diff

worst, steps = 0.0, 0
with torch.no_grad():
    for hub_id, m in models.items():
        diffs = []
        for feeds, prompt in zip(m.input_sets, m.prompts, strict=True):
            new = feeds["input_ids"]
            decode = m.model(**copy.deepcopy(feeds)).logits
            ids = torch.cat([prompt, new], dim=1)
            full = m.model(input_ids=ids, attention_mask=feeds["attention_mask"]).logits
            steps += 1
            diffs.append(max_diff(full[:, -new.shape[1] :], decode)["abs"])
        print(f"{hub_id}: decode step vs full forward, max abs diff per input set:")
        print("  ", ", ".join(f"{d:.1e}" for d in diffs))
        worst = max(worst, *diffs)

assert worst <= 1e-4, f"a decode step differs from the full forward by {worst}"
print(
    f"check passed: {steps} decode steps match the full forward, max abs diff {worst:.2e} <= 1e-4"
)

# %%
# Three architectures, built offline with random weights, each with six input sets
# of distinct shapes (one left-padded)
# and dynamic shapes ready for ``torch.export``, and inputs that are a faithful decode
# step of the model.
