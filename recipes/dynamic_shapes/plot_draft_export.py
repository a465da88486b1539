"""
Find every export problem in one pass with draft_export
=======================================================

:func:`torch.export.export` stops at the first problem it meets, so fixing a model
one error at a time takes as many exports as there are problems.
:func:`torch.export.draft_export` keeps going and reports all of them. This recipe
runs it on a small module with three problems, reads the report, fixes the three
lines it points to, and checks the export of the fixed module on other inputs.
"""

# %%
# A module with three problems
# ----------------------------
#
# The module centres its input when the mean is positive, damps it ``steps`` times,
# and groups the features by three. The branch depends on the data, the loop count is
# read from a tensor with ``.item()``, and the reshape writes the batch size as a
# number.

import torch


class Damper(torch.nn.Module):
    def forward(self, x, steps):
        if x.mean() > 0:
            x = x - x.mean()
        for _ in range(steps.item()):
            x = x * 0.9
        return x.reshape(2, -1, 3)


x = torch.randn(2, 6) - 1
steps = torch.tensor(3)
batch = torch.export.Dim("batch", min=1, max=64)
dynamic_shapes = ({0: batch}, None)
print("eager output shape:", tuple(Damper()(x, steps).shape))

# %%
# export stops at the first problem
# ---------------------------------
#
# The branch needs the value of ``x.mean() > 0``, which does not exist while tracing:
# export raises ``GuardOnDataDependentSymNode`` and says nothing about the two other
# problems. Before raising, torch prints the graph traced so far on stderr.

from torch.fx.experimental.symbolic_shapes import GuardOnDataDependentSymNode

try:
    torch.export.export(Damper(), (x, steps), dynamic_shapes=dynamic_shapes)
except GuardOnDataDependentSymNode as e:
    lines = str(e).splitlines()
    print(lines[0])
    print("\n".join(lines[lines.index("The following call raised this error:") :][:3]))
else:
    raise AssertionError("export of Damper no longer fails: update this recipe")

# %%
# draft_export collects them all
# ------------------------------
#
# ``draft_export`` traces with the real values of the example next to the fake ones:
# where export would fail, it takes the example's value, inserts a runtime assertion,
# records the issue and goes on. ``print(ep._report)`` shows the report in full; here
# each issue gets one line with the line of model code it comes from.

ep = torch.export.draft_export(Damper(), (x, steps), dynamic_shapes=dynamic_shapes)
report = ep._report
print(f"{len(report.failures)} issues, successful: {report.successful()}")
for failure in report.failures:
    frame = failure.data["user_stack"][-1]
    print(
        f"  {failure.failure_type.name:21} {failure.data['expr']:12}"
        f" line {frame['line']:3}: {frame['loc']}"
    )
lines_with_issues = {f.data["user_stack"][-1]["line"] for f in report.failures}
print(f"model lines to fix: {sorted(lines_with_issues)}")

# %%
# The draft program is not a result
# ---------------------------------
#
# Each issue came with the assumption that replaced it: the branch not taken
# (``Ne(u0, 1)``), three loop steps (``Eq(u1, 3)``), a batch of 2 (``Eq(s.., 2)``). An
# input with a positive mean breaks the first, and the assertion that ``draft_export``
# inserted stops the program.

try:
    ep.module()(torch.randn(2, 6) + 1, steps)
except RuntimeError as e:
    if "Runtime assertion failed" not in str(e):
        raise
    print(f"{type(e).__name__}: {str(e).splitlines()[0]}")
else:
    raise AssertionError("the draft program accepted another branch: update this recipe")

# %%
# Fix the three lines
# -------------------
#
# ``torch.where`` computes both branches and selects, a tensor power replaces the loop
# (``0.9 ** steps`` stays a tensor), and the reshape reads the batch from the input.
# The fixed module gives the original's output on the example, and ``draft_export``
# finds no issue left in it.


class FixedDamper(torch.nn.Module):
    def forward(self, x, steps):
        x = torch.where(x.mean() > 0, x - x.mean(), x)
        x = x * 0.9**steps
        return x.reshape(x.shape[0], -1, 3)


torch.testing.assert_close(FixedDamper()(x, steps), Damper()(x, steps))
fixed_ep = torch.export.draft_export(FixedDamper(), (x, steps), dynamic_shapes=dynamic_shapes)
print(f"draft_export of the fixed module: {len(fixed_ep._report.failures)} issues")

# %%
# With no issue left, ``torch.export.export`` succeeds with the named batch dimension.

ep = torch.export.export(FixedDamper(), (x, steps), dynamic_shapes=dynamic_shapes)
print(ep.graph_module.code.strip())
print("range constraints:", ep.range_constraints)

# %%
# Check on other inputs
# ---------------------
#
# The exported program is compared with the eager fixed module on inputs it did not
# see: other batch sizes, both signs of the mean, other step counts.

checks = [
    (torch.randn(5, 6) + 1, torch.tensor(1)),
    (torch.randn(1, 6) - 1, torch.tensor(0)),
    (torch.randn(7, 6) + 2, torch.tensor(6)),
]
worst = 0.0
exported = ep.module()
for inputs in checks:
    expected, got = FixedDamper()(*inputs), exported(*inputs)
    torch.testing.assert_close(got, expected)
    worst = max(worst, float((got - expected).abs().max()))
    print(f"x {tuple(inputs[0].shape)}, steps {int(inputs[1])}: output {tuple(got.shape)}")
print(
    f"check passed: the fixed export matches eager on {len(checks)} unseen inputs, max abs diff {worst:.2e}"
)

# %%
# One ``draft_export`` pointed to the three lines that blocked the export; once they
# were rewritten, the module exported with a dynamic batch and matches eager.
