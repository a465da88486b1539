"""
Sliding-window attention in ONNX: Gemma 3 with a cache beyond the window
========================================================================

Gemma 3 alternates sliding-window layers, which keep only the last tokens of the
cache, with full-attention layers, which keep them all. This recipe converts a
shrunk, untrained ``google/gemma-3-1b-it`` with a window of 16 tokens to ONNX, shows
why the usual dynamic shapes do not export, and checks onnxruntime against eager
PyTorch on caches longer than the window.
"""

# %%
# Two kinds of layers, two kinds of cache
# ---------------------------------------
#
# With ``sliding_window=16`` the sliding layer keeps 15 past tokens whatever the
# length of the text, while the full-attention layer keeps all 30 of them.

import torch

from exportcheck import string_type, untrained_model

window = 16
gemma = untrained_model("google/gemma-3-1b-it", shrink=True, sliding_window=window)
model, config = gemma.model, gemma.config
print("layer types:", config.layer_types, "| sliding_window:", config.sliding_window)
print("export inputs:", string_type(gemma.inputs, with_shape=True))
print("dynamic shapes:", string_type(gemma.dynamic_shapes))

# %%
# The usual dynamic shapes fail
# -----------------------------
#
# These dynamic shapes allow a full-attention cache of 1 token as well as 64. The
# graph traced on a cache of 30 tokens is only valid when that cache is at least as
# long as the window, so ``torch.export`` refuses and suggests ``min=16``.

import copy

from exportcheck import export_patches

try:
    with export_patches(model):
        torch.export.export(
            model, (), kwargs=copy.deepcopy(gemma.inputs), dynamic_shapes=gemma.dynamic_shapes
        )
except torch._dynamo.exc.UserError as e:
    print("torch.export refuses:", str(e).splitlines()[0])
    print("  suggested:", [line.strip() for line in str(e).splitlines() if "Dim(" in line])
else:
    raise AssertionError("the export with cache_length >= 1 no longer fails: update this recipe")

# %%
# Dynamic shapes for a cache beyond the window
# --------------------------------------------
#
# The export covers decode steps once the text is longer than the window: the
# full-attention cache holds at least 16 tokens, the sliding cache is always 15
# tokens long (static), batch and number of new tokens stay dynamic.

batch = torch.export.Dim("batch", min=1, max=1024)
seq_length = torch.export.Dim("seq_length", min=1, max=8)
cache_length = torch.export.Dim("cache_length", min=window, max=4096)
sliding, full = {0: batch}, {0: batch, 2: cache_length}
dynamic_shapes = dict(
    input_ids={0: batch, 1: seq_length},
    attention_mask={0: batch, 1: torch.export.Dim.DYNAMIC},
    cache=[[sliding, full], [sliding, full]],  # keys of both layers, then values
)
print("dynamic shapes:", string_type(dynamic_shapes))

# %%
# Conversion
# ----------
#
# The ONNX inputs show the two kinds of layer (layer 0 slides, layer 1 does not): the sliding cache has a fixed length
# of 15 in and out, the full-attention cache grows by the number of new tokens.

import os
import tempfile

import onnxruntime

workdir = tempfile.TemporaryDirectory(prefix="exportcheck-")  # removed at exit
onnx_path = os.path.join(workdir.name, "gemma3_sliding.onnx")
layers = range(config.num_hidden_layers)
input_names = [
    "input_ids",
    "attention_mask",
    *[f"past_key_values.{i}.key" for i in layers],
    *[f"past_key_values.{i}.value" for i in layers],
]
output_names = [
    "logits",
    *[f"present.{i}.key" for i in layers],
    *[f"present.{i}.value" for i in layers],
]
with export_patches(model):
    torch.onnx.export(
        model,
        (),
        onnx_path,
        kwargs=copy.deepcopy(gemma.inputs),
        dynamic_shapes=dynamic_shapes,
        input_names=input_names,
        output_names=output_names,
        dynamo=True,
    )
session = onnxruntime.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
for kind, values in (("input ", session.get_inputs()), ("output", session.get_outputs())):
    for v in values:
        print(f"{kind} {v.name:22} {v.type:14} {v.shape}")

# %%
# Run and compare beyond the window
# ---------------------------------
#
# The other input sets change batch, number of new tokens and full-attention cache
# length (17 to 60 tokens, always beyond the window of 16). onnxruntime takes the
# flattened inputs in the pytree order, named by :func:`exportcheck.ort_feeds`.

from exportcheck import max_diff, ort_feeds

results = {}
returned = []  # per input set: the length of every layer's returned keys
for feeds in [gemma.inputs, *gemma.other_inputs]:
    with torch.no_grad(), export_patches(model):
        expected = model(**copy.deepcopy(feeds))
    got = session.run(None, ort_feeds(input_names, feeds))
    b, s = feeds["input_ids"].shape
    c = feeds["cache"].layers[1].keys.shape[2]
    assert got[1].shape[2] == window - 1, got[1].shape  # present.0.key: still 15 tokens
    results[f"batch {b}, {s} new, cache {c}"] = max_diff(expected, got)
    outputs = dict(zip(output_names, got, strict=True))
    returned.append([outputs[f"present.{i}.key"].shape[2] for i in layers])

print(f"{'input set':28} {'outputs compared':>16} {'max abs diff':>12}")
for name, diff in results.items():
    print(f"{name:28} {diff['leaves']:16} {diff['abs']:12.3g}")

# %%
# The length of the keys onnxruntime returned for each layer, against the length of
# the text (the full-attention cache it returned): the sliding layer stays at the
# window minus one whatever the text, the full-attention layer grows with it.

# sphinx_gallery_thumbnail_number = 1
import matplotlib.pyplot as plt

full_layer = config.layer_types.index("full_attention")
text_lengths = [lengths[full_layer] for lengths in returned]
fig, ax = plt.subplots(figsize=(6, 3.6))
for i, (kind, marker) in enumerate(zip(config.layer_types, "os", strict=False)):
    ax.plot(text_lengths, [lengths[i] for lengths in returned], marker, label=f"layer {i}: {kind}")
ax.axhline(window - 1, color="tab:red", linestyle="--", label=f"sliding_window - 1 = {window - 1}")
ax.set_xlabel("tokens in the text after the step (cached + new)")
ax.set_ylabel("cached tokens returned")
ax.legend(fontsize=8)
ax.set_title("Gemma 3 in onnxruntime: the cache of each kind of layer")
fig.tight_layout()

# %%
# Five of the six input sets were not seen by the export; on all of them onnxruntime
# computes the logits and both caches that eager computes, within 1e-4.

worst = max(d["abs"] for d in results.values())
assert all(d["mismatch"] is None for d in results.values()), results
assert worst <= 1e-4, f"max abs diff {worst} > 1e-4"
print(
    f"check passed: onnxruntime matches eager beyond the sliding window on {len(results)} "
    f"input sets, max abs diff {worst:.3g} <= 1e-4"
)

# %%
# A Gemma 3 model mixing sliding-window and full-attention layers converts to ONNX
# once the cache length starts at the window, and onnxruntime then matches eager on
# caches longer than the window.
