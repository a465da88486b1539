"""
Choose a kind of dynamic dimension: Dim, Dim.DYNAMIC, Dim.AUTO, Dim.STATIC
==========================================================================

``torch.export`` accepts four kinds of entries in ``dynamic_shapes``. This recipe
exports one small attention-like module four times, once with each kind, and prints
what each one produces in the ExportedProgram: its range constraints and the shapes of
its inputs. After reading it you can pick a kind for each dimension, share one
dimension between several inputs, and read the errors export raises when the code and
the declared shapes disagree.
"""

# %%
# The module
# ----------
#
# ``Scorer`` takes three inputs that share dimensions: ``tokens`` and ``mask`` share
# the batch and the sequence length, ``query`` shares the batch. The linear layer fixes
# the last dimension of ``tokens`` to 16.

import torch


class Scorer(torch.nn.Module):
    """Attention weights of one query per sequence over its tokens."""

    def __init__(self, features=16):
        super().__init__()
        self.proj = torch.nn.Linear(features, features)

    def forward(self, tokens, query, mask):
        keys = self.proj(tokens)  # (batch, seq, features)
        scores = (keys @ query.unsqueeze(-1)).squeeze(-1)  # (batch, seq)
        return scores.masked_fill(mask == 0, float("-inf")).softmax(dim=-1)


def make_inputs(batch, seq, features=16):
    """Random inputs; the first token of every sequence is kept so no row is all -inf."""
    mask = (torch.rand(batch, seq) > 0.3).to(torch.int64)
    mask[:, 0] = 1
    return dict(
        tokens=torch.randn(batch, seq, features), query=torch.randn(batch, features), mask=mask
    )


torch.manual_seed(0)
model = Scorer().eval()
inputs = make_inputs(batch=4, seq=10)

from exportcheck import string_type

print("inputs:", string_type(inputs, with_shape=True))

# %%
# The ExportedProgram records its symbolic dimensions in ``range_constraints`` and the
# shape of every input on its placeholder; ``show`` prints both. ``F1ss31xs27x16`` reads
# float32 (``F1``) of shape (``s``) ``s31 x s27 x 16``: symbols are dynamic dimensions.


def show(ep):
    user_inputs = set(ep.graph_signature.user_inputs)
    shapes = [
        node.meta["val"]
        for node in ep.graph.nodes
        if node.op == "placeholder" and node.name in user_inputs
    ]
    print("  input shapes:     ", string_type(shapes, with_shape=True))
    print("  range constraints:", ep.range_constraints)


# %%
# A named ``Dim`` with bounds
# ---------------------------
#
# ``Dim("batch", min=1, max=128)`` declares a dynamic dimension with the bounds you
# choose. Passing the *same object* for every input that shares the dimension tells
# export they are equal: three inputs, two symbols.

from torch.export import Dim

batch = Dim("batch", min=1, max=128)
seq = Dim("seq", min=1, max=512)
named_shapes = {"tokens": {0: batch, 1: seq}, "query": {0: batch}, "mask": {0: batch, 1: seq}}
print("dynamic shapes:", string_type(named_shapes))
ep_named = torch.export.export(model, (), kwargs=inputs, dynamic_shapes=named_shapes)
show(ep_named)

# %%
# Named dimensions are strict. Give each input its own batch ``Dim`` and export
# refuses, because ``keys @ query`` only works when the two batches are equal; the
# message names the fix.

from torch._dynamo.exc import UserError

separate_shapes = {
    "tokens": {0: Dim("batch_tokens"), 1: seq},
    "query": {0: Dim("batch_query")},
    "mask": {0: Dim("batch_mask"), 1: seq},
}
try:
    torch.export.export(model, (), kwargs=inputs, dynamic_shapes=separate_shapes)
except UserError as e:
    print(str(e).split("\n\nThe error above")[0])
else:
    raise AssertionError("separate batch Dims no longer fail: update this recipe")

# %%
# ``Dim.DYNAMIC``
# ---------------
#
# ``Dim.DYNAMIC`` asks for a dynamic dimension without naming it. Export works out
# the equalities itself (still two symbols) and picks default bounds: no maximum, and
# a minimum of 2, the assumption export traces with since sizes 0 and 1 are special
# (see the recipe on the 0/1 specialization).

dynamic_shapes = {
    "tokens": {0: Dim.DYNAMIC, 1: Dim.DYNAMIC},
    "query": {0: Dim.DYNAMIC},
    "mask": {0: Dim.DYNAMIC, 1: Dim.DYNAMIC},
}
ep_dynamic = torch.export.export(model, (), kwargs=inputs, dynamic_shapes=dynamic_shapes)
show(ep_dynamic)

# %%
# ``Dim.DYNAMIC`` still insists on being dynamic: on the feature dimension, which the
# linear layer fixes to 16, export raises instead of silently making it static. A named
# ``Dim`` fails the same way.

try:
    torch.export.export(
        model,
        (),
        kwargs=inputs,
        dynamic_shapes={
            **dynamic_shapes,
            "tokens": {0: Dim.DYNAMIC, 1: Dim.DYNAMIC, 2: Dim.DYNAMIC},
        },
    )
except UserError as e:
    print(str(e).split("\n\nThe error above")[0])
else:
    raise AssertionError("a dynamic feature dimension no longer fails: update this recipe")

# %%
# ``Dim.AUTO``
# ------------
#
# ``Dim.AUTO`` lets export decide: every dimension marked ``AUTO`` becomes dynamic if
# the code allows it and static otherwise, without an error. Here the feature
# dimension comes out as 16 and the others as symbols.

