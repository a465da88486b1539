"""Validate many architectures, each in its own process, into a resumable JSONL file.

Every model runs in a child process forked from a server that has already imported
torch, transformers and exportcheck, so a model pays for its own work only, not for
the ~8 s of imports. A crash, a hang or an out-of-memory error in one child never
loses another's row:

* each child has a time limit and an address-space cap;
* a row is appended and flushed as soon as a model finishes, so an interrupted sweep
  keeps what it finished and a rerun skips it;
* Ctrl-C stops the children and leaves a valid file.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import sys
import time
from collections.abc import Callable, Iterable
from typing import Any, TextIO

__all__ = ["done_keys", "read_results", "sweep", "upgrade_row"]

_PRELOAD = ["torch", "transformers", "onnx", "onnxscript", "onnxruntime", "exportcheck.validation"]


def read_results(path: str) -> list[dict[str, Any]]:
    """The rows of a results file; a truncated last line (a killed writer) is skipped."""
    rows = []
    if not os.path.exists(path):
        return rows
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                rows.append(upgrade_row(json.loads(line)))
            except json.JSONDecodeError:
                continue
    return rows


def upgrade_row(row: dict[str, Any]) -> dict[str, Any]:
    """A row written before validations had a plan (exportcheck 0.1), given one.

    Those rows validated the single graph of text generation: the plan is rebuilt from
    the stages of the runtimes of their exporter, so that :func:`exportcheck.verdict`
    reads them as it reads new rows.
    """
    from .runtimes import RUNTIMES, runtimes_of

    if "exporter" not in row:
        return row
    if "plan" in row:
        # runs recorded without their runtime (before it was stored): from the runner
        by_runner = {RUNTIMES[rt].runner: rt for rt in row.get("runtimes", []) if rt in RUNTIMES}
        for run in row.get("runs", []):
            run.setdefault("runtime", by_runner.get(run.get("runner")))
        return row

    runtimes = list(runtimes_of(row["exporter"]))
    owner = {name: rt for rt in runtimes for name, _, _ in RUNTIMES[rt].stages}
    if row.get("failed_stage") == "process":
        plan = [["process", None, None]]
    else:
        plan = [["build", None, None], ["eager", None, None], ["export", "model", None]]
        plan += [[name, "model", rt] for rt in runtimes for name, _, _ in RUNTIMES[rt].stages]
    by_runner = {RUNTIMES[rt].runner: rt for rt in runtimes}
    for run in row.get("runs", []):
        run.setdefault("runtime", by_runner.get(run.get("runner")))
        run.setdefault("component", "model")
    for stage in row.get("stages", []):
        if stage["stage"] not in ("build", "eager", "process"):
            stage.setdefault("component", "model")
        stage.setdefault("runtime", owner.get(stage["stage"]))
    row.update(runtimes=runtimes, plan=plan)
    row.setdefault("task", "text-generation")
    return row


def _key(row: dict[str, Any]) -> tuple[str, str, str]:
    return (row["source"], row["exporter"], row.get("task") or "text-generation")


def done_keys(path: str, *, retry_failed: bool = False) -> set[tuple[str, str, str]]:
    """(source, exporter, task) already in a results file.

    :param retry_failed: leave out the ones whose latest row is a process failure (a
        crash, a kill, a timeout, the memory cap), so that a rerun retries them
    """
    latest = {_key(r): r for r in read_results(path)}
    return {
        key
        for key, row in latest.items()
        if not (retry_failed and row.get("failed_stage") == "process")
    }


def _validate_row(source: str, exporter: str, task: str) -> dict[str, Any]:
    """What a sweep child computes by default: :func:`exportcheck.validate` as a dict."""
    from .validation import validate

    return validate(source, exporter=exporter, task=task).to_dict()


def _resolve_target(target: Any) -> Callable[[str, str, str], dict[str, Any]]:
    if target is None:
        return _validate_row
    if callable(target):
        return target
    if isinstance(target, str) and ":" in target:
        import importlib

        module, _, name = target.partition(":")
        return getattr(importlib.import_module(module), name)
    raise TypeError(f"sweep: target must be a function or 'module:function', got {target!r}.")


def _child(
    source: str,
    exporter: str,
    task: str,
    memory_gib: float,
    log_path: str,
    conn: Any,
    target: Any = None,
) -> None:
    import resource

    # What the model and the exporters print goes to the log, not over the progress line.
    log = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.dup2(log, 1)
    os.dup2(log, 2)
    sys.stdout = os.fdopen(1, "w", buffering=1)
    sys.stderr = os.fdopen(2, "w", buffering=1)
    print(f"===== {source} ({exporter})", flush=True)

    if memory_gib > 0:
        limit = int(memory_gib * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)
    try:
        conn.send(_resolve_target(target)(source, exporter, task))
    except MemoryError:
        conn.send({"crash": "MemoryError", "detail": f"over the {memory_gib} GiB cap"})
    except BaseException as e:  # report any escape from validate itself
        conn.send(
            {"crash": type(e).__name__, "detail": str(e).splitlines()[0][:300] if str(e) else ""}
        )
    finally:
        conn.close()


def _crash_row(
    source: str, exporter: str, task: str, kind: str, detail: str, seconds: float
) -> dict[str, Any]:
    from .runtimes import runtimes_of

    return {
        "source": source,
        "exporter": exporter,
        "task": task,
        "runtimes": list(runtimes_of(exporter)),
        # the process is the one stage planned that ran: every verdict is red
        "plan": [["process", None, None]],
        "ok": False,
        "failed_stage": "process",
        "stages": [
            {
                "stage": "process",
                "ok": False,
                "seconds": round(seconds, 3),
                "error_type": kind,
                "error": detail,
            }
        ],
        "runs": [],
    }


class _Progress:
    """The sweep's progress: a live ``rich`` bar on a terminal, above it one line per
    finished model; elsewhere (a log, CI) only those lines, plain text."""

    def __init__(self, total: int, stream: TextIO) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.total, self.stream = total, stream
        self.ok = self.failed = 0
        self.begin = time.perf_counter()
        self.console = Console(file=stream, highlight=False)
        self.tty = self.console.is_terminal
        self.bar = Progress(
            TextColumn("[bold]sweep"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("[green]ok {task.fields[ok]}[/] [red]failed {task.fields[failed]}[/]"),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            TextColumn("{task.fields[running]}"),
            console=self.console,
            disable=not self.tty,
        )
        self.task = self.bar.add_task("sweep", total=total, ok=0, failed=0, running="")
        self.bar.start()

    def show(self, running: Iterable[str], last: str = "") -> None:
        done = self.ok + self.failed
        names = ",".join(running)
        self.bar.update(self.task, completed=done, ok=self.ok, failed=self.failed, running=names)
        if not last:
            return
        elapsed = time.perf_counter() - self.begin
        eta = elapsed / done * (self.total - done) if done else 0.0
        line = (
            f"[{done:>{len(str(self.total))}}/{self.total}] ok {self.ok} failed {self.failed} "
            f"running {names or '-'} | elapsed {_hms(elapsed)} eta {_hms(eta)} | {last}"
        )
        if self.tty:
            self.bar.console.print(line, markup=False)
        else:
            self.stream.write(line + "\n")
            self.stream.flush()

    def stop(self) -> None:
        self.bar.stop()


def _how_it_ended(proc: Any) -> tuple[str, str]:
    """(kind, detail) of a child that ended without a report."""
    code = proc.exitcode
    if code is not None and code < 0:
        return "Killed", f"killed by {_signal_name(-code)} before it reported"
    return "Crash", f"process ended with exit code {code} without a report"


def _signal_name(number: int) -> str:
    import signal

    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _hms(seconds: float) -> str:
    seconds = int(seconds)
    return (
        f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
        if seconds >= 3600
        else (f"{seconds // 60}m{seconds % 60:02d}s")
    )


def sweep(
    sources: Iterable[str],
    out: str,
    *,
    exporter: str = "onnx",
    task: str = "text-generation",
    workers: int = 1,
    timeout: float = 600.0,
    memory_gib: float = 8.0,
    stream: TextIO | None = None,
    on_row: Callable[[dict[str, Any]], None] | None = None,
    retry_failed: bool = False,
    target: Any = None,
) -> list[dict[str, Any]]:
    """Validate every source in its own process and append one JSON row per source to ``out``.

    :param sources: hub ids or model types
    :param out: the JSONL file; rows already there for the same exporter are skipped
    :param exporter: ``export`` or ``onnx`` (see :func:`exportcheck.validate`)
    :param task: the task every source is validated for
    :param workers: processes running at once
    :param timeout: seconds a model may take before its process is killed
    :param memory_gib: address-space cap of each process (0: none)
    :param stream: where the progress line goes (stderr by default)
    :param on_row: called with each new row
    :param retry_failed: also rerun the sources whose latest row is a process failure
        (crashed, killed, timed out, over the memory cap); their new row replaces it
    :param target: what each child runs instead of :func:`exportcheck.validate`, a
        function ``(source, exporter, task) -> row`` importable by name (a
        ``"module:function"`` string or a module-level function); for custom checks
    :return: the rows written by this call

    What the models and exporters print goes to ``out`` with the suffix ``.log``.
    """
    from .runtimes import EXPORTERS
    from .tasks import get_task

    if exporter not in EXPORTERS:
        raise ValueError(f"sweep: exporter must be one of {tuple(EXPORTERS)}, got {exporter!r}.")
    try:
        get_task(task)
    except ValueError as e:
        raise ValueError(f"sweep: {e}") from None
    if not isinstance(workers, int) or workers < 1:
        raise ValueError(f"sweep: workers must be a positive int, got {workers!r}.")
    if not timeout > 0:
        raise ValueError(f"sweep: timeout must be positive, got {timeout!r}.")
    stream = stream or sys.stderr
    sources = list(dict.fromkeys(sources))
    done = done_keys(out, retry_failed=retry_failed)
    todo = [s for s in sources if (s, exporter, task) not in done]
    if len(todo) < len(sources):
        stream.write(f"{len(sources) - len(todo)} already in {out}, skipped\n")
    folder = os.path.dirname(os.path.abspath(out))
    os.makedirs(folder, exist_ok=True)

    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(_PRELOAD)
    log_path = os.path.splitext(out)[0] + ".log"
    progress = _Progress(len(todo), stream)
    written: list[dict[str, Any]] = []
    running: dict[str, tuple[Any, Any, float]] = {}
    queue = list(todo)

    def finish(source: str, row: dict[str, Any]) -> None:
        row.setdefault("source", source)
        row.setdefault("exporter", exporter)
        row.setdefault("task", task)
        row["wall_seconds"] = round(time.perf_counter() - running[source][2], 3)
        row["finished_at"] = round(time.time(), 3)
        row["started_at"] = round(row["finished_at"] - row["wall_seconds"], 3)
        row["workers"] = workers
        row["cpus"] = os.cpu_count()
        with open(out, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
            f.flush()
            os.fsync(f.fileno())
        written.append(row)
        if row.get("ok"):
            progress.ok += 1
        else:
            progress.failed += 1
        if on_row is not None:
            on_row(row)
        del running[source]
        verdict = "ok" if row.get("ok") else f"failed at {row.get('failed_stage')}"
        progress.show(running, f"{source}: {verdict}")

    try:
        while queue or running:
            while queue and len(running) < workers:
                source = queue.pop(0)
                parent, child = ctx.Pipe(duplex=False)
                proc = ctx.Process(
                    target=_child,
                    args=(source, exporter, task, memory_gib, log_path, child, target),
                )
                proc.start()
                child.close()
                running[source] = (proc, parent, time.perf_counter())
                progress.show(running)
            for source, (proc, conn, begin) in list(running.items()):
                elapsed = time.perf_counter() - begin
                if conn.poll():
                    try:
                        row = conn.recv()
                    except EOFError:
                        row = None
                    proc.join(5)
                    if row is None:  # the pipe closed: the process died before it reported
                        kind, detail = _how_it_ended(proc)
                        row = _crash_row(source, exporter, task, kind, detail, elapsed)
                    elif "crash" in row:
                        row = _crash_row(
                            source, exporter, task, row["crash"], row.get("detail", ""), elapsed
                        )
                    finish(source, row)
                elif not proc.is_alive():
                    proc.join()
                    kind, detail = _how_it_ended(proc)
                    finish(source, _crash_row(source, exporter, task, kind, detail, elapsed))
                elif elapsed > timeout:
                    proc.kill()
                    proc.join()
                    finish(
                        source,
                        _crash_row(
                            source, exporter, task, "Timeout", f"over {timeout:.0f} s", elapsed
                        ),
                    )
            time.sleep(0.05)
    except KeyboardInterrupt:
        for proc, _, _ in running.values():
            proc.kill()
        stream.write(f"\ninterrupted: {len(written)} rows written to {out}; rerun to continue\n")
        raise
    finally:
        progress.stop()
    return written
