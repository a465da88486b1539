"""
Eager forward mutates the cache: deep-copy the inputs before every run
======================================================================

A transformers model appends the new keys and values to the cache it receives, so the
same inputs give different outputs the second time. This recipe shows the cache of
``arnir0/Tiny-LLM`` (untrained) growing, the outputs changing, a comparison with the
ExportedProgram going wrong because of it, and the deep copy that makes every
comparison start from the same inputs.
"""

# %%
# One decode step
# ---------------
#
# The inputs hold 3 new tokens for a batch of 2 and a cache of 30 tokens. A deep copy
# is kept aside for the export below, before any run can touch them.

import copy

import torch

from exportcheck import string_type, untrained_model

m = untrained_model("arnir0/Tiny-LLM")
model, inputs = m.model, m.inputs
export_inputs = copy.deepcopy(inputs)
print("inputs:", string_type(inputs, with_shape=True))
no_copy = [inputs["cache"].get_seq_length()]  # cached tokens of the inputs, run after run
print("cached tokens:", no_copy[0])

# %%
# The first run
# -------------
#
# After one forward the cache holds 33 tokens: the model appended the 3 new ones. The
# cache it returns is the very object it was given.

with torch.no_grad():
    first = model(**inputs)
no_copy.append(inputs["cache"].get_seq_length())
print("cached tokens after one run:", no_copy[-1])
print("returned cache is the input cache:", first.cache is inputs["cache"])
print("inputs now:", string_type(inputs, with_shape=True))

# %%
# The second run
# --------------
#
# Running again on the "same" inputs attends over 33 cached tokens instead of 30, so the
# logits differ; eager does not even notice that the mask still covers 33 positions.

from exportcheck import max_diff

with torch.no_grad():
    second = model(**inputs)
no_copy.append(inputs["cache"].get_seq_length())
print("cached tokens after two runs:", no_copy[-1])
print(
    f"logits, first vs second run: max abs diff {max_diff(first.logits, second.logits)['abs']:.3g}"
)

# %%
# A naive comparison with the ExportedProgram
# -------------------------------------------
#
# The usual check, eager then exported on the same inputs, hands the exported program
# a cache that eager has already grown. It rejects it: the cache no longer fits the
# mask. (Had the shapes still fitted, it would have returned other numbers instead.)

from exportcheck import cache_pytrees

fresh = m.other_inputs[3]  # batch 3, 4 new tokens, 17 cached
with cache_pytrees(), torch.no_grad():
    ep = torch.export.export(
        model, (), kwargs=copy.deepcopy(export_inputs), dynamic_shapes=m.dynamic_shapes
    )
    exported = ep.module()
    expected = model(**fresh)
    try:
        exported(**fresh)
    except AssertionError as e:
        print("exported program rejected the grown cache:", e)
    else:
        raise AssertionError("the grown cache no longer fails: update this recipe")

# %%
# The ExportedProgram, on the other hand, does not touch the cache it receives: it
# returns new tensors. The order of the runs therefore matters, which is one more
# reason not to rely on it.

feeds = m.other_inputs[0]
with cache_pytrees(), torch.no_grad():
    before = feeds["cache"].get_seq_length()
    out = exported(**feeds)
print(
    f"cached tokens before and after the exported run: {before}, {feeds['cache'].get_seq_length()};"
    f" returned cache holds {out.cache.get_seq_length()}"
)

# %%
# Copies
# ------
#
# A shallow copy of the inputs still shares the cache object; ``copy.deepcopy`` copies
# the cache and its tensors, so each run starts from the same state.

print("copy.copy shares the cache:", copy.copy(feeds)["cache"] is feeds["cache"])
print("copy.deepcopy shares the cache:", copy.deepcopy(feeds)["cache"] is feeds["cache"])
deep_copies = [feeds["cache"].get_seq_length()]
with torch.no_grad():
    run_a = model(**copy.deepcopy(feeds))
    deep_copies.append(feeds["cache"].get_seq_length())
    run_b = model(**copy.deepcopy(feeds))
    deep_copies.append(feeds["cache"].get_seq_length())
print("two runs on deep copies: max abs diff", max_diff(run_a, run_b)["abs"])
print("cached tokens of the original:", deep_copies[-1])

# %%
# The cache the caller holds, run after run: it grows by the number of new tokens when
# the model gets the inputs themselves, and stays as it was when it gets deep copies.

# sphinx_gallery_thumbnail_number = 1
import matplotlib.pyplot as plt

fig, ax = plt.subplots(figsize=(6, 3.2))
runs = range(len(no_copy))
ax.plot(runs, no_copy, marker="o", color="tab:red", label="model(**inputs)")
ax.plot(runs, deep_copies, marker="s", color="tab:blue", label="model(**copy.deepcopy(feeds))")
for values in (no_copy, deep_copies):
    for run, value in zip(runs, values, strict=True):
        ax.annotate(str(value), (run, value), textcoords="offset points", xytext=(0, 6))
ax.set_xticks(list(runs), ["before", "after run 1", "after run 2"])
ax.set_ylabel("tokens in the caller's cache")
ax.margins(y=0.25)
ax.legend(fontsize=8)
ax.set_title("Eager forward appends to the cache it is given")
fig.tight_layout()

# %%
# The honest comparison
# ---------------------
#
# Deep-copied inputs for every run, eager and exported, on input sets the export did
# not see: the two agree on the logits and on the returned cache.

print(f"{'batch':>5} {'new':>4} {'cached':>6} {'outputs':>7} {'max abs diff':>12}")
worst = 0.0
checked = m.other_inputs[:3]
with cache_pytrees(), torch.no_grad():
    for feeds in checked:
        b, s = feeds["input_ids"].shape
        cached = feeds["cache"].get_seq_length()
        diff = max_diff(model(**copy.deepcopy(feeds)), exported(**copy.deepcopy(feeds)))
        assert diff["mismatch"] is None, diff
        assert feeds["cache"].get_seq_length() == cached, "a run changed its inputs"
        worst = max(worst, diff["abs"])
        print(f"{b:5} {s:4} {cached:6} {diff['leaves']:7} {diff['abs']:12.3g}")

assert worst <= 1e-5, f"max abs diff {worst} > 1e-5"
print(
    f"check passed: exported matches eager on {len(checked)} deep-copied input sets, "
    f"max abs diff {worst:.3g} <= 1e-5"
)

# %%
# Eager forward grows the cache it is given, so every run compared with another must
# start from its own ``copy.deepcopy`` of the inputs.
