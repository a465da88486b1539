"""
Export an LLM with its cache: Tiny-LLM, untrained, checked
==========================================================

This recipe exports ``arnir0/Tiny-LLM``, a one-layer Llama, with
:func:`torch.export.export` and a dynamic cache, then checks the ExportedProgram
against eager PyTorch on shapes the export never saw. The model is built from its
config with random weights, so nothing is downloaded.

The steps: guess which dimensions of the inputs are dynamic by watching
``generate``, build a model with inputs and dynamic shapes, export, compare.
"""

# %%
# Guess the cache dimension
# -------------------------
#
# With access to the hub, the real model is one line away:
#
# .. code-block:: python
#
#     from transformers import AutoModelForCausalLM
#     model = AutoModelForCausalLM.from_pretrained("arnir0/Tiny-LLM")
#
# Here the same architecture is built from the config that ships with exportcheck,
# with random weights. The shapes, which are all that export cares about, are the same.

import torch
from transformers import AutoModelForCausalLM

from exportcheck import get_config, string_type

torch.manual_seed(0)
config = get_config("arnir0/Tiny-LLM")
model = AutoModelForCausalLM.from_config(config).eval()
print(f"{config.model_type}: {config.num_hidden_layers} layer, hidden size {config.hidden_size}")

# %%
# To learn what the model receives, wrap ``forward`` so that it prints a one-line
# description of its arguments, then let ``generate`` call it.

original_forward = model.forward
sizes = []  # the sizes each call received, drawn below


def printing_forward(*args, **kwargs):
    print(string_type([args, kwargs], with_shape=True))
    cache = kwargs.get("cache", kwargs.get("past_key_values"))
    sizes.append(
        {
            "batch": kwargs["input_ids"].shape[0],
            "new tokens (input_ids dim 1)": kwargs["input_ids"].shape[1],
            "cached tokens (cache dim 2)": cache.get_seq_length(),
            "attention_mask dim 1": kwargs["attention_mask"].shape[1],
        }
    )
    return original_forward(*args, **kwargs)


model.forward = printing_forward
try:
    prompt = torch.randint(0, config.vocab_size, (1, 8))
    generated = model.generate(
        prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=20, do_sample=False
    )
finally:
    model.forward = original_forward
print("generated shape:", tuple(generated.shape))

# %%
# The same sizes, call by call: the batch and, after the prefill, the number of new
# tokens stay put, while the cache and the mask grow by one token per call.

# sphinx_gallery_thumbnail_number = 1
import matplotlib.pyplot as plt

fig, ax = plt.subplots(figsize=(7, 3.2))
for (name, marker), color in zip(
    [("cached tokens (cache dim 2)", "o"), ("attention_mask dim 1", "s")],
    ["tab:blue", "tab:orange"],
    strict=True,
):
    ax.plot([row[name] for row in sizes], marker=marker, color=color, label=name)
for name, marker, color in [
    ("new tokens (input_ids dim 1)", "^", "tab:green"),
    ("batch", "v", "tab:gray"),
]:
    ax.plot([row[name] for row in sizes], marker=marker, color=color, linestyle=":", label=name)
ax.xaxis.get_major_locator().set_params(integer=True)
ax.set_xlabel("call to forward during generate (0 is the prefill)")
ax.set_ylabel("size")
ax.legend(fontsize=8)
ax.set_title("Tiny-LLM under generate: which dimensions vary")
fig.tight_layout()

# %%
# The first call (the prefill) sees the 8 prompt tokens and an empty cache. Every
# later call sees one new token, and the cache grows by one each step: dimension 2
# of every cache tensor is the cache length. The batch is dimension 0 everywhere.
# The argument is called ``cache``; older transformers called it ``past_key_values``.
#
# The model creation
# ------------------
#
# Export needs example inputs for a decode step with a filled cache, and a dynamic
# shape for every dimension that varies. This function returns all three, for any
# batch, number of new tokens and cache length.

