"""
Branch on tensor values with torch.cond
=======================================

A Python ``if`` on the value of a tensor cannot be exported: export traces with
symbolic shapes and no values, so it does not know which branch to record. This recipe
takes a small module that rescales its output only when its norm is too large, shows
the export failure, rewrites the branch with :func:`torch.cond`, and checks that the
ExportedProgram takes the right branch on inputs of both kinds.
"""

# %%
# The module
# ----------
#
# ``ClipNorm`` projects its input and rescales the result when its norm exceeds
# ``max_norm``. Which branch runs depends on the values of the input, not on its shape.

import torch


class ClipNorm(torch.nn.Module):
    def __init__(self, features=8, max_norm=1.0):
        super().__init__()
        self.proj = torch.nn.Linear(features, features, bias=False)
        self.max_norm = max_norm

    def forward(self, x):
        h = self.proj(x)
        if h.norm() > self.max_norm:
            h = h * (self.max_norm / h.norm())
        return h


torch.manual_seed(0)
model = ClipNorm().eval()
small, large = 0.01 * torch.randn(4, 8), torch.randn(4, 8)

from exportcheck import string_type

for name, x in [("small", small), ("large", large)]:
    print(f"{name}: {string_type(x, with_shape=True)}, output norm {model(x).norm():.3f}")

# %%
# The failure
# -----------
#
# ``if`` turns ``h.norm() > self.max_norm`` into a Python bool. Export has no values,
# only a symbol ``u0`` for that bool, so it cannot decide whether ``u0`` equals 1 and
# stops with a guard on a data-dependent expression.

from torch.export import Dim
from torch.fx.experimental.symbolic_shapes import GuardOnDataDependentSymNode

dynamic_shapes = {"x": {0: Dim("batch", min=1, max=256)}}
try:
    torch.export.export(model, (small,), dynamic_shapes=dynamic_shapes)
except GuardOnDataDependentSymNode as e:
    print(str(e).splitlines()[0])
else:
    raise AssertionError("the Python branch on a tensor value now exports: update this recipe")

# %%
# The rewrite
# -----------
#
# :func:`torch.cond` takes the predicate as a tensor and both branches as functions of
# the same operands, and export records both. The branches must return tensors of the
# same shape and dtype, and must not return an operand itself: ``keep`` returns a clone.


class ClipNormCond(ClipNorm):
    def forward(self, x):
        h = self.proj(x)

        def shrink(h):
            return h * (self.max_norm / h.norm())

        def keep(h):
            return h.clone()

        return torch.cond(h.norm() > self.max_norm, shrink, keep, (h,))


model_cond = ClipNormCond().eval()
model_cond.load_state_dict(model.state_dict())
ep = torch.export.export(model_cond, (small,), dynamic_shapes=dynamic_shapes)
print(ep)

# %%
# The check
# ---------
#
# On batches the export did not see, small inputs take the ``keep`` branch and large
# ones the ``shrink`` branch, and the ExportedProgram matches the original module with
# its Python ``if`` on both.

exported = ep.module()
print(f"{'input':6} {'batch':>5} {'norm out':>8} {'branch':>6} {'max abs diff':>12}")
worst = 0.0
branches = set()
points = []  # (norm before the branch, norm of the exported output, branch)
for batch in (1, 3, 64):
    for name, scale in (("small", 0.001), ("large", 10.0)):
        x = scale * torch.randn(batch, 8)
        expected = model(x)
        got = exported(x)
        torch.testing.assert_close(got, expected)
        branch = "shrink" if model.proj(x).norm() > model.max_norm else "keep"
        branches.add(branch)
        points.append((model.proj(x).norm().item(), got.norm().item(), branch))
        diff = (got - expected).abs().max().item()
        worst = max(worst, diff)
        print(f"{name:6} {batch:5} {got.norm():8.3f} {branch:>6} {diff:12.3g}")

# %%
# The norm of the exported program's output against the norm before the branch, for
# the same inputs: ``keep`` leaves the small ones on the diagonal, ``shrink`` brings
# the large ones down to ``max_norm``.

# sphinx_gallery_thumbnail_number = 1
import matplotlib.pyplot as plt

fig, ax = plt.subplots(figsize=(5.5, 4))
for branch, color in (("keep", "tab:blue"), ("shrink", "tab:orange")):
    chosen = [(before, after) for before, after, b in points if b == branch]
    ax.scatter(*zip(*chosen, strict=True), color=color, s=50, label=f"branch {branch}", zorder=3)
norms = [before for before, _, _ in points]
ax.plot([min(norms), max(norms)], [min(norms), max(norms)], ":", color="gray", label="y = x")
ax.axhline(model.max_norm, color="tab:red", linestyle="--", label=f"max_norm = {model.max_norm}")
ax.set_xscale("log")
ax.set_yscale("log")
ax.set_xlabel("norm of proj(x), before the branch")
ax.set_ylabel("norm of the exported output")
ax.legend(fontsize=8)
ax.set_title("torch.cond picks the branch at run time")
fig.tight_layout()

# %%
# Both branches ran, and both agree with eager.

assert branches == {"keep", "shrink"}, f"only {branches} ran"
print(f"check passed: torch.cond program matches eager on both branches, max abs diff {worst:.3g}")

# %%
# A branch on a tensor value exports once it is written with ``torch.cond``: the
# ExportedProgram keeps both branches and picks one at run time.
