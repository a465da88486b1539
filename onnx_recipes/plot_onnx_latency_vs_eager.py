"""
onnxruntime against eager PyTorch: latency over batch, sequence and cache length
================================================================================

This recipe times one decode step of the untrained ``arnir0/Tiny-LLM`` in eager
PyTorch and in onnxruntime, both on one thread, while batch size, number of new
tokens and cache length vary one at a time. It draws the latencies, prints the
ratio onnxruntime / eager for every shape, and checks that both runtimes compute the
same outputs on every measured shape.
"""

# %%
# The model and an input factory
# ------------------------------
#
# The decode-step inputs are random ids and a random cache of the wanted length;
# :func:`exportcheck.untrained_model` also gives the dynamic shapes.

import torch

from exportcheck import make_dynamic_cache, string_type, untrained_model

torch.set_num_threads(1)
tiny = untrained_model("arnir0/Tiny-LLM")
model, config = tiny.model, tiny.config
n_layers = config.num_hidden_layers
head_dim = config.hidden_size // config.num_attention_heads


def decode_inputs(batch, seq_length, cache_length, seed=0):
    """Inputs of one decode step: new tokens and a filled cache."""
    generator = torch.Generator().manual_seed(seed)
    shape = (batch, config.num_key_value_heads, cache_length, head_dim)
    return dict(
        input_ids=torch.randint(0, config.vocab_size, (batch, seq_length), generator=generator),
        attention_mask=torch.ones((batch, cache_length + seq_length), dtype=torch.int64),
        cache=make_dynamic_cache(
            [
                (torch.randn(shape, generator=generator), torch.randn(shape, generator=generator))
                for _ in range(n_layers)
            ]
        ),
    )


print("export inputs:", string_type(tiny.inputs, with_shape=True))

# %%
# Conversion and the onnxruntime session
# --------------------------------------
#
# The session runs on one thread, as does torch, so the comparison is between the
# kernels and not between thread pools.

import copy
import os
import tempfile

import onnxruntime

from exportcheck import export_patches

input_names = [
    "input_ids",
    "attention_mask",
    *[f"past_key_values.{i}.key" for i in range(n_layers)],
    *[f"past_key_values.{i}.value" for i in range(n_layers)],
]
workdir = tempfile.TemporaryDirectory(prefix="exportcheck-")  # removed at exit
onnx_path = os.path.join(workdir.name, "tiny_llm_step.onnx")
with export_patches(model):
    torch.onnx.export(
        model,
        (),
        onnx_path,
        kwargs=copy.deepcopy(tiny.inputs),
        dynamic_shapes=tiny.dynamic_shapes,
        input_names=input_names,
        dynamo=True,
    )
options = onnxruntime.SessionOptions()
options.intra_op_num_threads = 1
options.inter_op_num_threads = 1
session = onnxruntime.InferenceSession(onnx_path, options, providers=["CPUExecutionProvider"])
print("torch threads:", torch.get_num_threads(), "| onnxruntime intra-op threads: 1")

# %%
# Side-by-side measurement
# ------------------------
#
# Starting from batch 2, 1 new token and 128 cached tokens, one dimension varies at a
# time. For every shape the two runtimes alternate, after a warm-up call each, and
# the median of 7 repetitions is kept. Each shape also compares the outputs.

import statistics
import time

from exportcheck import max_diff, ort_feeds

base = dict(batch=2, seq_length=1, cache_length=128)
sweeps = {
    "batch": [1, 2, 4, 8],
    "seq_length": [1, 4, 16, 64],
    "cache_length": [16, 128, 512, 2048],
}
repeat = 7


def measure(feeds):
    """Median latencies (s) of eager and onnxruntime, and their max abs diff."""
    flat = ort_feeds(input_names, feeds)
    times = {"eager": [], "onnxruntime": []}
    with torch.no_grad():
        expected = model(**copy.deepcopy(feeds))
        got = session.run(None, flat)
        for _ in range(repeat):
            fresh = copy.deepcopy(feeds)  # eager appends to the cache it is given
            begin = time.perf_counter()
            model(**fresh)
            times["eager"].append(time.perf_counter() - begin)
            begin = time.perf_counter()
            session.run(None, flat)
            times["onnxruntime"].append(time.perf_counter() - begin)
    diff = max_diff(expected, got)
    return {k: statistics.median(v) for k, v in times.items()}, diff


rows = []
for dim, values in sweeps.items():
    for value in values:
        shape = {**base, dim: value}
        medians, diff = measure(decode_inputs(**shape))
        rows.append(dict(dim=dim, **shape, **medians, diff=diff["abs"], mismatch=diff["mismatch"]))
print(f"measured {len(rows)} shapes x {repeat} repetitions x 2 runtimes")

# %%
# The latencies
# -------------
#
# Absolute times are noisy: they depend on the machine and on what else runs on it.
# Both runtimes ran side by side on the same shapes, so their ratio is what matters.

# sphinx_gallery_thumbnail_number = 1
import matplotlib.pyplot as plt

fig, axes = plt.subplots(1, 3, figsize=(12, 3.6))
for ax, (dim, values) in zip(axes, sweeps.items(), strict=True):
    selected = [r for r in rows if r["dim"] == dim]
    for runtime, marker in (("eager", "o"), ("onnxruntime", "s")):
        ax.plot(values, [r[runtime] * 1e3 for r in selected], marker=marker, label=runtime)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel(dim)
    ax.set_title(", ".join(f"{k}={v}" for k, v in base.items() if k != dim), fontsize=9)
axes[0].set_ylabel("median latency (ms), 1 thread")
axes[0].legend()
fig.suptitle("Tiny-LLM decode step: eager PyTorch vs onnxruntime")
fig.tight_layout()

# %%
# The ratio table: below 1, onnxruntime is faster than eager on that shape.

print(
    f"{'varied':>12} {'batch':>5} {'seq':>4} {'cache':>5} {'eager ms':>9} "
    f"{'ort ms':>8} {'ort/eager':>9} {'max abs diff':>12}"
)
for r in rows:
    print(
        f"{r['dim']:>12} {r['batch']:5} {r['seq_length']:4} {r['cache_length']:5} "
        f"{r['eager'] * 1e3:9.3f} {r['onnxruntime'] * 1e3:8.3f} "
        f"{r['onnxruntime'] / r['eager']:9.2f} {r['diff']:12.3g}"
    )
ratios = [r["onnxruntime"] / r["eager"] for r in rows]
print(f"median ratio onnxruntime / eager: {statistics.median(ratios):.2f}")

# %%
# None of the measured shapes is the one the export saw (batch 2, 3 new tokens,
# 30 cached), and on all of them onnxruntime computes what eager computes, within
# 1e-4.

worst = max(r["diff"] for r in rows)
assert all(r["mismatch"] is None for r in rows), [r["mismatch"] for r in rows]
assert worst <= 1e-4, f"max abs diff {worst} > 1e-4"
print(
    f"check passed: onnxruntime matches eager on all {len(rows)} measured shapes, "
    f"max abs diff {worst:.3g} <= 1e-4"
)

# %%
# One decode step timed in both runtimes on one thread, over batch, sequence and cache
# length, with the outputs of both checked on every measured shape.
