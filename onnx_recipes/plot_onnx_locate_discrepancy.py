"""
Locating a discrepancy: find the first ONNX node that disagrees with eager
==========================================================================

When onnxruntime returns something other than eager PyTorch, the final output only
says *that* something is wrong. This recipe shows how to find *where*: it converts a
small MLP to ONNX, breaks one node on purpose, then exposes every intermediate value
of the ONNX graph, recomputes the same values in PyTorch with
:class:`torch.fx.Interpreter`, and walks the graph in topological order until the
first value that differs.
"""

# %%
# The model and its conversion
# ----------------------------
#
# A two-layer MLP with a residual connection and a layer norm, converted with a
# dynamic batch dimension. The ONNX file is written to a temporary folder.

import os
import tempfile

import torch

from exportcheck import string_type


class ResidualMLP(torch.nn.Module):
    def __init__(self, dim=16, hidden=32, classes=4):
        super().__init__()
        self.fc1 = torch.nn.Linear(dim, hidden)
        self.fc2 = torch.nn.Linear(hidden, dim)
        self.norm = torch.nn.LayerNorm(dim)
        self.head = torch.nn.Linear(dim, classes)

    def forward(self, x):
        h = x + self.fc2(torch.nn.functional.gelu(self.fc1(x)))
        return self.head(self.norm(h) * 2.0)


torch.manual_seed(0)
model = ResidualMLP().eval()
x = torch.randn(3, 16)
print("inputs:", string_type((x,), with_shape=True))

workdir = tempfile.TemporaryDirectory(prefix="exportcheck-")  # removed at exit
folder = workdir.name
onnx_program = torch.onnx.export(
    model,
    (x,),
    dynamic_shapes=({0: torch.export.Dim("batch")},),
    input_names=["x"],
    output_names=["logits"],
    dynamo=True,
    verbose=False,
)
onnx_path = os.path.join(folder, "mlp.onnx")
onnx_program.save(onnx_path)

# %%
# The ONNX graph has one node per fx node here; each node output is named after
# the fx node it comes from.

import onnx_ir as ir

for node in ir.load(onnx_path).graph:
    inputs = ", ".join(v.name for v in node.inputs if v is not None)
    outputs = ", ".join(v.name for v in node.outputs)
    print(f"{node.name:22} {node.op_type:20} ({inputs}) -> {outputs}")

# %%
# Breaking one node on purpose
# ----------------------------
#
# The residual ``x + ...`` becomes ``x - ...`` by changing the type of the only
# ``Add`` node. onnxruntime still runs the graph, but its output no longer matches
# eager PyTorch.

import onnxruntime

from exportcheck import max_diff

broken = ir.load(onnx_path)
(corrupted,) = [node for node in broken.graph if node.op_type == "Add"]
corrupted.op_type = "Sub"
corrupted_name = corrupted.name
print(f"corrupted node: {corrupted_name}, Add -> Sub")
broken_path = os.path.join(folder, "mlp_broken.onnx")
ir.save(broken, broken_path)


def run_onnx(path, feeds):
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return names, session.run(None, {"x": feeds.numpy()})


with torch.no_grad():
    expected = model(x)
_, got = run_onnx(broken_path, x)
diff = max_diff(expected, got)
print(f"broken graph vs eager: max abs diff {diff['abs']:.3g}")
assert diff["abs"] > 1e-2, diff

# %%
# Every intermediate result of onnxruntime
# ----------------------------------------
#
# Each node output becomes a graph output, so one run of onnxruntime returns every
# intermediate value. The exporter already inferred their types and shapes.

debug = ir.load(broken_path)
already = {v.name for v in debug.graph.outputs}
onnx_order = []  # (value name, producing node) in topological order
for node in debug.graph:
    for value in node.outputs:
        onnx_order.append((value.name, node.name))
        if value.name not in already:
            debug.graph.outputs.append(value)
debug_path = os.path.join(folder, "mlp_debug.onnx")
ir.save(debug, debug_path)
names, arrays = run_onnx(debug_path, x)
onnx_values = dict(zip(names, arrays, strict=True))
print(f"onnxruntime returned {len(onnx_values)} values")

# %%
# Every intermediate result of PyTorch
# ------------------------------------
#
# The exporter translated ``onnx_program.exported_program``, after decompositions,
# so that is the graph to replay. :class:`torch.fx.Interpreter` runs it node by
# node; a subclass keeps the value of every input and operator node under the
# node's name. The unlifted module holds the weights, so it only takes ``x``.


class KeepAll(torch.fx.Interpreter):
    def __init__(self, gm):
        super().__init__(gm)
        self.values = {}

    def run_node(self, n):
        result = super().run_node(n)
        if n.op in ("placeholder", "call_function") and isinstance(result, torch.Tensor):
            self.values[n.name] = result.detach()
        return result


exported = onnx_program.exported_program
print(exported.graph_signature)
interpreter = KeepAll(exported.module())
with torch.no_grad():
    interpreter.run(x)
torch_values = interpreter.values
print(f"torch.fx.Interpreter kept {len(torch_values)} values")

# %%
# Matching the two sides
# ----------------------
#
# An ONNX value keeps the name of the fx node that produced it, except graph
# outputs, renamed by ``output_names``: the exporter stores their original name in
# the metadata ``pkg.torch.onnx.original_node_name``. A value the exporter creates
# for itself (``val_*``, none in this graph) has no counterpart and is skipped.

