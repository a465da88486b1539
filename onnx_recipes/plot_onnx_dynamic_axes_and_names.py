"""
Dynamic axes and readable names: from dynamic shapes and a cache to ONNX inputs
===============================================================================

This recipe shows what the ONNX graph of an LLM with a cache looks like from the
outside: which dimensions are symbolic and what they are called, and how to give the
flattened cache tensors names such as ``past_key_values.0.key`` and ``present.0.key``.
The model is an untrained two-layer ``arnir0/Tiny-LLM``; the names are derived from
the pytree paths of the inputs and outputs, so they follow the order the exporter uses.
"""

# %%
# The model, its inputs and dynamic shapes
# ----------------------------------------
#
# :func:`exportcheck.untrained_model` returns the model, inputs for one decode step
# and their dynamic shapes. Two layers make the order of the cache tensors visible.

import torch

from exportcheck import string_type, untrained_model

torch.manual_seed(0)
m = untrained_model("arnir0/Tiny-LLM", num_hidden_layers=2)
print("inputs:", string_type(m.inputs, with_shape=True))
print("dynamic shapes:", string_type(m.dynamic_shapes))

# %%
# The flattened order
# -------------------
#
# ONNX only knows a flat list of tensors. Inside :func:`exportcheck.cache_pytrees`,
# ``tree_flatten_with_path`` gives that list with the path of every leaf: all keys
# of the cache first, then all values. The names are built from those paths.

import copy

import torch.utils._pytree as pytree

from exportcheck import cache_pytrees


def onnx_name(path, prefix):
    """``['cache']['key_cache'][1]`` -> ``<prefix>.1.key``, other leaves keep their key."""
    keys = [k.key if hasattr(k, "key") else k.idx for k in path]
    if keys[0] == m.cache_argument:
        kind = {"key_cache": "key", "value_cache": "value"}[keys[1]]
        return f"{prefix}.{keys[2]}.{kind}"
    return str(keys[0])


with cache_pytrees():
    input_paths = pytree.tree_flatten_with_path(m.inputs)[0]
    output_paths = pytree.tree_flatten_with_path(m.model(**copy.deepcopy(m.inputs)))[0]
input_names = [onnx_name(path, "past_key_values") for path, _ in input_paths]
output_names = [onnx_name(path, "present") for path, _ in output_paths]
for kind, paths, names in (
    ("input ", input_paths, input_names),
    ("output", output_paths, output_names),
):
    for (path, leaf), name in zip(paths, names, strict=True):
        print(f"{kind} {pytree.keystr(path):28} -> {name:24} {tuple(leaf.shape)}")

# %%
# Conversion
# ----------
#
# ``input_names`` and ``output_names`` rename the flat inputs and outputs of the
# graph, in that order. The export sees only the shapes of ``m.inputs``.

import os
import tempfile

workdir = tempfile.TemporaryDirectory(prefix="exportcheck-")  # removed at exit
onnx_path = os.path.join(workdir.name, "tiny_llm_named.onnx")
with cache_pytrees():
    torch.onnx.export(
        m.model,
        (),
        onnx_path,
        kwargs=copy.deepcopy(m.inputs),
        dynamic_shapes=m.dynamic_shapes,
        input_names=input_names,
        output_names=output_names,
        dynamo=True,
    )

# %%
# Symbolic dimensions
# -------------------
#
# Each ``torch.export.Dim`` becomes a named symbolic dimension (``dim_param``) of the
# ONNX graph; ``Dim.DYNAMIC`` gets a generated name. The present cache is
# ``cache_length + seq_length`` long, an expression of two inputs' dimensions.

import onnx


def dims(value_info):
    shape = value_info.type.tensor_type.shape
    return [d.dim_param or d.dim_value for d in shape.dim]


proto = onnx.load(onnx_path, load_external_data=False)
for kind, values in (("input ", proto.graph.input), ("output", proto.graph.output)):
    for v in values:
        print(f"{kind} {v.name:24} {dims(v)}")
assert [v.name for v in proto.graph.input] == input_names
assert [v.name for v in proto.graph.output] == output_names

# %%
# Run and compare
# ---------------
#
# onnxruntime takes a dictionary keyed by these names: :func:`exportcheck.ort_feeds`
# does the same flattening and zips it with the names. Four input sets have shapes
# the export did not see.

import onnxruntime

from exportcheck import max_diff, ort_feeds

session = onnxruntime.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
input_sets = {
    f"batch {b}, {s} new tokens, cache {c}": feeds
    for (b, s, c), feeds in zip(m.shapes, [m.inputs, *m.other_inputs], strict=True)
}
results = {}
for label, feeds in input_sets.items():
    expected = m.model(**copy.deepcopy(feeds))
    got = session.run(output_names, ort_feeds(input_names, feeds))
    results[label] = max_diff(expected, got)

print(f"{'input set (the first is the export inputs)':44} {'outputs':>7} {'max abs diff':>12}")
for label, diff in results.items():
    print(f"{label:44} {diff['leaves']:7} {diff['abs']:12.3g}")

# %%
# Every output of every input set matches eager within float rounding.

worst = max(d["abs"] for d in results.values())
assert all(d["mismatch"] is None for d in results.values()), results
assert worst <= 1e-4, f"max abs diff {worst} > 1e-4"
print(
    f"check passed: named ONNX inputs match eager on {len(results)} input sets, "
    f"max abs diff {worst:.3g} <= 1e-4"
)

# %%
# The dynamic dimensions of the export became named symbolic dimensions of the ONNX
# graph, and the cache tensors got names derived from their pytree paths.