from exportcheck import make_dynamic_cache


def tiny_llm(batch=2, seq_length=3, cache_length=30):
    """Returns the model, inputs for one decode step, and their dynamic shapes."""
    head_dim = config.hidden_size // config.num_attention_heads
    kv_heads = config.num_key_value_heads
    cache = make_dynamic_cache(
        [
            (
                torch.randn(batch, kv_heads, cache_length, head_dim),
                torch.randn(batch, kv_heads, cache_length, head_dim),
            )
            for _ in range(config.num_hidden_layers)
        ]
    )
    inputs = dict(
        input_ids=torch.randint(0, config.vocab_size, (batch, seq_length)),
        attention_mask=torch.ones((batch, cache_length + seq_length), dtype=torch.int64),
        cache=cache,
    )
    batch_dim = torch.export.Dim("batch", min=1, max=1024)
    seq_dim = torch.export.Dim("seq_length", min=1, max=4096)
    cache_dim = torch.export.Dim("cache_length", min=1, max=4096)
    layers = range(config.num_hidden_layers)
    dynamic_shapes = dict(
        input_ids={0: batch_dim, 1: seq_dim},
        attention_mask={0: batch_dim, 1: torch.export.Dim.DYNAMIC},
        # A DynamicCache flattens into [key_cache list, value_cache list].
        cache=[
            [{0: batch_dim, 2: cache_dim} for _ in layers],
            [{0: batch_dim, 2: cache_dim} for _ in layers],
        ],
    )
    return model, inputs, dynamic_shapes


model, inputs, dynamic_shapes = tiny_llm()
print("inputs:", string_type(inputs, with_shape=True))
print("dynamic shapes:", dynamic_shapes)

# %%
# ExportedProgram
# ---------------
#
# ``torch.export`` can only flatten inputs it knows. transformers does not register
# its caches as pytree nodes, so the export runs inside :func:`exportcheck.cache_pytrees`.
# The inputs are deep-copied: eager forward appends to the cache it receives.

import copy

from exportcheck import cache_pytrees

with cache_pytrees():
    ep = torch.export.export(model, (), kwargs=copy.deepcopy(inputs), dynamic_shapes=dynamic_shapes)
print(ep.graph_signature)
print("range constraints:", ep.range_constraints)

# %%
# Compare with eager on the export inputs and on three input sets of other shapes:
# batch 1 with one new token, a longer cache, another batch and length.

from exportcheck import max_diff

input_sets = {
    "export inputs": inputs,
    "batch 1, 1 token, cache 5": tiny_llm(1, 1, 5)[1],
    "batch 2, 1 token, cache 100": tiny_llm(2, 1, 100)[1],
    "batch 3, 4 tokens, cache 47": tiny_llm(3, 4, 47)[1],
}
results = {}
with cache_pytrees():
    exported_module = ep.module()
    for name, feeds in input_sets.items():
        expected = model(**copy.deepcopy(feeds))
        got = exported_module(**copy.deepcopy(feeds))
        results[name] = max_diff(expected, got)

print(f"{'input set':30} {'outputs compared':>16} {'max abs diff':>12}")
for name, diff in results.items():
    print(f"{name:30} {diff['leaves']:16} {diff['abs']:12.3g}")

# %%
# Every output, logits and the updated cache, matches eager on shapes the export
# never saw.

worst = max(d["abs"] for d in results.values())
assert all(d["mismatch"] is None for d in results.values()), results
assert worst <= 1e-5, f"max abs diff {worst} > 1e-5"
print(
    f"check passed: ExportedProgram matches eager on {len(results)} input sets, max abs diff {worst:.3g} <= 1e-5"
)

# %%
# The untrained Tiny-LLM exported with a dynamic batch, sequence and cache length,
# and its ExportedProgram computes what eager PyTorch computes on other shapes.
