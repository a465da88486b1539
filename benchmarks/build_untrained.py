"""Time and peak memory of building every tiny model of the causal-LM mapping.

Each model is built in a process forked after torch and transformers were imported,
so the time is the build alone (config, weights, the five prefills that fill the
caches), and the peak resident memory is that process's, imports included.

    python benchmarks/build_untrained.py [MODEL_TYPE ...]

The first build in a fresh process also pays for importing the model's module; the
fork keeps that cost in the child, so every row includes it.
"""

from __future__ import annotations

import multiprocessing
import resource
import statistics
import sys
import time


def _build(model_type: str, conn) -> None:
    from exportcheck import untrained_model

    begin = time.perf_counter()
    try:
        untrained_model(model_type)
        error = ""
    except Exception as e:  # a failing type is reported in the table, not raised
        error = f"{type(e).__name__}: {str(e).splitlines()[0][:80] if str(e) else ''}"
    seconds = time.perf_counter() - begin
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    conn.send((seconds, peak_mib, error))
    conn.close()


def main() -> None:
    import warnings

    warnings.filterwarnings("ignore")
    import torch  # noqa: F401  imported before forking
    import transformers  # noqa: F401

    from exportcheck.tasks import get_task

    types = sys.argv[1:] or get_task("text-generation").model_types()
    ctx = multiprocessing.get_context("fork")
    rows = []
    for model_type in types:
        parent, child = ctx.Pipe(duplex=False)
        proc = ctx.Process(target=_build, args=(model_type, child))
        proc.start()
        seconds, peak, error = parent.recv()
        proc.join()
        rows.append((model_type, seconds, peak, error))
        print(f"{model_type:28} {seconds:6.2f} s {peak:7.0f} MiB {error}", flush=True)
    built = [r for r in rows if not r[3]]
    times = [r[1] for r in built]
    peaks = [r[2] for r in built]
    print(
        f"\n{len(built)} of {len(rows)} built; time median {statistics.median(times):.2f} s, "
        f"max {max(times):.2f} s ({sum(t > 2 for t in times)} over 2 s); peak memory median "
        f"{statistics.median(peaks):.0f} MiB, max {max(peaks):.0f} MiB "
        f"({sum(p > 1024 for p in peaks)} over 1 GiB)"
    )


if __name__ == "__main__":
    main()
