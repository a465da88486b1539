"""
StaticCache or DynamicCache: what each exported program asks of a runtime
==========================================================================

A transformers model can take its past keys and values in a ``DynamicCache``, whose
tensors grow with every token, or in a ``StaticCache``, allocated once for a maximum
length and written in place. This recipe exports the untrained ``arnir0/Tiny-LLM``
with each, compares the inputs and outputs that a runtime must provide and keep, and
checks both programs against eager PyTorch on inputs they did not see.
"""

# %%
# The same cache, two ways
# ------------------------
#
# :func:`exportcheck.untrained_model` gives a decode step with a ``DynamicCache`` of 30
# tokens. :func:`exportcheck.make_static_cache` puts the same keys and values at the
# start of a ``StaticCache`` of 72 positions, which counts the 30 tokens it holds. The
# attention mask then covers the 72 positions, with zeros where nothing is cached yet.

import copy

import torch

from exportcheck import make_static_cache, string_type, untrained_model

tiny = untrained_model("arnir0/Tiny-LLM")
model = tiny.model
MAX_CACHE_LEN = 72


def with_static_cache(feeds):
    """The same decode step, with the cache copied into a StaticCache."""
    pairs = [(layer.keys, layer.values) for layer in feeds["cache"].layers]
    mask = feeds["attention_mask"]
    full_mask = torch.zeros((mask.shape[0], MAX_CACHE_LEN), dtype=mask.dtype)
    full_mask[:, : mask.shape[1]] = mask
    return {**feeds, "attention_mask": full_mask, "cache": make_static_cache(pairs, MAX_CACHE_LEN)}


dynamic_inputs = tiny.inputs
static_inputs = with_static_cache(dynamic_inputs)
print("DynamicCache inputs:", string_type(dynamic_inputs, with_shape=True))
print("StaticCache inputs: ", string_type(static_inputs, with_shape=True))
print("tokens in the static cache:", int(static_inputs["cache"].get_seq_length()))

# %%
# In eager mode both give the same logits: the static inputs are a faithful copy.

from exportcheck import max_diff

with torch.no_grad():
    logits_dynamic = model(**copy.deepcopy(dynamic_inputs)).logits
    logits_static = model(**copy.deepcopy(static_inputs)).logits
print(
    f"eager logits, static vs dynamic cache: max abs diff {max_diff(logits_dynamic, logits_static)['abs']:.2e}"
)

# %%
# Export both
# -----------
#
# The DynamicCache program takes the dynamic shapes of :func:`exportcheck.untrained_model`:
# batch, new tokens and cache length. A StaticCache is allocated for one batch size and
# one length, so its tensors and the mask are static; only the number of new tokens
# varies. ``run_decompositions`` gives the functional form that runtimes (and the ONNX
# exporter) consume: there, in-place writes become outputs.

from exportcheck import cache_dynamic_shapes, cache_pytrees

seq_length = torch.export.Dim("seq_length", min=1, max=32)
static_shapes = {
    "input_ids": {1: seq_length},
    "attention_mask": None,
    "cache": cache_dynamic_shapes(static_inputs["cache"], batch=torch.export.Dim.STATIC),
}
print("StaticCache dynamic shapes:", string_type(static_shapes))

programs = {}
with cache_pytrees():
    for name, feeds, shapes in [
        ("DynamicCache", dynamic_inputs, tiny.dynamic_shapes),
        ("StaticCache", static_inputs, static_shapes),
    ]:
        ep = torch.export.export(model, (), kwargs=copy.deepcopy(feeds), dynamic_shapes=shapes)
        programs[name] = ep.run_decompositions()

# %%
# What a runtime sees
# -------------------
#
# For each program: the inputs a runtime feeds besides the weights, and the outputs it
# receives, with their symbolic shapes.


def describe_io(ep):
    shapes = {n.name: n.meta["val"] for n in ep.graph.nodes if n.op == "placeholder"}
    output_node = next(n for n in ep.graph.nodes if n.op == "output")
    shapes.update((a.name, a.meta["val"]) for a in output_node.args[0])
    for spec in ep.graph_signature.input_specs:
        if spec.kind.name == "USER_INPUT":
            print(
                f"  in   {spec.arg.name:26} {string_type(shapes[spec.arg.name], with_shape=True)}"
            )
    for spec in ep.graph_signature.output_specs:
        target = f" -> writes {spec.target}" if spec.target else ""
        shape = string_type(shapes[spec.arg.name], with_shape=True)
        print(f"  out  {spec.kind.name:20} {shape:22}{target}".rstrip())
    print("  ranges:", ep.range_constraints)


for name, ep in programs.items():
    print(f"{name}:")
    describe_io(ep)

# %%
# The DynamicCache program returns new keys and values longer by the number of new
# tokens (``s10+s70``), which the runtime allocates at every step. The StaticCache
# program keeps every shape fixed, takes a scalar counter of cached tokens, and returns
# the updated tensors as ``USER_INPUT_MUTATION`` for the runtime to write back into its
# buffers (they come again as ``USER_OUTPUT``: the model returns its cache).
#
# Check on unseen inputs
# ----------------------
#
# Two decode steps the export did not see, one new token after 30 and five after 60,
# run through each program and through eager PyTorch, compared on the logits and every
# tensor of the updated cache, the static counter included.

results = {}
with cache_pytrees():
    for feeds in [tiny.other_inputs[1], tiny.other_inputs[2]]:
        label = f"{feeds['input_ids'].shape[1]} new after {feeds['cache'].get_seq_length()}"
        for name, ep in programs.items():
            inputs = feeds if name == "DynamicCache" else with_static_cache(feeds)
            expected = model(**copy.deepcopy(inputs))
            got = ep.module()(**copy.deepcopy(inputs))
            results[name, label] = max_diff(expected, got)

for (name, label), diff in results.items():
    print(f"{name:13} {label:18} {diff['leaves']} tensors, max abs diff {diff['abs']:.2e}")

worst = max(d["abs"] for d in results.values())
assert all(d["mismatch"] is None for d in results.values()), results
assert worst <= 1e-5, f"max abs diff {worst} > 1e-5"
print(
    f"check passed: both exported programs match eager on {len(results) // 2} unseen "
    f"decode steps, max abs diff {worst:.2e} <= 1e-5"
)

# %%
# A DynamicCache program hands the runtime growing tensors to reallocate; a
# StaticCache program keeps every shape fixed and asks the runtime to write back the
# updated buffers and counter, and both compute what eager PyTorch computes.
