"""
Export inputs learned from generate: observe, infer, export, check
==================================================================

This recipe lets ``generate`` tell which inputs and dynamic shapes to export the
untrained ``arnir0/Tiny-LLM`` with, instead of writing them by hand. It records
every call ``generate`` makes to the model, infers the export inputs and dynamic
shapes from them, exports with :func:`torch.export.export`, and checks the
ExportedProgram on every observed decode step.
"""

# %%
# Observe generate
# ----------------
#
# :func:`exportcheck.observe` replaces ``forward`` inside a ``with`` block by
# a function with the same signature that deep-copies what each call receives and
# returns. ``generate`` runs as usual: one prefill, then one call per new token.

import torch

from exportcheck import observe, untrained_model

model = untrained_model("arnir0/Tiny-LLM").model
generator = torch.Generator().manual_seed(0)
prompt = torch.randint(0, model.config.vocab_size, (1, 8), generator=generator)
with observe(model) as calls:
    generated = model.generate(
        prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=5, do_sample=False
    )
print(f"{len(calls)} calls to forward, generated shape {tuple(generated.shape)}")

# %%
# One row per call, one column per input. Call 0 is the prefill: 8 tokens and an
# empty cache. Every later call gets one token and a cache one token longer, and
# the records kept those shapes although ``generate`` kept appending to its cache.

print(calls.summary())

# %%
# Infer the export inputs
# -----------------------
#
# ``infer`` exports with a decode step, not the prefill, and names the dimensions it
# recognizes: ``batch``, ``seq_length``, and ``cache_length`` for every layer of the
# cache. Its notes say what it assumed, such as a batch of 1 being dynamic anyway.

from exportcheck import string_type

inferred = calls.infer()
print("export call:", inferred.call_index)
print("kwargs:", string_type(inferred.kwargs, with_shape=True))
print("dynamic_shapes:", string_type(inferred.dynamic_shapes))
for note in inferred.notes:
    print("note:", note)

# %%
# Export
# ------
#
# The cache must be a pytree node for ``torch.export``: :func:`exportcheck.export_patches`
# registers it for the duration of the block. The range constraints show batch,
# sequence and cache length exported as dynamic dimensions.

import copy

from exportcheck import export_patches

with export_patches(model):
    ep = torch.export.export(
        model,
        inferred.args,
        copy.deepcopy(inferred.kwargs),
        dynamic_shapes=inferred.dynamic_shapes,
    )
print("user inputs:", ep.graph_signature.user_inputs)
print("range constraints:", ep.range_constraints)

# %%
# Check on the observed calls
# ---------------------------
#
# ``check`` runs the ExportedProgram on observed calls and compares with the outputs
# recorded during ``generate``. The prefill is skipped: its cache is empty, and the
# exported program takes a filled one. The decode steps have one token and a batch
# of 1, shapes the grown export inputs did not have.

results = calls.check(ep, calls=range(len(calls)))
for result in results:
    print(result)

# %%
# Every decode step, including cache lengths the export never saw, gives what eager
# PyTorch gave during ``generate``.

decode = [r for r in results if r.status != "skipped"]
worst = max(r.abs for r in decode)
assert len(decode) == len(calls) - 1, [str(r) for r in results]
assert all(r.ok for r in decode), [str(r) for r in results]
assert worst <= 1e-5, f"max abs diff {worst} > 1e-5"
print(
    f"check passed: ExportedProgram matches eager on {len(decode)} observed decode steps, "
    f"max abs diff {worst:.3g} <= 1e-5"
)

# %%
# Observing ``generate`` gave the export inputs and dynamic shapes of Tiny-LLM, and
# the ExportedProgram reproduced every decode step that ``generate`` made.
