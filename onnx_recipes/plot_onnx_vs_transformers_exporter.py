"""
Tiny-LLM to ONNX two ways: exportcheck and transformers' OnnxExporter
=====================================================================

transformers ships its own converter, ``transformers.exporters.OnnxExporter``. This
recipe converts the same untrained Tiny-LLM with exportcheck (``torch.export``
inside :func:`exportcheck.export_patches`, then ``torch.onnx.export`` of the
ExportedProgram) and with ``OnnxExporter``, and compares the export time, the
graphs, their input and output names, and the discrepancies against eager PyTorch
on input sets of other shapes.
"""

# %%
# The model and its inputs
# ------------------------
#
# :func:`exportcheck.untrained_model` builds Tiny-LLM with random weights, the
# inputs of one decode step, their dynamic shapes, and four input sets of other
# shapes. The eager outputs are computed first, before either converter touches the
# model.

import copy

import torch

from exportcheck import untrained_model

m = untrained_model("arnir0/Tiny-LLM")
print(m.describe())
with torch.no_grad():
    expected = [m.model(**copy.deepcopy(feeds)) for feeds in m.other_inputs]

# %%
# Both conversions, timed in the same process
# -------------------------------------------
#
# A small warm-up export first loads the ONNX translation registry, so that neither
# conversion pays for it. Times cover the conversion and the writing of the files;
# they are noisy (a single run, on a shared machine) and only the order of
# magnitude is worth reading.

import os
import tempfile
import time

from transformers.exporters import OnnxConfig, OnnxExporter

from exportcheck import export_patches

workdir = tempfile.TemporaryDirectory(prefix="exportcheck-")  # removed at exit
torch.onnx.export(
    torch.nn.Linear(2, 2).eval(), (torch.randn(1, 2),), os.path.join(workdir.name, "warmup.onnx")
)

exportcheck_path = os.path.join(workdir.name, "exportcheck.onnx")
begin = time.perf_counter()
with export_patches(m.model), torch.no_grad():
    ep = torch.export.export(
        m.model, (), kwargs=copy.deepcopy(m.inputs), dynamic_shapes=m.dynamic_shapes
    )
    torch.onnx.export(ep, (), exportcheck_path, kwargs=copy.deepcopy(m.inputs), dynamo=True)
seconds = {"exportcheck": time.perf_counter() - begin}

transformers_folder = os.path.join(workdir.name, "transformers")
begin = time.perf_counter()
exported = OnnxExporter().export(m.model, copy.deepcopy(m.inputs), OnnxConfig(dynamic=True))
exported.save_pretrained(transformers_folder)
seconds["OnnxExporter"] = time.perf_counter() - begin
print("files written by OnnxExporter:", sorted(os.listdir(transformers_folder)))
transformers_path = os.path.join(transformers_folder, "model.onnx")
for way, s in seconds.items():
    print(f"export time {way:12} {s:6.1f} s")

# %%
# The two graphs
# --------------
#
# Both graphs take and return the same tensors under different names: exportcheck
# keeps the FX names of the outputs (no ``output_names`` given), ``OnnxExporter``
# names them. Its ``Dim.AUTO`` shapes give the batch of ``attention_mask`` its own
# symbol, where exportcheck's dynamic shapes tie it to the other inputs.

import onnx
import onnxruntime

paths = {"exportcheck": exportcheck_path, "OnnxExporter": transformers_path}
sessions = {}
for way, path in paths.items():
    proto = onnx.load(path, load_external_data=False)
    print(f"{way}: {len(proto.graph.node)} nodes, {len(proto.functions)} local functions")
    sessions[way] = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    for kind, values in (
        ("input ", sessions[way].get_inputs()),
        ("output", sessions[way].get_outputs()),
    ):
        for v in values:
            print(f"  {kind} {v.name:32} {v.shape}")

# %%
# Feeding each graph
# ------------------
#
# exportcheck's graph takes the flattened inputs in pytree order, which
# :func:`exportcheck.ort_feeds` reproduces. ``OnnxExporter`` names its inputs after
# their path, ``input.cache.layers.<i>.keys``, so each name is mapped to the tensor it
# designates in the cache.

from exportcheck import ort_feeds


def onnx_exporter_feeds(session, inputs):
    """Each input name of the OnnxExporter graph mapped to its tensor."""
    feeds = {}
    for i in session.get_inputs():
        if i.name.startswith("input.cache.layers."):
            _, _, _, layer, kind = i.name.split(".")
            feeds[i.name] = getattr(inputs["cache"].layers[int(layer)], kind).numpy()
        else:
            feeds[i.name] = inputs[i.name].numpy()
    return feeds


feeders = {"exportcheck": ort_feeds, "OnnxExporter": onnx_exporter_feeds}
for way, feeder in feeders.items():
    print(way, "feeds:", list(feeder(sessions[way], m.inputs)))

# %%
# Run and compare
# ---------------
#
# Both graphs run on the four input sets the export did not see, and each output is
# compared with eager: logits and the grown cache.

from exportcheck import max_diff

results = {}
for (b, s, c), feeds, eager in zip(m.shapes[1:], m.other_inputs, expected, strict=True):
    label = f"batch {b}, {s} new tokens, cache {c}"
    for way, feeder in feeders.items():
        got = sessions[way].run(None, feeder(sessions[way], feeds))
        results[label, way] = max_diff(eager, got)
print(f"{'input set':32} {'converter':12} {'outputs':>7} {'max abs diff':>12}")
for (label, way), diff in results.items():
    print(f"{label:32} {way:12} {diff['leaves']:7} {diff['abs']:12.3g}")

# %%
# Both converted models compute what eager computes, within float rounding.

worst = max(d["abs"] for d in results.values())
assert all(d["mismatch"] is None for d in results.values()), results
assert worst <= 1e-4, f"max abs diff {worst} > 1e-4"
print(
    f"check passed: exportcheck and OnnxExporter graphs match eager on "
    f"{len(m.other_inputs)} unseen input sets each, max abs diff {worst:.3g} <= 1e-4"
)

# %%
# exportcheck and ``transformers.exporters.OnnxExporter`` both convert Tiny-LLM into
# graphs that agree with eager PyTorch; they differ in input names and graph size.
