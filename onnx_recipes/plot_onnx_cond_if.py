"""
Control flow in ONNX: torch.cond becomes an If node
===================================================

A Python ``if`` on the values of a tensor cannot be captured by ``torch.export``:
the trace follows one branch only. This recipe writes the branch with
:func:`torch.cond`, converts the model with ``torch.onnx.export(..., dynamo=True)``,
finds the resulting ONNX ``If`` node with its two subgraphs, and checks in
onnxruntime that both branches compute what eager PyTorch computes.
"""

# %%
# A model with a data-dependent branch
# ------------------------------------
#
# The model scales its input one way when the sum is positive and another way
# otherwise. Both branches take the same operands and return tensors of the same
# shape, which is what :func:`torch.cond` requires.

import torch


class SignDependent(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(8, 8)

    def forward(self, x):
        def positive(x):
            return torch.sigmoid(self.linear(x)) * 2

        def negative(x):
            return torch.cos(x) - 1

        return torch.cond(x.sum() > 0, positive, negative, (x,))


torch.manual_seed(0)
model = SignDependent().eval()
x = torch.rand(4, 8)  # positive sum: the export inputs take the first branch
batch = torch.export.Dim("batch", min=1, max=1024)
dynamic_shapes = {"x": {0: batch}}

# %%
# The ExportedProgram keeps both branches
# ---------------------------------------
#
# ``torch.export`` records a ``torch.ops.higher_order.cond`` node and the two
# branches as submodules, although the export inputs only reach the first one.

ep = torch.export.export(model, (x,), dynamic_shapes=dynamic_shapes)
conds = [n for n in ep.graph.nodes if n.target is torch.ops.higher_order.cond]
print("cond nodes:", [n.name for n in conds])
print("branches:", [name for name, _ in ep.graph_module.named_children()])

# %%
# Conversion to an ONNX If
# ------------------------
#
# The converter turns the cond into an ``If`` node whose attributes
# ``then_branch`` and ``else_branch`` are subgraphs. The condition is an input of
# the node, computed at run time.

import os
import tempfile

import onnx

workdir = tempfile.TemporaryDirectory(prefix="exportcheck-")  # removed at exit
onnx_path = os.path.join(workdir.name, "cond.onnx")
torch.onnx.export(model, (x,), onnx_path, dynamic_shapes=dynamic_shapes, dynamo=True)
proto = onnx.load(onnx_path)
print("top-level ops:", [n.op_type for n in proto.graph.node])
found = [n for n in proto.graph.node if n.op_type == "If"]
for node in found:
    print(f"If node {node.name!r}, condition input {node.input[0]!r}")
    for attr in node.attribute:
        print(f"  {attr.name}: {[n.op_type for n in attr.g.node]}")
assert found, "no If node in the ONNX model"

# %%
# Both branches in onnxruntime
# ----------------------------
#
# Inputs of other batch sizes, some with a positive sum and some with a negative
# one, run through onnxruntime and eager. The branch each one takes is printed.

import onnxruntime

from exportcheck import max_diff

session = onnxruntime.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
input_name = session.get_inputs()[0].name
input_sets = {
    "batch 1, positive": torch.rand(1, 8),
    "batch 7, positive": torch.rand(7, 8),
    "batch 3, negative": -torch.rand(3, 8),
    "batch 10, negative": -torch.rand(10, 8),
}
results = {}
for name, feed in input_sets.items():
    expected = model(feed)
    (got,) = session.run(None, {input_name: feed.numpy()})
    results[name] = max_diff(expected, got)
    branch = "then (positive)" if feed.sum() > 0 else "else (negative)"
    print(f"{name:20} {branch:16} max abs diff {results[name]['abs']:.3g}")

# %%
# Both branches agree with eager on batch sizes the export did not see.

worst = max(d["abs"] for d in results.values())
assert all(d["mismatch"] is None for d in results.values()), results
assert worst <= 1e-4, f"max abs diff {worst} > 1e-4"
print(
    f"check passed: the ONNX If matches eager on both branches, {len(results)} input sets, "
    f"max abs diff {worst:.3g} <= 1e-4"
)

# %%
# ``torch.cond`` kept both branches through ``torch.export`` and became one ONNX
# ``If`` node, and onnxruntime picks the right branch at run time.
