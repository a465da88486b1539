"""
Keep a custom operator as one node: an RMSNorm kernel inside Tiny-LLM
======================================================================

This recipe replaces the RMSNorm layers of an untrained ``arnir0/Tiny-LLM`` with a
custom operator declared with :func:`torch.library.custom_op`, and exports the model
with :func:`torch.export.export`. You will see why the operator needs a fake
implementation (:func:`torch.library.register_fake`), find it as a single node in the
exported graph, and check the ExportedProgram on shapes it was not exported with.
"""

# %%
# Declare the operator
# --------------------
#
# ``torch.library.custom_op`` turns a Python function into the operator
# ``torch.ops.exportcheck_recipes.rms_norm``. Export treats it as opaque: it records a
# call to it instead of tracing the function body. The body is the same computation as
# transformers' ``LlamaRMSNorm``.

import torch


@torch.library.custom_op("exportcheck_recipes::rms_norm", mutates_args=())
def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    variance = x.to(torch.float32).pow(2).mean(-1, keepdim=True)
    normed = x.to(torch.float32) * torch.rsqrt(variance + eps)
    return weight * normed.to(x.dtype)


print(torch.ops.exportcheck_recipes.rms_norm.default)

# %%
# Put it in the model
# -------------------
#
# A small module calls the operator with the weight and epsilon of the layer it
# replaces. A copy of the model gets it in place of its three RMSNorm layers; the
# original model stays as the eager reference.

import copy

from transformers.models.llama.modeling_llama import LlamaRMSNorm

from exportcheck import string_type, untrained_model


class CustomOpRMSNorm(torch.nn.Module):
    def __init__(self, norm: LlamaRMSNorm):
        super().__init__()
        self.weight = norm.weight
        self.eps = norm.variance_epsilon

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return rms_norm(hidden_states, self.weight, self.eps)


tiny = untrained_model("arnir0/Tiny-LLM")
model = copy.deepcopy(tiny.model)
replaced = []
for parent_name, parent in list(model.named_modules()):
    for child_name, child in list(parent.named_children()):
        if isinstance(child, LlamaRMSNorm):
            setattr(parent, child_name, CustomOpRMSNorm(child))
            replaced.append(f"{parent_name}.{child_name}")
print("replaced:", replaced)
print("inputs:", string_type(tiny.inputs, with_shape=True))

# %%
# Without a fake implementation, export fails
# -------------------------------------------
#
# Export runs the model on fake tensors, which have a shape and a dtype but no data.
# The operator's body needs data, so export asks for a function that only computes the
# output's shape and dtype, and stops.

from exportcheck import cache_pytrees

try:
    with cache_pytrees():
        torch.export.export(
            model, (), kwargs=copy.deepcopy(tiny.inputs), dynamic_shapes=tiny.dynamic_shapes
        )
except RuntimeError as e:
    if "no fake impl" not in str(e):
        raise
    print(f"{type(e).__name__}: {str(e).splitlines()[0]}")
else:
    raise AssertionError("export without a fake implementation no longer fails: update this recipe")

# %%
# Register the fake implementation
# --------------------------------
#
# The output has the shape of ``x`` and the dtype of ``weight * x``.
# :func:`torch.library.opcheck` then runs the operator for real and on fake tensors
# and checks that both agree.


@rms_norm.register_fake
def _(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return x.new_empty(x.shape, dtype=torch.promote_types(x.dtype, weight.dtype))


sample = (torch.randn(2, 5, 192), torch.rand(192), 1e-5)
print(torch.library.opcheck(rms_norm, sample))

# %%
# One node per call
# -----------------
#
# The export succeeds, and each of the three RMSNorm calls is one node whose target is
# the custom operator. Its output keeps the symbolic batch and sequence dimensions
# that the fake implementation computed. None of the operations of the body
# (``rsqrt``, ``pow``) appears in the graph.

with cache_pytrees():
    ep = torch.export.export(
        model, (), kwargs=copy.deepcopy(tiny.inputs), dynamic_shapes=tiny.dynamic_shapes
    )

op = torch.ops.exportcheck_recipes.rms_norm.default
nodes = [n for n in ep.graph.nodes if n.op == "call_function" and n.target is op]
for node in nodes:
    print(node.format_node(), "->", string_type(node.meta["val"], with_shape=True))
targets = {str(n.target) for n in ep.graph.nodes if n.op == "call_function"}
body_ops = sorted(t for t in targets if "rsqrt" in t or "pow" in t)
print(f"{len(nodes)} calls to {op}; operations of its body in the graph: {body_ops}")
assert len(nodes) == len(replaced) and not body_ops

# %%
# Check on other shapes
# ---------------------
#
# The ExportedProgram runs the operator's real implementation. It is compared with the
# original eager model, which still uses transformers' ``LlamaRMSNorm``, on input sets
# of shapes the export did not see.

from exportcheck import max_diff

results = {}
with cache_pytrees():
    exported_module = ep.module()
    for feeds in tiny.other_inputs:
        expected = tiny.model(**copy.deepcopy(feeds))
        got = exported_module(**copy.deepcopy(feeds))
        results[string_type(feeds, with_shape=True)] = max_diff(expected, got)
for name, diff in results.items():
    print(f"max abs diff {diff['abs']:.2e} on {name}")

worst = max(d["abs"] for d in results.values())
assert all(d["mismatch"] is None for d in results.values()), results
assert worst <= 1e-5, f"max abs diff {worst} > 1e-5"
print(
    f"check passed: the program with {len(nodes)} custom-op nodes matches eager Tiny-LLM "
    f"on {len(results)} unseen input sets, max abs diff {worst:.2e} <= 1e-5"
)

# %%
# A custom operator with a fake implementation stays one opaque node in the exported
# graph, with symbolic shapes, and the program computes what the original model does.
