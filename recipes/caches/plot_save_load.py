"""
Save and reload an exported LLM whose inputs include a cache
============================================================

An ExportedProgram can be written to a ``.pt2`` archive with :func:`torch.export.save`
and read back with :func:`torch.export.load`, in another process or on another
machine. This recipe does it for the untrained ``arnir0/Tiny-LLM`` exported with a
``DynamicCache`` among its inputs, shows the two things the cache requires when
saving and loading, and checks that the reloaded program matches eager PyTorch on
shapes it was not exported with.
"""

# %%
# The program to save
# -------------------
#
# The model is exported with a dynamic batch, number of new tokens and cache length,
# inside :func:`exportcheck.cache_pytrees`, which lets ``torch.export`` flatten the cache.

import copy

import torch

from exportcheck import cache_pytrees, string_type, untrained_model

tiny = untrained_model("arnir0/Tiny-LLM")
print("export inputs:", string_type(tiny.inputs, with_shape=True))
with cache_pytrees():
    ep = torch.export.export(
        tiny.model, (), kwargs=copy.deepcopy(tiny.inputs), dynamic_shapes=tiny.dynamic_shapes
    )
print("range constraints:", ep.range_constraints)

# %%
# Saving needs the pytree registration
# ------------------------------------
#
# The archive stores how to rebuild the inputs and outputs from flat tensors, the cache
# included. Outside ``cache_pytrees()`` torch does not know how to write the cache's
# part of it and raises ``NotImplementedError``. Everything is written into a
# temporary directory.

import os
import tempfile

folder = tempfile.TemporaryDirectory()
path = os.path.join(folder.name, "tiny_llm.pt2")
try:
    torch.export.save(ep, path)
except NotImplementedError as e:
    print(f"{type(e).__name__}: {e}")
else:
    raise AssertionError("saving outside cache_pytrees() no longer fails: update this recipe")

# %%
# Inside the context, saving works.

with cache_pytrees():
    torch.export.save(ep, path)
print(f"saved {os.path.basename(path)}: {os.path.getsize(path) / 2**20:.1f} MiB")

# %%
# Loading: registration and allowed classes
# -----------------------------------------
#
# Loading rebuilds the cache, so it also runs inside ``cache_pytrees()``; and since the
# archive keeps the example inputs, :func:`torch.serialization.safe_globals` must allow
# the two cache classes they contain, or ``torch.load`` falls back to an unrestricted
# load after a warning. The temporary directory is removed once the program is loaded.

from transformers.cache_utils import DynamicCache, DynamicLayer

with cache_pytrees(), torch.serialization.safe_globals([DynamicCache, DynamicLayer]):
    loaded = torch.export.load(path)
folder.cleanup()
print("loaded range constraints:", loaded.range_constraints)
print("loaded user inputs:", loaded.graph_signature.user_inputs)
print("loaded example inputs:", string_type(loaded.example_inputs, with_shape=True))

# %%
# Check after reload
# ------------------
#
# The reloaded program runs on the four input sets of other shapes. Its outputs, logits
# and the updated ``DynamicCache``, are compared with eager PyTorch and with the
# program before saving.

from exportcheck import max_diff

to_eager, to_original = [], []
with cache_pytrees():
    reloaded, original = loaded.module(), ep.module()
    for feeds in tiny.other_inputs:
        got = reloaded(**copy.deepcopy(feeds))
        to_eager.append(max_diff(tiny.model(**copy.deepcopy(feeds)), got))
        to_original.append(max_diff(original(**copy.deepcopy(feeds)), got))
        print(
            f"{string_type(feeds['cache'], with_shape=True)} -> {type(got.cache).__name__}: "
            f"vs eager {to_eager[-1]['abs']:.2e}, vs before saving {to_original[-1]['abs']:.2e}"
        )

worst = max(d["abs"] for d in to_eager)
assert all(d["mismatch"] is None for d in to_eager + to_original)
assert worst <= 1e-5, f"max abs diff {worst} > 1e-5"
assert all(d["abs"] == 0 for d in to_original), "the reloaded program differs from the saved one"
print(
    f"check passed: the reloaded program matches eager on {len(to_eager)} unseen input sets "
    f"(max abs diff {worst:.2e} <= 1e-5) and the program before saving exactly"
)

# %%
# A program with a cache among its inputs saves and loads inside ``cache_pytrees()``,
# with the cache classes allowed for loading, and computes after reload exactly what it
# computed before.
