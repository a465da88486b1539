"""
Read export errors: guard failures, constraint violations, and the line to blame
=================================================================================

This recipe provokes the two shape errors met most often with
:func:`torch.export.export` on a small token mixer: a guard failure when an exported
program receives a shape it was not exported for, and a constraint violation when the
model's code restricts a dimension declared dynamic. You will read both messages, turn
on the ``dynamic`` logs to find the line of model code that made a dimension static,
and fix the export.
"""

# %%
# The model
# ---------
#
# The mixer adds a learned position vector to each of its tokens (it has 16), projects
# the features, and flattens each sample. The flattening writes the batch size as a
# number: 2, the batch of the example.

import torch


class Mixer(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.positions = torch.nn.Parameter(torch.randn(16, 8))
        self.proj = torch.nn.Linear(8, 8)

    def forward(self, x):
        h = x + self.positions[: x.shape[1]]
        h = self.proj(h)
        return h.reshape(2, -1)


torch.manual_seed(0)
model = Mixer().eval()
x = torch.randn(2, 6, 8)
print("eager output shape:", tuple(model(x).shape))

# %%
# A guard failure
# ---------------
#
# Without ``dynamic_shapes`` every dimension is static. The exported program checks
# its inputs before running and names the dimension that differs: here the sequence,
# ``x.size()[1]``, must be 6. The check raises an ``AssertionError``.

ep = torch.export.export(model, (x,))
try:
    ep.module()(torch.randn(2, 10, 8))
except AssertionError as e:
    print(f"{type(e).__name__}: {e}")
else:
    raise AssertionError("the static program accepted another length: update this recipe")

# %%
# A constraint violation
# ----------------------
#
# Declaring the batch and the sequence dynamic with named ``Dim`` objects and wide
# ranges fails with a ``UserError`` of type ``CONSTRAINT_VIOLATION``. The message has
# one line per dimension: the code fixed ``batch`` to the constant 2, and it only works
# for ``seq <= 16`` (the slice of 16 positions). ``Suggested fixes`` gives dimensions
# that would pass; it does not say which line of code is responsible.

from torch._dynamo.exc import UserError, UserErrorType

batch = torch.export.Dim("batch", min=1, max=64)
seq = torch.export.Dim("seq", min=1, max=1024)
try:
    torch.export.export(model, (x,), dynamic_shapes=({0: batch, 1: seq},))
except UserError as e:
    if e.error_type is not UserErrorType.CONSTRAINT_VIOLATION:
        raise
    print(f"{type(e).__name__} ({e.error_type.name}):")
    print(str(e).split("\n\nThe error above occurred")[0])
else:
    raise AssertionError("export with a wide seq range no longer fails: update this recipe")

# %%
# The dynamic logs
# ----------------
#
# ``TORCH_LOGS="dynamic" python script.py`` logs every symbol created and every guard
# added during the export on stderr; ``"+dynamic"`` adds many debug lines.
# :func:`torch._logging.set_logs` does the same from Python. The log names the torch
# function that added each guard, not the model line: a handler on the same logger
# looks up which line of ``Mixer.forward`` was running when a guard was logged.

import logging
import traceback

model_file = Mixer.forward.__code__.co_filename


class GuardFinder(logging.Handler):
    def __init__(self):
        super().__init__()
        self.found = []

    def emit(self, record):
        message = record.getMessage()
        if "[guard added]" in message:
            guard = message.split("eval ", 1)[-1].split(" [guard added]")[0]
        elif "set_replacement" in message:
            guard = message.split(" (")[0]
        else:
            return
        frames = [
            f for f in traceback.extract_stack() if f.filename == model_file and f.name == "forward"
        ]
        self.found.append((guard, frames[-1] if frames else None))


shapes_logger = logging.getLogger("torch.fx.experimental.symbolic_shapes")
finder = GuardFinder()
torch._logging.set_logs(dynamic=logging.INFO)
shapes_logger.addHandler(finder)
try:
    torch.export.export(model, (x,), dynamic_shapes=({0: batch, 1: seq},))
except UserError as e:
    print(f"{type(e).__name__} again; the guards and the model lines that added them:")
else:
    raise AssertionError("export with a wide seq range no longer fails: update this recipe")
finally:
    shapes_logger.removeHandler(finder)
    torch._logging.set_logs()

for guard, frame in finder.found:
    where = f"line {frame.lineno}: {frame.line}" if frame else "outside Mixer.forward"
    print(f"  {guard:26} <- {where}")

# %%
# In the log, ``create_symbol`` names the batch and sequence symbols; the slice of
# positions bounds the sequence by 16, the reshape equates the batch with 2, and
# ``set_replacement`` then makes the batch a constant. Setting
# ``TORCHDYNAMO_EXTENDED_DEBUG_GUARD_ADDED`` to a guard as printed (``Eq(s.., 2)``)
# before the export prints the full stack where it is added.
#
# The fix
# -------
#
# The fixed mixer reads the batch from the input, and the sequence range stops at 16,
# the number of positions, as the message suggested.


class FixedMixer(Mixer):
    def forward(self, x):
        h = x + self.positions[: x.shape[1]]
        h = self.proj(h)
        return h.reshape(x.shape[0], -1)


fixed = FixedMixer().eval()
fixed.load_state_dict(model.state_dict())
seq = torch.export.Dim("seq", min=1, max=16)
ep = torch.export.export(fixed, (x,), dynamic_shapes=({0: batch, 1: seq},))
print("range constraints:", ep.range_constraints)

# %%
# Check on other shapes
# ---------------------
#
# The exported program is compared with eager on batches and lengths it did not see,
# including the longest sequence allowed.

worst = 0.0
exported = ep.module()
with torch.no_grad():
    for shape in [(1, 16, 8), (5, 3, 8), (9, 11, 8)]:
        inputs = torch.randn(*shape)
        expected, got = fixed(inputs), exported(inputs)
        torch.testing.assert_close(got, expected)
        worst = max(worst, float((got - expected).abs().max()))
        print(f"input {shape} -> output {tuple(got.shape)}")
print(f"check passed: the fixed export matches eager on 3 unseen shapes, max abs diff {worst:.2e}")

# %%
# A guard failure names the input dimension a program was not exported for; a
# constraint violation names the dimension the code restricts, and the ``dynamic``
# logs lead to the line of code that did it.
