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
