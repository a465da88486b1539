"""
Export with batch 2, not 1: the 0/1 specialization
==================================================

An example input with batch 1 or an empty cache gives an ExportedProgram that only
accepts batch 1 or an empty cache, often without an error at export time. This recipe
shows the symptom on ``arnir0/Tiny-LLM`` (untrained, built from its config), explains
it, and fixes it two ways. After reading it you will choose example inputs whose
dynamic dimensions are at least 2, and recognise the error a specialized program raises.
"""

# %%
# The model and its inputs
# ------------------------
#
# ``decode_inputs`` builds the inputs of one decode step for any batch, number of new
# tokens and cache length, an empty cache included. The first example has batch 1.

import torch

from exportcheck import make_dynamic_cache, string_type, untrained_model

model = untrained_model("arnir0/Tiny-LLM").model
config = model.config
head_dim = config.hidden_size // config.num_attention_heads


def decode_inputs(batch, seq_length, cache_length):
    shape = (batch, config.num_key_value_heads, cache_length, head_dim)
    cache = make_dynamic_cache(
        [(torch.randn(shape), torch.randn(shape)) for _ in range(config.num_hidden_layers)]
    )
    return dict(
        input_ids=torch.randint(0, config.vocab_size, (batch, seq_length)),
        attention_mask=torch.ones((batch, cache_length + seq_length), dtype=torch.int64),
        cache=cache,
    )


batch_one = decode_inputs(batch=1, seq_length=3, cache_length=30)
print("example inputs:", string_type(batch_one, with_shape=True))

# %%
# Every dimension is marked ``Dim.AUTO``, a common way to say "make dynamic what can
# be". ``show`` prints the range constraints and the inputs the ExportedProgram expects,
# where ``F7s1xs70`` is an int64 tensor of shape ``1 x s70``: one static dimension, one
# dynamic.

from torch.export import Dim

from exportcheck import cache_dynamic_shapes


def auto_shapes(feeds):
    return dict(
        input_ids={0: Dim.AUTO, 1: Dim.AUTO},
        attention_mask={0: Dim.AUTO, 1: Dim.AUTO},
        cache=cache_dynamic_shapes(feeds["cache"], batch=Dim.AUTO, length=Dim.AUTO),
    )


def show(ep):
    user_inputs = set(ep.graph_signature.user_inputs)
    shapes = [
        n.meta["val"] for n in ep.graph.nodes if n.op == "placeholder" and n.name in user_inputs
    ]
    print("  input shapes:     ", string_type(shapes, with_shape=True))
    print("  range constraints:", ep.range_constraints)


# %%
# The symptom
# -----------
#
# Export succeeds (it only logs a warning), but the batch came out as the constant 1:
# there is no symbol for it, and every input shape starts with 1.

import copy

from exportcheck import cache_pytrees

with cache_pytrees(), torch.no_grad():
    ep_batch_one = torch.export.export(
        model, (), kwargs=copy.deepcopy(batch_one), dynamic_shapes=auto_shapes(batch_one)
    )
show(ep_batch_one)

# %%
# So the program rejects a batch of 2, with an ``AssertionError`` naming the guard
# that export recorded.

batch_two = decode_inputs(batch=2, seq_length=3, cache_length=30)
with cache_pytrees(), torch.no_grad():
    try:
        ep_batch_one.module()(**copy.deepcopy(batch_two))
    except AssertionError as e:
        print("batch 2 rejected:", e)
    else:
        raise AssertionError("the batch-1 program accepts batch 2: update this recipe")

# %%
# Why
# ---
#
# A dimension of size 1 broadcasts against any size and one of size 0 makes many
# operations no-ops, so code traced with them may take paths that other sizes do not.
# Export therefore keeps sizes 0 and 1 as constants, never symbols, and an empty cache
# does the same to the cache length.

empty_cache = decode_inputs(batch=2, seq_length=3, cache_length=0)
print("example inputs:", string_type(empty_cache, with_shape=True))
with cache_pytrees(), torch.no_grad():
    ep_empty = torch.export.export(
        model, (), kwargs=copy.deepcopy(empty_cache), dynamic_shapes=auto_shapes(empty_cache)
    )
    show(ep_empty)
    try:
        ep_empty.module()(**copy.deepcopy(batch_two))
    except AssertionError as e:
        print("cache of 30 rejected:", e)
    else:
        raise AssertionError("the empty-cache program accepts a filled cache: update this recipe")

# %%
# Declaring the dimension with ``Dim("batch")`` does not help on its own: with a
# batch-1 example, export now refuses instead of specializing in silence. That is
# better, since the mistake shows at export time, but the example still has to change.

from torch._dynamo.exc import UserError

batch = Dim("batch", min=1, max=1024)
seq_length = Dim("seq_length", min=1, max=64)
cache_length = Dim("cache_length", min=0, max=4096)


def named_shapes(feeds):
    return dict(
        input_ids={0: batch, 1: seq_length},
        # cached + new tokens: a sum, which a Dim cannot express, so a dimension of its own
        attention_mask={0: batch, 1: Dim.DYNAMIC},
        cache=cache_dynamic_shapes(feeds["cache"], batch=batch, length=cache_length),
    )


