"""
Dynamic shapes for a transformers cache: pytrees and cache_dynamic_shapes
=========================================================================

A ``DynamicCache`` passed to ``torch.export.export`` needs two things: torch must
know how to flatten it into tensors, and ``dynamic_shapes`` must describe those
tensors in the same layout. This recipe shows the error without either, why it
happens, and how :func:`exportcheck.cache_pytrees` and
:func:`exportcheck.cache_dynamic_shapes` provide both, on ``arnir0/Tiny-LLM`` and on an
untrained Gemma 3 whose cache mixes sliding-window and full-attention layers.
"""

# %%
# The inputs
# ----------
#
# :func:`exportcheck.untrained_model` builds Tiny-LLM with random weights and the
# inputs of a decode step: 3 new tokens for a batch of 2, with 30 tokens in the cache.

import torch

from exportcheck import string_type, untrained_model

tiny = untrained_model("arnir0/Tiny-LLM")
print("inputs:", string_type(tiny.inputs, with_shape=True))

# %%
# The error
# ---------
#
# Exporting with a spec for the cache, as if the cache were a tensor or a list, fails
# before tracing starts: export cannot match the spec with a ``DynamicCache``.

import copy

from torch._dynamo.exc import UserError
from torch.export import Dim

batch = Dim("batch", min=1, max=1024)
seq_length = Dim("seq_length", min=1, max=64)
cache_length = Dim("cache_length", min=1, max=4096)
layer_spec = {0: batch, 2: cache_length}
guessed_shapes = dict(
    input_ids={0: batch, 1: seq_length},
    attention_mask={0: batch, 1: Dim.DYNAMIC},
    cache=[[layer_spec], [layer_spec]],
)
try:
    torch.export.export(
        tiny.model, (), kwargs=copy.deepcopy(tiny.inputs), dynamic_shapes=guessed_shapes
    )
except UserError as e:
    print(str(e).splitlines()[0])
else:
    raise AssertionError("a DynamicCache no longer needs a registration: update this recipe")

# %%
# Why: pytrees
# ------------
#
# Export flattens its inputs with ``torch.utils._pytree`` and matches ``dynamic_shapes``
# against the same structure. transformers does not register ``DynamicCache`` there, so
# the cache is one opaque leaf, and a leaf that is not a tensor cannot have a shape.

import torch.utils._pytree as pytree

leaves, spec = pytree.tree_flatten(tiny.inputs)
print("leaves:", string_type(leaves, with_shape=True))

# %%
# Inside :func:`exportcheck.cache_pytrees` every cache class is a pytree node: the
# cache flattens into a list of keys and a list of values, one tensor per layer. The
# key path of each leaf becomes the name of an input of the ExportedProgram.

from exportcheck import cache_pytrees

with cache_pytrees():
    for path, leaf in pytree.tree_flatten_with_path(tiny.inputs)[0]:
        print(f"  {pytree.keystr(path):28} {string_type(leaf, with_shape=True)}")
print("after the block, the cache is a leaf again:", len(pytree.tree_leaves(tiny.inputs)), "leaves")

# %%
# The spec
# --------
#
# :func:`exportcheck.cache_dynamic_shapes` writes the spec in that layout: for every
# layer, the batch on dimension 0 and the cache length on dimension 2 of its keys and
# of its values. It is the only part of ``dynamic_shapes`` that depends on the cache.

from exportcheck import cache_dynamic_shapes

dynamic_shapes = dict(
    input_ids={0: batch, 1: seq_length},
    attention_mask={0: batch, 1: Dim.DYNAMIC},
    cache=cache_dynamic_shapes(tiny.inputs["cache"], batch=batch, length=cache_length),
)
print("cache spec:", string_type(dynamic_shapes["cache"]))

# %%
# With the registration and the spec, export succeeds. The cache became two inputs
# named after their key paths, sharing the batch and cache-length symbols.

with cache_pytrees(), torch.no_grad():
    ep_tiny = torch.export.export(
        tiny.model, (), kwargs=copy.deepcopy(tiny.inputs), dynamic_shapes=dynamic_shapes
    )
print("user inputs:", ep_tiny.graph_signature.user_inputs)
print("range constraints:", ep_tiny.range_constraints)

# %%
# Sliding-window layers
# ---------------------
#
# A sliding-window layer keeps at most ``sliding_window - 1`` tokens, so past the window
# its length differs from the full-attention layers'. The spec gives it a dimension of
# its own, ``Dim.AUTO`` by default, since the model's code treats lengths below and at
# the window differently and export then restricts the range to one side.

from exportcheck import make_dynamic_cache


def pair(length):
    return torch.randn(2, 1, length, 8), torch.randn(2, 1, length, 8)


mixed = make_dynamic_cache(
    [pair(15), pair(30)], layer_types=["sliding_attention", "full_attention"], sliding_window=16
)
print("cache:", string_type(mixed, with_shape=True))
print("spec: ", string_type(cache_dynamic_shapes(mixed, batch=batch, length=cache_length)))

# %%
# An untrained Gemma 3 has the same mix of layers. ``untrained_model`` builds its
# dynamic shapes with ``cache_dynamic_shapes``, and the export goes as before.

gemma = untrained_model("gemma3_text")
print("layer types:", gemma.config.layer_types, "window:", gemma.config.sliding_window)
print("inputs:", string_type(gemma.inputs, with_shape=True))
print("cache spec:", string_type(gemma.dynamic_shapes["cache"]))
with cache_pytrees(), torch.no_grad():
    ep_gemma = torch.export.export(
        gemma.model, (), kwargs=copy.deepcopy(gemma.inputs), dynamic_shapes=gemma.dynamic_shapes
    )
print("user inputs:", ep_gemma.graph_signature.user_inputs)
print("range constraints:", ep_gemma.range_constraints)

# %%
# The check
# ---------
#
# Both programs match eager on four input sets they were not exported with (batch 1,
# one new token, a longer cache, batch 3). The exported module is built inside
# ``cache_pytrees`` too: it flattens its inputs with the registrations.

from exportcheck import max_diff

print(f"{'model':10} {'batch':>5} {'new':>4} {'cached':>6} {'max abs diff':>12}")
worst = 0.0
runs = 0
with cache_pytrees(), torch.no_grad():
    for name, m, ep in [("Tiny-LLM", tiny, ep_tiny), ("Gemma 3", gemma, ep_gemma)]:
        exported = ep.module()
        for feeds in m.other_inputs:
            diff = max_diff(m.model(**copy.deepcopy(feeds)), exported(**copy.deepcopy(feeds)))
            assert diff["mismatch"] is None, diff
            worst = max(worst, diff["abs"])
            runs += 1
            b, s = feeds["input_ids"].shape
            print(f"{name:10} {b:5} {s:4} {feeds['cache'].get_seq_length():6} {diff['abs']:12.3g}")

assert worst <= 1e-5, f"max abs diff {worst} > 1e-5"
print(f"check passed: {runs} unseen input sets, both caches, max abs diff {worst:.3g} <= 1e-5")

# %%
# A cache exports once it is a pytree node (``cache_pytrees``) and its spec follows the
# flattened layout (``cache_dynamic_shapes``), sliding-window layers included.
