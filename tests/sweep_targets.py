"""What sweep children run in tests/test_sweep_robustness.py instead of validate().

Each function takes (source, exporter, task) and behaves as the source says, the way a
model that crashes, hangs or eats memory would.
"""

import os
import signal
import time


def misbehave(source, exporter, task):
    if source == "killed":
        os.kill(os.getpid(), signal.SIGKILL)
    if source == "hangs":
        time.sleep(600)
    if source == "eats-memory":
        bytearray(64 * 2**30)  # far over the address-space cap of the child
    return {"ok": True, "stages": [], "runs": [], "checked_by": "misbehave"}


def behave(source, exporter, task):
    return {"ok": True, "stages": [], "runs": [], "checked_by": "behave"}