auto_shapes = {
    "tokens": {0: Dim.AUTO, 1: Dim.AUTO, 2: Dim.AUTO},
    "query": {0: Dim.AUTO, 1: Dim.AUTO},
    "mask": {0: Dim.AUTO, 1: Dim.AUTO},
}
ep_auto = torch.export.export(model, (), kwargs=inputs, dynamic_shapes=auto_shapes)
show(ep_auto)

# %%
# ``Dim.STATIC``
# --------------
#
# ``Dim.STATIC`` (or ``None``, or leaving the dimension out) keeps the size of the
# example input. With a static batch the program accepts batches of 4 only.

static_shapes = {
    "tokens": {0: Dim.STATIC, 1: seq},
    "query": {0: Dim.STATIC},
    "mask": {0: Dim.STATIC, 1: seq},
}
ep_static = torch.export.export(model, (), kwargs=inputs, dynamic_shapes=static_shapes)
show(ep_static)

# %%
# Which one to use
# ----------------
#
# Use a named ``Dim`` when you know the range and want export to fail if the model
# disagrees; reuse the object for shared dimensions. Use ``Dim.DYNAMIC`` for the same
# guarantee without choosing names or bounds, ``Dim.AUTO`` to explore a model you do not
# know (then read ``range_constraints``), and ``Dim.STATIC`` for what must not vary.
#
# What each kind produced, side by side
# -------------------------------------
#
# The range of the batch and the sequence length of ``tokens`` in each program, read
# from its placeholder and its ``range_constraints``: a bar for a symbol, a single
# point for a static size. The crosses are the shapes the check below runs.

# sphinx_gallery_thumbnail_number = 1
import math

import matplotlib.pyplot as plt

every_kind = {
    "Dim": ep_named,
    "Dim.DYNAMIC": ep_dynamic,
    "Dim.AUTO": ep_auto,
    "Dim.STATIC": ep_static,
}
shapes = [(1, 3), (7, 40), (2, 10)]


def tokens_dims(ep):
    """(label, lower, upper) of dimensions 0 and 1 of ``tokens``; lower == upper if static."""
    node = next(n for n in ep.graph.nodes if n.op == "placeholder" and n.name == "tokens")
    dims = []
    for d in node.meta["val"].shape[:2]:
        if isinstance(d, torch.SymInt):
            r = ep.range_constraints[d.node.expr]
            dims.append((str(d.node.expr), float(r.lower), float(r.upper)))
        else:
            dims.append((f"static {d}", d, d))
    return dims


finite = [v for ep in every_kind.values() for _, *b in tokens_dims(ep) for v in b]
right = 2 * max(v for v in finite if math.isfinite(v))
fig, ax = plt.subplots(figsize=(8, 4))
labels = []
for name, ep in every_kind.items():
    for (symbol, lower, upper), dim, color in zip(
        tokens_dims(ep), ("batch", "seq"), ("tab:blue", "tab:orange"), strict=True
    ):
        y = len(labels)
        labels.append(f"{name}: {dim}")
        if lower == upper:
            ax.plot([lower], [y], "o", color=color, markersize=8)
        else:
            ax.plot([lower, min(upper, right)], [y, y], color=color, linewidth=6)
            if math.isinf(upper):
                ax.plot([right], [y], ">", color=color, markersize=10)
        text = symbol if lower == upper else f"{symbol} in [{lower:g}, {upper:g}]"
        ax.annotate(text, (lower, y), textcoords="offset points", xytext=(0, 7), fontsize=8)
        checked = [shape[0 if dim == "batch" else 1] for shape in shapes]
        if name != "Dim.STATIC":
            ax.plot(checked, [y] * len(checked), "x", color="black")
ax.set_yticks(range(len(labels)), labels)
ax.invert_yaxis()
ax.set_xscale("log", base=2)
ax.set_xlim(0.7, right * 1.5)
ax.set_ylim(len(labels) - 0.5, -0.8)
ax.set_xlabel("size accepted (an arrow: no maximum); x: sizes checked below")
ax.set_title("Range of each dimension of tokens in the ExportedProgram")
fig.tight_layout()

# %%
# The check
# ---------
#
# The three programs with a dynamic batch and sequence compute what the module
# computes on shapes they never saw. Batch 1 is included: the minimum of 2 of
# ``Dim.DYNAMIC`` and ``Dim.AUTO`` is an assumption made while tracing, which the
# program does not check at run time, so such shapes deserve a numerical check.

programs = {"Dim": ep_named, "Dim.DYNAMIC": ep_dynamic, "Dim.AUTO": ep_auto}
print(f"{'program':12} {'batch':>5} {'seq':>4} {'max abs diff':>12}")
worst = 0.0
for name, ep in programs.items():
    exported = ep.module()
    for b, s in shapes:
        feeds = make_inputs(b, s)
        expected = model(**feeds)
        got = exported(**feeds)
        torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-5)
        diff = (got - expected).abs().max().item()
        worst = max(worst, diff)
        print(f"{name:12} {b:5} {s:4} {diff:12.3g}")

print(
    f"check passed: {len(programs)} programs match eager on {len(shapes)} unseen shapes each, "
    f"max abs diff {worst:.3g}"
)

# %%
# A named ``Dim`` fixes bounds and sharing, ``Dim.DYNAMIC`` and ``Dim.AUTO`` let export
# infer them, strictly or not, and ``range_constraints`` shows what each one produced.
