"""
Export an LLM with its cache to ONNX: Tiny-LLM in onnxruntime, checked
======================================================================

This recipe converts ``arnir0/Tiny-LLM`` (a one-layer Llama, untrained, built from
its shipped config) into ONNX with ``torch.onnx.export(..., dynamo=True)``, runs it
with onnxruntime, and checks it against eager PyTorch on input shapes the export did
not see.

The steps: build the model with inputs and dynamic shapes, convert, read the inputs
and outputs of the ONNX graph, run and compare.
"""

# %%
# The model, its inputs and dynamic shapes
# ----------------------------------------
#
# The inputs are one decode step: 3 new tokens for a batch of 2, with 30 tokens
# already in the cache. Batch, sequence and cache length are dynamic.

import torch
from transformers import AutoModelForCausalLM

from exportcheck import get_config, make_dynamic_cache, string_type

torch.manual_seed(0)
config = get_config("arnir0/Tiny-LLM")
model = AutoModelForCausalLM.from_config(config).eval()
head_dim = config.hidden_size // config.num_attention_heads
n_layers = config.num_hidden_layers


def decode_inputs(batch, seq_length, cache_length):
    """Inputs of one decode step with a filled cache."""
    shape = (batch, config.num_key_value_heads, cache_length, head_dim)
    return dict(
        input_ids=torch.randint(0, config.vocab_size, (batch, seq_length)),
        attention_mask=torch.ones((batch, cache_length + seq_length), dtype=torch.int64),
        cache=make_dynamic_cache(
            [(torch.randn(shape), torch.randn(shape)) for _ in range(n_layers)]
        ),
    )


batch = torch.export.Dim("batch", min=1, max=1024)
seq_length = torch.export.Dim("seq_length", min=1, max=4096)
cache_length = torch.export.Dim("cache_length", min=1, max=4096)
dynamic_shapes = dict(
    input_ids={0: batch, 1: seq_length},
    attention_mask={0: batch, 1: torch.export.Dim.DYNAMIC},
    cache=[
        [{0: batch, 2: cache_length} for _ in range(n_layers)],
        [{0: batch, 2: cache_length} for _ in range(n_layers)],
    ],
)
inputs = decode_inputs(2, 3, 30)
print("inputs:", string_type(inputs, with_shape=True))

# %%
# Conversion
# ----------
#
# The conversion runs ``torch.export`` first, so the cache must be a pytree node:
# :func:`exportcheck.cache_pytrees` registers it for the duration of the block.
# Inputs and outputs get readable names; the flattened cache comes in the order
# ``key_cache[0..L-1]`` then ``value_cache[0..L-1]``.

import copy
import os
import tempfile

from exportcheck import cache_pytrees

input_names = [
    "input_ids",
    "attention_mask",
    *[f"past_key_values.{i}.key" for i in range(n_layers)],
    *[f"past_key_values.{i}.value" for i in range(n_layers)],
]
output_names = [
    "logits",
    *[f"present.{i}.key" for i in range(n_layers)],
    *[f"present.{i}.value" for i in range(n_layers)],
]

workdir = tempfile.TemporaryDirectory(prefix="exportcheck-")  # removed at exit
folder = workdir.name
onnx_path = os.path.join(folder, "tiny_llm.onnx")
with cache_pytrees():
    torch.onnx.export(
        model,
        (),
        onnx_path,
        kwargs=copy.deepcopy(inputs),
        dynamic_shapes=dynamic_shapes,
        input_names=input_names,
        output_names=output_names,
        dynamo=True,
    )
for name in sorted(os.listdir(folder)):
    print(f"written: {name} ({os.path.getsize(os.path.join(folder, name)) / 2**20:.1f} MiB)")

# %%
# The symbolic dimensions of the ONNX graph carry the names of the dynamic
# dimensions; the cache outputs are ``cache_length + seq_length`` long.

import onnxruntime

session = onnxruntime.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
for kind, values in (("input ", session.get_inputs()), ("output", session.get_outputs())):
    for v in values:
        print(f"{kind} {v.name:26} {v.type:16} {v.shape}")

# %%
# Run and compare
# ---------------
#
# onnxruntime takes the flattened inputs, in the order the pytree gives them:
# :func:`exportcheck.ort_feeds` flattens an input set and names its tensors. The
# eager model receives a deep copy of each input set, since it appends to the cache.

from exportcheck import max_diff, ort_feeds

input_sets = {
    "export inputs": inputs,
    "batch 1, 1 token, cache 5": decode_inputs(1, 1, 5),
    "batch 2, 1 token, cache 100": decode_inputs(2, 1, 100),
    "batch 3, 4 tokens, cache 47": decode_inputs(3, 4, 47),
}
results = {}
for name, feeds in input_sets.items():
    expected = model(**copy.deepcopy(feeds))
    got = session.run(None, ort_feeds(session, feeds))
    results[name] = max_diff(expected, got)

print(f"{'input set':30} {'outputs compared':>16} {'max abs diff':>12}")
for name, diff in results.items():
    print(f"{name:30} {diff['leaves']:16} {diff['abs']:12.3g}")

# %%
# onnxruntime reorders floating-point sums, so results differ from eager in the last
# bits; 1e-4 is far below any difference that would change a generated token.

worst = max(d["abs"] for d in results.values())
assert all(d["mismatch"] is None for d in results.values()), results
assert worst <= 1e-4, f"max abs diff {worst} > 1e-4"
print(
    f"check passed: onnxruntime matches eager on {len(results)} input sets, max abs diff {worst:.3g} <= 1e-4"
)

# %%
# The untrained Tiny-LLM converted to ONNX with dynamic batch, sequence and cache
# length, and onnxruntime computes what eager PyTorch computes on other shapes.
