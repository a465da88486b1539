"""
What optimize=True changes: Tiny-LLM converted with and without the ONNX optimizer
==================================================================================

``torch.onnx.export(..., dynamo=True)`` runs an ONNX optimizer (constant folding,
removal of dead and redundant nodes, fusion of patterns) unless ``optimize=False``.
This recipe converts the untrained ``arnir0/Tiny-LLM`` both ways, inspects both
graphs with ``onnx_ir`` (node count, operator histogram, file size), times them in
onnxruntime side by side on one thread, and checks that both compute what eager
PyTorch computes.
"""

# %%
# The model and both conversions
# ------------------------------
#
# The same model, inputs and dynamic shapes are converted twice; only ``optimize``
# differs.

import copy
import os
import tempfile

import torch

from exportcheck import cache_pytrees, ort_feeds, string_type, untrained_model

torch.manual_seed(0)
m = untrained_model("arnir0/Tiny-LLM")
print("inputs:", string_type(m.inputs, with_shape=True))

workdir = tempfile.TemporaryDirectory(prefix="exportcheck-")  # removed at exit
paths = {}
for optimize in (False, True):
    name = "optimized" if optimize else "not optimized"
    paths[name] = os.path.join(workdir.name, f"tiny_llm_optimize_{optimize}.onnx")
    with cache_pytrees():
        torch.onnx.export(
            m.model,
            (),
            paths[name],
            kwargs=copy.deepcopy(m.inputs),
            dynamic_shapes=m.dynamic_shapes,
            optimize=optimize,
            dynamo=True,
        )

# %%
# The graphs, read with onnx_ir
# -----------------------------
#
# ``onnx_ir.load`` gives a graph whose nodes can be iterated; ``all_nodes`` also
# walks subgraphs. The optimized graph has fewer nodes: shape computations folded
# into constants and unused nodes removed. The weights, which make most of the
# bytes, are the same.

import collections

import onnx_ir


def summary(path):
    model = onnx_ir.load(path)
    ops = collections.Counter(node.op_type for node in model.graph.all_nodes())
    files = [f for f in os.listdir(workdir.name) if f.startswith(os.path.basename(path))]
    return dict(
        nodes=sum(ops.values()),
        ops=ops,
        functions=len(model.functions),
        initializers=len(model.graph.initializers),
        graph_kib=os.path.getsize(path) / 2**10,
        total_mib=sum(os.path.getsize(os.path.join(workdir.name, f)) for f in files) / 2**20,
    )


summaries = {name: summary(path) for name, path in paths.items()}
print(
    f"{'':14} {'nodes':>6} {'functions':>9} {'initializers':>12} {'.onnx KiB':>10} {'all MiB':>8}"
)
for name, s in summaries.items():
    print(
        f"{name:14} {s['nodes']:6} {s['functions']:9} {s['initializers']:12} "
        f"{s['graph_kib']:10.1f} {s['total_mib']:8.1f}"
    )

# %%
# The operator histogram shows where the nodes went: ``Constant`` nodes became
# initializers, and most ``Reshape``, ``Cast`` and ``Transpose`` nodes were folded
# or removed. Operators whose count did not change are summed on the last line.

before, after = summaries["not optimized"]["ops"], summaries["optimized"]["ops"]
all_ops = sorted(set(before) | set(after), key=lambda op: (after[op] - before[op], op))
changed = [op for op in all_ops if before[op] != after[op]]
unchanged = [op for op in all_ops if before[op] == after[op]]
print(f"{'op_type':24} {'not optimized':>13} {'optimized':>9}")
for op in changed:
    print(f"{op:24} {before[op]:13} {after[op]:9}")
same = sum(after[op] for op in unchanged)
print(f"{f'{len(unchanged)} other types':24} {same:13} {same:9}")

# %%
# Latency in onnxruntime
# ----------------------
#
# Both sessions run on one thread and take turns on the same inputs, so the
# background load affects both alike. onnxruntime applies its own graph
# optimizations at session creation, which narrows the gap: the ratio is what this
# machine measured, not a general claim.

import time

import numpy as np
import onnxruntime


def make_session(path):
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])


sessions = {name: make_session(path) for name, path in paths.items()}


timings = {name: [] for name in sessions}
for _ in range(3):  # warm-up
    for session in sessions.values():
        session.run(None, ort_feeds(session, m.inputs))
for _ in range(30):
    for name, session in sessions.items():
        feeds = ort_feeds(session, m.inputs)
        begin = time.perf_counter()
        session.run(None, feeds)
        timings[name].append(time.perf_counter() - begin)
median = {name: float(np.median(t)) for name, t in timings.items()}
ratio = median["not optimized"] / median["optimized"]
for name, value in median.items():
    print(f"{name:14} median {value * 1e3:.2f} ms over {len(timings[name])} runs")
print(f"not optimized / optimized latency: {ratio:.2f}")

# %%
# Node count and latency side by side.

import matplotlib.pyplot as plt

fig, axes = plt.subplots(1, 2, figsize=(8, 3.5))
names = list(summaries)
axes[0].bar(names, [summaries[n]["nodes"] for n in names], color=["tab:gray", "tab:blue"])
axes[0].set_title("ONNX nodes")
axes[1].bar(names, [median[n] * 1e3 for n in names], color=["tab:gray", "tab:blue"])
axes[1].set_title(f"onnxruntime median latency, 1 thread (ratio {ratio:.2f})")
axes[1].set_ylabel("ms")
fig.suptitle("Tiny-LLM decode step, optimize=False vs optimize=True")
fig.tight_layout()

# %%
# Both agree with eager
# ---------------------
#
# The optimizer must not change the results: both models run on the six input
# sets, five of which have shapes the export did not see.

from exportcheck import max_diff

results = {}
with cache_pytrees():
    for (b, s, c), inputs in zip(m.shapes, [m.inputs, *m.other_inputs], strict=True):
        expected = m.model(**copy.deepcopy(inputs))
        for name, session in sessions.items():
            got = session.run(None, ort_feeds(session, inputs))
            results[(f"batch {b}, {s} new tokens, cache {c}", name)] = max_diff(expected, got)
print(f"{'input set':32} {'model':14} {'max abs diff':>12}")
for (label, name), diff in results.items():
    print(f"{label:32} {name:14} {diff['abs']:12.3g}")

# %%
# Every output of both models matches eager within float rounding.

worst = max(d["abs"] for d in results.values())
assert all(d["mismatch"] is None for d in results.values()), results
assert worst <= 1e-4, f"max abs diff {worst} > 1e-4"
print(
    f"check passed: optimized ({summaries['optimized']['nodes']} nodes) and not optimized "
    f"({summaries['not optimized']['nodes']} nodes) match eager on {len(m.shapes)} input sets, "
    f"max abs diff {worst:.3g} <= 1e-4"
)

# %%
# ``optimize=True`` gives a smaller graph with the same weights and the same results;
# how much faster it runs depends on what onnxruntime's own optimizations already do.

# sphinx_gallery_thumbnail_number = 1
