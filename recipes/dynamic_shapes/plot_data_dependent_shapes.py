"""
Shapes that depend on values: nonzero, .item() and torch._check
===============================================================

``torch.nonzero``, boolean masks and ``.item()`` produce sizes that depend on the
values of a tensor. Export represents them with *unbacked* symbols, ``u0``, ``u1``, of
which it knows a range but no example value. This recipe exports two small modules, one
selecting rows with ``nonzero`` and one trimming padding with ``.item()``, shows the
error a Python check on such a size raises, and fixes it with :func:`torch._check`.
"""

# %%
# Unbacked symbols
# ----------------
#
# ``SelectPositive`` keeps the rows whose score is positive. Its output has as many
# rows as ``nonzero`` finds, a number that depends on the scores, not on their shape.

import torch


class SelectPositive(torch.nn.Module):
    def forward(self, x, scores):
        rows = torch.nonzero(scores > 0)[:, 0]
        return x[rows]


torch.manual_seed(0)
select = SelectPositive()
x, scores = torch.randn(6, 8), torch.randn(6)

from exportcheck import string_type

print("inputs:", string_type((x, scores), with_shape=True))
print("eager output:", string_type(select(x, scores), with_shape=True))

# %%
# Export needs no help here. The input rows get a *backed* symbol ``s..``, which has an
# example value (6); the output rows get an unbacked ``u0``, whose range export derives
# from the code: between 0 and the number of input rows.

from torch.export import Dim


def output_shapes(ep):
    output = next(n for n in ep.graph.nodes if n.op == "output")
    return string_type([a.meta["val"] for a in output.args[0]], with_shape=True)


rows = Dim("rows", min=1, max=64)
ep_select = torch.export.export(
    select, (x, scores), dynamic_shapes={"x": {0: rows}, "scores": {0: rows}}
)
print("output shapes:", output_shapes(ep_select))
print("range constraints:", ep_select.range_constraints)

# %%
# A check on an unbacked size
# ---------------------------
#
# ``TrimPadding`` drops the padding columns shared by the whole batch, then adds a
# learned position to each remaining token. ``.item()`` gives the longest sequence as an
# unbacked symbol, and the module checks it against its 16 positions.


class TrimPadding(torch.nn.Module):
    def __init__(self, positions=16, features=8):
        super().__init__()
        self.positions = torch.nn.Parameter(torch.randn(positions, features))

    def forward(self, x, attention_mask):
        longest = attention_mask.sum(dim=1).max().item()
        if longest > self.positions.shape[0]:
            raise ValueError(
                f"TrimPadding: {longest} tokens, only {self.positions.shape[0]} positions"
            )
        return x[:, :longest] + self.positions[:longest]


trim = TrimPadding()
x = torch.randn(2, 6, 8)
mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 0, 0, 0]])
print("inputs:", string_type((x, mask), with_shape=True))
print("eager output:", string_type(trim(x, mask), with_shape=True))

# %%
# Export cannot evaluate ``longest > 16``: it has no value for ``longest``, only a
# symbol, and the ``if`` needs a bool. It stops with a guard on a data-dependent
# expression.

from torch.fx.experimental.symbolic_shapes import GuardOnDataDependentSymNode

batch, seq = Dim("batch", min=1, max=64), Dim("seq", min=1, max=64)
trim_shapes = {"x": {0: batch, 1: seq}, "attention_mask": {0: batch, 1: seq}}
try:
    torch.export.export(trim, (x, mask), dynamic_shapes=trim_shapes)
except GuardOnDataDependentSymNode as e:
    print(str(e).splitlines()[0])
else:
    raise AssertionError("the check on .item() now exports: update this recipe")

# %%
# The fix: torch._check
# ---------------------
#
# ``torch._check(condition, message)`` states the fact instead of branching on it.
# Export assumes it, which gives ``u0`` an upper bound of 16, and records it as a runtime
# assertion; in eager it raises ``RuntimeError`` with the message. The output length is
# ``u1``, the length of the slice, another unbacked symbol.


class TrimPaddingChecked(TrimPadding):
    def forward(self, x, attention_mask):
        longest = attention_mask.sum(dim=1).max().item()
        torch._check(
            longest <= self.positions.shape[0],
            lambda: f"TrimPadding: {longest} tokens, only {self.positions.shape[0]} positions",
        )
        return x[:, :longest] + self.positions[:longest]


trim_checked = TrimPaddingChecked()
trim_checked.load_state_dict(trim.state_dict())
ep_trim = torch.export.export(trim_checked, (x, mask), dynamic_shapes=trim_shapes)
print(ep_trim.graph_signature)
print("output shapes:", output_shapes(ep_trim))
print("range constraints:", ep_trim.range_constraints)

# %%
# The ExportedProgram keeps the check: a batch whose longest sequence has 20 tokens
# is refused with a ``RuntimeError`` naming the assertion.

too_long = (torch.randn(1, 20, 8), torch.ones(1, 20, dtype=torch.int64))
try:
    ep_trim.module()(*too_long)
except RuntimeError as e:
    print("refused:", e)
else:
    raise AssertionError("the exported program accepts 20 tokens: update this recipe")

# %%
# The check
# ---------
#
# Both programs match eager on inputs of other shapes and other values: more rows,
# other masks, no positive score, an all-padding batch.

select_sets = [
    (torch.randn(20, 8), torch.randn(20)),
    (torch.randn(3, 8), -torch.rand(3)),  # no row kept
    (torch.randn(9, 8), torch.rand(9)),  # every row kept
]
lengths_sets = [[5, 2, 9], [1], [0, 0], [16, 3]]
trim_sets = []
for lengths in lengths_sets:
    width = max(lengths) + 2
    positions = torch.arange(width)
    trim_sets.append(
        (torch.randn(len(lengths), width, 8), (positions < torch.tensor(lengths)[:, None]).long())
    )

print(f"{'program':14} {'inputs':26} {'output':14} {'max abs diff':>12}")
worst = 0.0
for name, module, ep, sets in [
    ("SelectPositive", select, ep_select, select_sets),
    ("TrimPadding", trim_checked, ep_trim, trim_sets),
]:
    exported = ep.module()
    for args in sets:
        expected = module(*args)
        got = exported(*args)
        torch.testing.assert_close(got, expected)
        diff = (got - expected).abs().max().item() if got.numel() else 0.0
        worst = max(worst, diff)
        print(
            f"{name:14} {string_type(args, with_shape=True):26} "
            f"{string_type(got, with_shape=True):14} {diff:12.3g}"
        )

print(
    f"check passed: {len(select_sets) + len(trim_sets)} input sets of new shapes and values, "
    f"max abs diff {worst:.3g}"
)

# %%
# Sizes computed from values become unbacked symbols; where the code must decide
# something about them, ``torch._check`` states the fact and keeps it as a runtime check.