with cache_pytrees(), torch.no_grad():
    try:
        torch.export.export(
            model, (), kwargs=copy.deepcopy(batch_one), dynamic_shapes=named_shapes(batch_one)
        )
    except UserError as e:
        print(str(e).split("\n\nThe error above")[0])
    else:
        raise AssertionError(
            "a named Dim with a batch-1 example no longer fails: update this recipe"
        )

# %%
# Fix 1: an example with batch 2
# ------------------------------
#
# The same ``Dim.AUTO`` shapes with batch 2 and 30 cached tokens give symbols for
# every dynamic dimension. Their ranges start at 2, the assumption export traces with,
# yet the check below runs batch 1 through this program too.

with cache_pytrees(), torch.no_grad():
    ep_auto = torch.export.export(
        model, (), kwargs=copy.deepcopy(batch_two), dynamic_shapes=auto_shapes(batch_two)
    )
show(ep_auto)

# %%
# Fix 2: batch 2 and declared dimensions
# --------------------------------------
#
# Named dimensions on the same example set the bounds (batch from 1, cache length from
# 0) and tie shared dimensions: one batch symbol instead of two. The mask length starts
# at 4 because export reasons as if cache length and new tokens were each at least 2.

with cache_pytrees(), torch.no_grad():
    ep_named = torch.export.export(
        model, (), kwargs=copy.deepcopy(batch_two), dynamic_shapes=named_shapes(batch_two)
    )
show(ep_named)

# %%
# The four programs side by side
# ------------------------------
#
# One row per program, one column per dynamic dimension of the inputs, read from the
# placeholders of each ExportedProgram: a symbol with its range, or the constant the
# example's 0 or 1 became.

# sphinx_gallery_thumbnail_number = 1
import math

import matplotlib.pyplot as plt

programs = {
    "batch 1, Dim.AUTO": ep_batch_one,
    "empty cache, Dim.AUTO": ep_empty,
    "fix 1: batch 2, Dim.AUTO": ep_auto,
    "fix 2: batch 2, named Dim": ep_named,
}
columns = [("input_ids", 0), ("input_ids", 1), ("attention_mask", 0), ("attention_mask", 1)]
columns += [("cache key", 0), ("cache key", 2)]


def dimension_cells(ep):
    """(text, is a symbol) for each column: the flattened inputs are ids, mask, keys..."""
    names = ep.graph_signature.user_inputs
    placeholders = {n.name: n.meta["val"] for n in ep.graph.nodes if n.op == "placeholder"}
    tensors = dict(zip(["input_ids", "attention_mask", "cache key"], names, strict=False))
    cells = []
    for tensor, axis in columns:
        size = placeholders[tensors[tensor]].shape[axis]
        if isinstance(size, torch.SymInt):
            r = ep.range_constraints[size.node.expr]
            upper = "inf" if math.isinf(float(r.upper)) else int(r.upper)
            cells.append((f"{size.node.expr}\n[{int(r.lower)}, {upper}]", True))
        else:
            cells.append((str(size), False))
    return cells


fig, ax = plt.subplots(figsize=(9, 3.4))
for row, ep in enumerate(programs.values()):
    for col, (text, symbolic) in enumerate(dimension_cells(ep)):
        color = "#cfe2f3" if symbolic else "#f4cccc"
        ax.add_patch(plt.Rectangle((col, row), 1, 1, facecolor=color, edgecolor="white", lw=2))
        ax.text(col + 0.5, row + 0.5, text, ha="center", va="center", fontsize=9)
ax.set_xlim(0, len(columns))
ax.set_ylim(len(programs), 0)
ax.set_xticks([c + 0.5 for c in range(len(columns))], [f"{t}\ndim {a}" for t, a in columns])
ax.set_yticks([r + 0.5 for r in range(len(programs))], list(programs))
ax.tick_params(length=0)
ax.set_title("Dynamic (blue: symbol [min, max]) or specialized (red: a constant)")
fig.tight_layout()

# %%
# The check
# ---------
#
# Both fixed programs run batch 1 and batch 3, with a filled cache and with an empty
# one, and match eager. Each run gets its own deep copy: eager appends to the cache.

from exportcheck import max_diff

input_sets = {
    "batch 1, 3 tokens, cache 30": decode_inputs(1, 3, 30),
    "batch 3, 1 token, cache 17": decode_inputs(3, 1, 17),
    "batch 1, 4 tokens, empty cache": decode_inputs(1, 4, 0),
    "batch 3, 4 tokens, empty cache": decode_inputs(3, 4, 0),
}
print(f"{'program':8} {'input set':32} {'max abs diff':>12}")
worst = 0.0
with cache_pytrees(), torch.no_grad():
    for name, ep in {"fix 1": ep_auto, "fix 2": ep_named}.items():
        exported = ep.module()
        for label, feeds in input_sets.items():
            diff = max_diff(model(**copy.deepcopy(feeds)), exported(**copy.deepcopy(feeds)))
            assert diff["mismatch"] is None, diff
            worst = max(worst, diff["abs"])
            print(f"{name:8} {label:32} {diff['abs']:12.3g}")

assert worst <= 1e-5, f"max abs diff {worst} > 1e-5"
print(
    f"check passed: both fixed programs match eager on batch 1 and 3, with and without cache, "
    f"max abs diff {worst:.3g} <= 1e-5"
)

# %%
# Export with example dimensions of at least 2, and declare the dimensions that must
# stay dynamic, so that a size-1 example fails loudly instead of specializing.
