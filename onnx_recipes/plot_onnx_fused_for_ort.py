"""
Fused for onnxruntime: attention and layer norms as contrib operators, checked
==============================================================================

onnxruntime runs faster when a graph uses its fused contrib operators
(``GroupQueryAttention``, ``SkipSimplifiedLayerNormalization``, ...) instead of the
dozens of small nodes ``torch.onnx.export`` writes for an attention layer. This recipe
converts a two-layer model of SmolLM2-135M's width (untrained, grouped-query attention,
rotary embeddings), rewrites it with :func:`exportcheck.runtimes.onnx_ort.fuse_for_ort`,
compares the operator histograms before and after, times one decode step of both graphs
side by side, and checks the fused graph against eager on input sets the export did not
see.
"""

# %%
# The model and its conversion
# ----------------------------
#
# The shipped config of ``HuggingFaceTB/SmolLM2-135M`` with two layers: its widths
# (576 hidden, 9 query heads sharing 3 key-value heads) are the real ones.

import copy
import os
import tempfile

import torch

from exportcheck import export_patches, string_type, untrained_model

config_layers = 2
m = untrained_model("HuggingFaceTB/SmolLM2-135M", num_hidden_layers=config_layers)
print("inputs:", string_type(m.inputs, with_shape=True))

workdir = tempfile.TemporaryDirectory(prefix="exportcheck-")  # removed at exit
folder = workdir.name
plain_path = os.path.join(folder, "plain.onnx")
with export_patches(m.model), torch.no_grad():
    ep = torch.export.export(
        m.model, (), kwargs=copy.deepcopy(m.inputs), dynamic_shapes=m.dynamic_shapes
    )
    torch.onnx.export(ep, (), plain_path, kwargs=copy.deepcopy(m.inputs), dynamo=True)

# %%
# The fusions
# -----------
#
# ``fuse_for_ort`` applies onnxscript's onnxruntime fusions, then hands each attention
# over the cache to ``GroupQueryAttention`` with the graph's mask kept
# (``group_query_attention``), packs the projections that read one input into one
# ``MatMul`` (``packed_matmul``: queries, keys and values; the MLP's gate and up), moves
# the rotary embedding into the attention operator, which then reads the packed
# projections as they are (``rotary_in_group_query_attention``), and records how many of
# each it applied in the model's metadata.

from exportcheck.runtimes.onnx_ort import fuse_for_ort

fused_path = os.path.join(folder, "fused.onnx")
fusions = fuse_for_ort(plain_path, fused_path)
print("fusions applied:", fusions)

# %%
# The operator histograms: the attention's MatMul, Softmax and masking nodes, and the
# ``Expand`` that repeats the cached keys and values for each of the 3 query heads of a
# group, become one ``GroupQueryAttention`` per layer, which reads each cached key once
# and rotates the queries and keys itself; five projection ``MatMul`` nodes per layer
# become three; a residual Add followed by an RMS norm becomes one
# ``SkipSimplifiedLayerNormalization``.

import collections

import onnx


def histogram(path):
    proto = onnx.load(path, load_external_data=False)
    return collections.Counter(node.op_type for node in proto.graph.node)


before, after = histogram(plain_path), histogram(fused_path)
print(f"{'operator':>34} {'plain':>6} {'fused':>6}")
for op in sorted(set(before) | set(after), key=lambda o: -(before[o] + after[o])):
    print(f"{op:>34} {before[op]:6} {after[op]:6}")
print(f"{'nodes':>34} {sum(before.values()):6} {sum(after.values()):6}")
assert after["GroupQueryAttention"] == config_layers and not after["MultiHeadAttention"]
assert fusions["rotary_in_group_query_attention"] == config_layers and not after["RotaryEmbedding"]

# %%
# The same histogram as a picture: the fused graph has fewer, larger nodes.

import matplotlib.pyplot as plt

ops = sorted(set(before) | set(after), key=lambda o: -(before[o] + after[o]))[:18]
fig, ax = plt.subplots(figsize=(8, 5))
y = range(len(ops))
ax.barh([i + 0.2 for i in y], [before[o] for o in ops], height=0.4, label="plain")
ax.barh([i - 0.2 for i in y], [after[o] for o in ops], height=0.4, label="fused")
ax.set_yticks(list(y), ops)
ax.invert_yaxis()
ax.set_xlabel("nodes")
ax.set_title("operators before and after fuse_for_ort (2 layers)")
ax.legend()
fig.tight_layout()

# %%
# One decode step, timed side by side
# -----------------------------------
#
# One new token after 128 cached ones, batch 1: the shape of token-by-token generation.
# Both sessions take the same feeds; the two graphs are timed in alternation so that
# both see the same machine load.

import statistics
import time

import onnxruntime

from exportcheck import make_dynamic_cache, ort_feeds

config = m.config
heads, dim = config.num_key_value_heads, config.hidden_size // config.num_attention_heads
torch.manual_seed(1)
step = dict(
    input_ids=torch.randint(3, config.vocab_size, (1, 1)),
    attention_mask=torch.ones(1, 129, dtype=torch.int64),
    cache=make_dynamic_cache(
        [(torch.randn(1, heads, 128, dim), torch.randn(1, heads, 128, dim)) for _ in range(2)]
    ),
)
options = onnxruntime.SessionOptions()
options.intra_op_num_threads = 2
sessions = {
    name: onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    for name, path in [("plain", plain_path), ("fused", fused_path)]
}
feeds = ort_feeds(sessions["plain"], step)
times = {"plain": [], "fused": []}
for _ in range(30):
    for name, session in sessions.items():
        begin = time.perf_counter()
        session.run(None, feeds)
        times[name].append(time.perf_counter() - begin)
ms = {name: 1e3 * statistics.median(t[5:]) for name, t in times.items()}
print(f"decode step, batch 1, 128 cached: plain {ms['plain']:.2f} ms, fused {ms['fused']:.2f} ms")
print(f"fused / plain: {ms['fused'] / ms['plain']:.2f}")

# %%
# At float32 on a CPU, a decode step reads every weight once. With two layers, most of
# it is the vocabulary projection (49152 x 576 weights, read by both graphs alike), so
# the ratio stays near 1 and moves with the machine's load from run to run.
# ``benchmarks/decode_latency.py`` measures the full-size model, where the attention over
# a long cache weighs, against the onnxruntime-genai model builder and against the
# machine's memory bandwidth; its table is on the benchmark page.
#
# The check
# ---------
#
# The fused graph against eager on every input set the export did not see (other
# batch sizes, new-token counts, cache lengths, a padded batch).

from exportcheck import max_diff

worst = 0.0
for inputs in m.other_inputs:
    with torch.no_grad():
        expected = m.model(**copy.deepcopy(inputs))
    got = sessions["fused"].run(None, ort_feeds(sessions["fused"], inputs))
    diff = max_diff(expected, got)["abs"]
    print(f"{string_type(inputs, with_shape=True)[:90]}... max abs diff {diff:.2e}")
    worst = max(worst, diff)
assert worst <= 1e-4, f"the fused graph differs from eager by {worst}"
print(
    f"check passed: the fused graph matches eager on {len(m.other_inputs)} unseen "
    f"input sets, max abs diff {worst:.2e} <= 1e-4"
)

# %%
# The fused graph computes what eager computes on every unseen shape, with fewer nodes;
# ``exportcheck validate SOURCE --optimize ort`` runs the same check, and the generation
# loop, on any model.
