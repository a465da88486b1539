"""
A mixture-of-experts model in ONNX: Mixtral and the grouped_mm experts
======================================================================

transformers runs the experts of its mixture-of-experts layers with a
``grouped_mm`` implementation by default, a custom operator the ONNX converter
cannot translate. This recipe converts a tiny untrained Mixtral, shows the failure,
converts it again inside :func:`exportcheck.export_patches`, which switches the
experts to the ``batched_mm`` implementation, and checks the result in onnxruntime
on shapes the export did not see.
"""

# %%
# The model
# ---------
#
# ``untrained_model("mixtral")`` shrinks the Mixtral architecture: two layers, a
# few experts, two of them active per token. The config says which implementation
# runs the experts.

import torch

from exportcheck import string_type, untrained_model

torch.manual_seed(0)
m = untrained_model("mixtral")
config = m.config
print(
    f"{type(m.model).__name__}: {config.num_hidden_layers} layers, "
    f"{config.num_local_experts} experts, {config.num_experts_per_tok} per token"
)
print("experts implementation:", config._experts_implementation)
print("inputs:", string_type(m.inputs, with_shape=True))

# %%
# The failure
# -----------
#
# ``torch.export`` succeeds, but the translation to ONNX stops at the custom
# operator ``transformers.grouped_mm_fallback``: no ONNX function implements it.
# The exporter raises :class:`torch.onnx.OnnxExporterError`; the cause at the bottom
# of the chain names the operator.

import copy
import os
import tempfile

from exportcheck import cache_pytrees

workdir = tempfile.TemporaryDirectory(prefix="exportcheck-")  # removed at exit
onnx_path = os.path.join(workdir.name, "mixtral.onnx")
try:
    with cache_pytrees():
        torch.onnx.export(
            m.model,
            (),
            onnx_path,
            kwargs=copy.deepcopy(m.inputs),
            dynamic_shapes=m.dynamic_shapes,
            dynamo=True,
        )
except torch.onnx.OnnxExporterError as e:
    cause = e
    while cause.__cause__ is not None:
        cause = cause.__cause__
    message = str(cause).splitlines()[0]
    print(f"{type(e).__name__} caused by {type(cause).__name__}:")
    print(f"  {message}")
    assert "grouped_mm" in message and "No ONNX function found" in message, message
else:
    raise AssertionError(
        "Mixtral converts without the patch: grouped_mm no longer fails, update this recipe"
    )

# %%
# The fix
# -------
#
# Inside :func:`exportcheck.export_patches`, the experts run with ``batched_mm``,
# plain batched matrix multiplications the converter knows. The patch also
# registers the cache as a pytree node, and restores the config on exit.

from exportcheck import export_patches

with export_patches(m.model):
    print("experts implementation inside the patch:", config._experts_implementation)
    torch.onnx.export(
        m.model,
        (),
        onnx_path,
        kwargs=copy.deepcopy(m.inputs),
        dynamic_shapes=m.dynamic_shapes,
        dynamo=True,
    )
print("experts implementation after the patch:", config._experts_implementation)

# %%
# The ONNX graph has no custom operator left: every node is a standard ONNX one.

import collections

import onnx

proto = onnx.load(onnx_path, load_external_data=False)
domains = collections.Counter(node.domain or "ai.onnx" for node in proto.graph.node)
print("nodes per domain:", dict(domains))
print("MatMul nodes:", sum(node.op_type == "MatMul" for node in proto.graph.node))

# %%
# Run and compare
# ---------------
#
# onnxruntime runs the converted model on the export inputs and four input sets of
# other shapes. The eager reference runs with the default ``grouped_mm`` experts,
# outside the patch, so the comparison also covers the change of implementation.

import onnxruntime

from exportcheck import max_diff, ort_feeds

session = onnxruntime.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
results = {}
for (b, s, c), inputs in zip(m.shapes, [m.inputs, *m.other_inputs], strict=True):
    expected = m.model(**copy.deepcopy(inputs))
    got = session.run(None, ort_feeds(session, inputs))
    results[f"batch {b}, {s} new tokens, cache {c}"] = max_diff(expected, got)
print(f"{'input set (the first is the export inputs)':44} {'outputs':>7} {'max abs diff':>12}")
for label, diff in results.items():
    print(f"{label:44} {diff['leaves']:7} {diff['abs']:12.3g}")

# %%
# Logits and cache match eager within float rounding on every input set.

worst = max(d["abs"] for d in results.values())
assert all(d["mismatch"] is None for d in results.values()), results
assert worst <= 1e-4, f"max abs diff {worst} > 1e-4"
print(
    f"check passed: Mixtral converted with batched_mm experts matches eager on "
    f"{len(results)} input sets, max abs diff {worst:.3g} <= 1e-4"
)

# %%
# The default ``grouped_mm`` experts block the ONNX conversion of Mixtral;
# ``export_patches`` switches them to ``batched_mm`` and the converted model computes
# what eager PyTorch computes.
