"""
A custom operator in ONNX: translate it with an onnxscript function
===================================================================

A model that calls an operator declared with ``torch.library.custom_op`` exports
with ``torch.export``, but the ONNX converter does not know what the operator
computes. This recipe shows the failure on a small module, writes the translation
as an onnxscript function, hands it to ``torch.onnx.export`` through
``custom_translation_table``, and checks the result in onnxruntime on other shapes.
"""

# %%
# The custom operator and the module
# ----------------------------------
#
# ``recipe::scaled_softsign`` computes ``scale * x / (1 + |x|)``. Its fake
# implementation tells ``torch.export`` the shape and dtype of the output without
# running the kernel.

import torch

from exportcheck import string_type


@torch.library.custom_op("recipe::scaled_softsign", mutates_args=())
def scaled_softsign(x: torch.Tensor, scale: float) -> torch.Tensor:
    return scale * x / (1 + x.abs())


@scaled_softsign.register_fake
def _(x: torch.Tensor, scale: float) -> torch.Tensor:
    return torch.empty_like(x)


class Head(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(16, 8)

    def forward(self, x):
        return torch.ops.recipe.scaled_softsign(self.linear(x), 2.0)


torch.manual_seed(0)
model = Head().eval()
inputs = (torch.randn(2, 5, 16),)
dynamic_shapes = ({0: torch.export.Dim("batch"), 1: torch.export.Dim("seq_length")},)
print("inputs:", string_type(inputs, with_shape=True))

# %%
# The failure
# -----------
#
# Without a translation, the converter stops at the custom operator. The exporter
# raises :class:`torch.onnx.OnnxExporterError`; one of its causes, a
# ``DispatchError``, names the operator it found no ONNX function for.

import os
import tempfile

workdir = tempfile.TemporaryDirectory(prefix="exportcheck-")  # removed at exit
onnx_path = os.path.join(workdir.name, "head.onnx")
try:
    torch.onnx.export(model, inputs, onnx_path, dynamic_shapes=dynamic_shapes, dynamo=True)
except torch.onnx.OnnxExporterError as e:
    causes = []
    cause = e.__cause__
    while cause is not None:
        causes.append(cause)
        cause = cause.__cause__
    dispatch = [c for c in causes if type(c).__name__ == "DispatchError"]
    assert dispatch, [type(c).__name__ for c in causes]
    message = str(dispatch[0]).splitlines()[0]
    print(f"{type(e).__name__}, causes: {' <- '.join(type(c).__name__ for c in causes)}")
    print(f"  DispatchError: {message}")
    assert "recipe.scaled_softsign" in message, message
else:
    raise AssertionError("the custom operator converts without a translation: update this recipe")

# %%
# The translation
# ---------------
#
# The onnxscript function takes the operator's arguments: tensors as inputs, the
# Python float as an attribute. The return annotation matters: without it the
# exporter counts no output and the conversion breaks later, in a graph pass.

import onnxscript
from onnxscript import opset18 as op
from onnxscript.onnx_types import FLOAT


@onnxscript.script(onnxscript.values.Opset("recipe.onnx", 1), default_opset=op)
def onnx_scaled_softsign(x: FLOAT, scale: float) -> FLOAT:
    one = op.CastLike(1.0, x)
    factor = op.CastLike(scale, x)
    return op.Div(op.Mul(factor, x), op.Add(one, op.Abs(x)))


torch.onnx.export(
    model,
    inputs,
    onnx_path,
    dynamic_shapes=dynamic_shapes,
    custom_translation_table={torch.ops.recipe.scaled_softsign.default: onnx_scaled_softsign},
    dynamo=True,
)

# %%
# The exporter inlines the function: the graph holds the standard ONNX nodes of its
# body after the ``Linear`` layer, and no custom domain is left.

import onnx

proto = onnx.load(onnx_path)
for node in proto.graph.node:
    print(f"{node.domain or 'ai.onnx'}::{node.op_type:8} {list(node.input)} -> {list(node.output)}")
print("local functions:", [f.name for f in proto.functions])
print("opsets:", {o.domain or "ai.onnx": o.version for o in proto.opset_import})

# %%
# The same graph drawn, each node colored by the PyTorch operator it was translated
# from, which the exporter records in the node's metadata
# (``pkg.torch.onnx.class_hierarchy``). Weights and constants are left out.

# sphinx_gallery_thumbnail_number = 1
import ast

import matplotlib.pyplot as plt


def source_op(node):
    props = {p.key: p.value for p in node.metadata_props}
    return ast.literal_eval(props["pkg.torch.onnx.class_hierarchy"])[-1]


# Depth of every value: graph inputs at 0, a node one below its deepest input.
depth = {v.name: 0 for v in proto.graph.input}
boxes = [(v.name, 0, "graph input", [], v.name) for v in proto.graph.input]
for node in proto.graph.node:
    drawn = [name for name in node.input if name in depth]
    level = 1 + max((depth[name] for name in drawn), default=0)
    depth.update((name, level) for name in node.output)
    boxes.append((node.output[0], level, source_op(node), drawn, node.op_type))
for v in proto.graph.output:
    boxes.append((f"out:{v.name}", depth[v.name] + 1, "graph output", [v.name], v.name))

levels = {}
for box in boxes:
    levels.setdefault(box[1], []).append(box[0])
where = {
    name: (i - (len(names) - 1) / 2, -level)
    for level, names in levels.items()
    for i, name in enumerate(names)
}
sources = sorted({box[2] for box in boxes})
colors = dict(zip(sources, plt.get_cmap("Pastel1").colors, strict=False))
fig, ax = plt.subplots(figsize=(8, 0.9 * len(levels) + 0.5))
for name, _level, source, drawn, label in boxes:
    for input_name in drawn:
        ax.annotate(
            "",
            xy=where[name],
            xytext=where[input_name],
            arrowprops=dict(arrowstyle="->", shrinkA=12, shrinkB=12),
        )
    ax.text(*where[name], label, ha="center", va="center", bbox=dict(fc=colors[source]))
for source, color in colors.items():
    ax.scatter([], [], marker="s", s=120, color=color, label=source)
ax.legend(loc="center left", bbox_to_anchor=(1, 0.5), fontsize=8, title="translated from")
ax.set_xlim(-1.5, 1.5)
ax.set_ylim(-len(levels) + 0.5, 0.5)
ax.axis("off")
translated = sum(source_op(node) == "recipe.scaled_softsign.default" for node in proto.graph.node)
ax.set_title(f"Head in ONNX: the custom operator became {translated} standard nodes")
fig.tight_layout()

# %%
# Run and compare
# ---------------
#
# onnxruntime runs the graph on batch sizes and sequence lengths the export did not
# see, and the output is compared with the eager custom operator.

import onnxruntime

from exportcheck import max_diff

session = onnxruntime.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
name = session.get_inputs()[0].name
results = {}
for shape in [(2, 5, 16), (1, 1, 16), (3, 7, 16), (8, 33, 16)]:
    x = torch.randn(*shape)
    with torch.no_grad():
        expected = model(x)
    got = session.run(None, {name: x.numpy()})
    results[shape] = max_diff(expected, got)
print(f"{'input shape':14} {'max abs diff':>12}")
for shape, diff in results.items():
    print(f"{shape!s:14} {diff['abs']:12.3g}")

# %%
# The translation computes the same formula, so only float rounding separates
# onnxruntime from eager.

worst = max(d["abs"] for d in results.values())
assert all(d["mismatch"] is None for d in results.values()), results
assert worst <= 1e-5, f"max abs diff {worst} > 1e-5"
print(
    f"check passed: the custom operator translated with onnxscript matches eager on "
    f"{len(results)} input shapes, max abs diff {worst:.3g} <= 1e-5"
)

# %%
# A ``torch.library.custom_op`` converts to ONNX once ``custom_translation_table``
# maps it to an onnxscript function that computes the same thing.