outputs_by_name = {v.name: v for v in debug.graph.outputs}
matches = []  # (onnx value, fx node, producing ONNX node)
for value_name, node_name in onnx_order:
    original = outputs_by_name[value_name].metadata_props.get("pkg.torch.onnx.original_node_name")
    if value_name in torch_values:
        matches.append((value_name, value_name, node_name))
        print(f"{value_name:12} -> fx node {value_name:12} (same name)")
    elif original in torch_values:
        matches.append((value_name, original, node_name))
        print(f"{value_name:12} -> fx node {original:12} (original_node_name)")
    else:
        print(f"{value_name:12} -> no fx node, skipped")

# %%
# The first divergence
# --------------------
#
# In topological order, the first value beyond the tolerance comes from the node
# that computes it wrongly: every value before it agrees, so its inputs are right.

tolerance = 1e-4
print(f"{'onnx value':12} {'fx node':12} {'onnx node':16} {'shape':10} {'max abs diff':>12}")
first_bad = None
for value_name, fx_name, node_name in matches:
    d = max_diff(torch_values[fx_name], onnx_values[value_name])
    shape = "x".join(map(str, onnx_values[value_name].shape))
    print(f"{value_name:12} {fx_name:12} {node_name:16} {shape:10} {d['abs']:12.3g}")
    if d["abs"] > tolerance:
        first_bad = node_name
        break
print(f"first node beyond {tolerance:g}: {first_bad}")
assert first_bad == corrupted_name, (first_bad, corrupted_name)

# %%
# The graph, drawn with every value's discrepancy
# -----------------------------------------------
#
# The same comparison for every matched value, not only up to the first divergence,
# drawn on the broken graph: each node with its output's max abs diff, red beyond the
# tolerance. Every node after the corrupted one is red too, since it computes on a
# wrong input; only the first red node is to blame.

# sphinx_gallery_thumbnail_number = 1
import matplotlib.pyplot as plt

node_diffs = {
    node_name: max_diff(torch_values[fx_name], onnx_values[value_name])["abs"]
    for value_name, fx_name, node_name in matches
}
graph = ir.load(broken_path).graph
graph_inputs = [v.name for v in graph.inputs]
rows = {name: i for i, name in enumerate(graph_inputs)}  # then the nodes, top to bottom
producers = {}
for node in graph:
    rows[node.name] = len(rows)
    producers.update((v.name, node.name) for v in node.outputs)

fig, ax = plt.subplots(figsize=(7, 0.6 * len(rows) + 0.6))
for node in graph:
    for value in node.inputs:
        source = producers.get(value.name, value.name) if value is not None else None
        if source not in rows:  # weights and constants are not drawn
            continue
        skip = rows[node.name] - rows[source] > 1
        ax.annotate(
            "",
            xy=(0, -rows[node.name]),
            xytext=(0, -rows[source]),
            arrowprops=dict(
                arrowstyle="->",
                shrinkA=11,
                shrinkB=11,
                connectionstyle="arc3,rad=-0.6" if skip else "arc3",
            ),
        )
for name in graph_inputs:
    ax.text(0, -rows[name], name, ha="center", va="center", bbox=dict(fc="white", ec="gray"))
for node in graph:
    diff = node_diffs.get(node.name)
    color = "lightgray" if diff is None else "#f4cccc" if diff > tolerance else "#d9ead3"
    first = node.name == first_bad
    ax.text(
        0,
        -rows[node.name],
        f"{node.op_type}  ({node.name})",
        ha="center",
        va="center",
        bbox=dict(fc=color, ec="black" if first else "gray", lw=2.5 if first else 1),
    )
    note = "no fx value" if diff is None else f"max abs diff {diff:.2g}"
    ax.text(0.85, -rows[node.name], note + ("  <- first divergence" if first else ""), va="center")
ax.set_xlim(-1.1, 2.4)
ax.set_ylim(-len(rows) + 0.5, 0.5)
ax.axis("off")
ax.set_title(f"Broken graph: onnxruntime vs fx values, tolerance {tolerance:g}")
fig.tight_layout()

# %%
# The check
# ---------
#
# Once the node is an ``Add`` again, onnxruntime matches eager PyTorch on a batch
# of 7, a shape the export did not see.

repaired = ir.load(broken_path)
(node,) = [n for n in repaired.graph if n.name == first_bad]
node.op_type = "Add"
repaired_path = os.path.join(folder, "mlp_repaired.onnx")
ir.save(repaired, repaired_path)

x7 = torch.randn(7, 16)
with torch.no_grad():
    expected7 = model(x7)
_, got7 = run_onnx(repaired_path, x7)
diff = max_diff(expected7, got7)
assert diff["mismatch"] is None, diff
assert diff["abs"] <= 1e-4, f"max abs diff {diff['abs']} > 1e-4"
print(
    f"check passed: first divergence at {first_bad} (the corrupted node); "
    f"repaired graph matches eager on batch 7, max abs diff {diff['abs']:.3g} <= 1e-4"
)

# %%
# Exposing every ONNX intermediate value and replaying the exported graph with
# :class:`torch.fx.Interpreter` points at the one node that computes a wrong
# value, without reading the graph by hand.
