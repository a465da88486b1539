"""Shrink, build and validate every real config of ``tests/data/real_configs``.

Each file is the ``config.json`` a popular model publishes (``SOURCES.md`` there says
where each was read). For each one the script times ``untrained_model(path,
shrink=True)`` (config, weights, input sets), then validates the model on both runtimes
(``validate(m, exporter="onnx")``) and prints one markdown row:

    HF_HUB_OFFLINE=1 python benchmarks/real_configs.py [--build-only] [NAME ...]

``NAME`` keeps the files whose name contains it. Everything runs in this one process,
one model after the other, after an untimed warm-up build (``llama``) that pays for the
imports every model shares; the first model of a family still pays for importing its
transformers module.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

FOLDER = Path(__file__).resolve().parents[1] / "tests" / "data" / "real_configs"


def _first_line(error: BaseException | str) -> str:
    text = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
    line = text.strip().splitlines()[0] if text.strip() else text
    return line[:110].replace("|", "/")


def _check(path: Path, build_only: bool) -> tuple[str, str, float | None, str, str]:
    """model type, task, build seconds, green, first error."""
    from exportcheck import untrained_model, validate

    begin = time.perf_counter()
    try:
        m = untrained_model(path, shrink=True)
    except Exception as e:  # a failing config is a row of the table, not a crash
        return "?", "?", None, "no", _first_line(e)
    seconds = time.perf_counter() - begin
    model_type, task = m.config.model_type, m.task
    if build_only:
        return model_type, task, seconds, "-", ""
    try:
        report = validate(m, exporter="onnx")
    except Exception as e:
        return model_type, task, seconds, "no", _first_line(e)
    if report.ok:
        return model_type, task, seconds, "yes", ""
    failed = next((s for s in report.stages if not s["ok"]), {})
    error = failed.get("error") or failed.get("message") or ""
    return model_type, task, seconds, "no", f"{report.failed_stage}: {_first_line(str(error))}"


def main(argv: list[str]) -> int:
    import warnings

    warnings.filterwarnings("ignore")
    build_only = "--build-only" in argv
    from exportcheck import untrained_model

    untrained_model("llama")  # warm-up: the shared imports are not any config's time
    names = [a for a in argv if not a.startswith("--")]
    paths = sorted(FOLDER.glob("*.json"))
    if names:
        paths = [p for p in paths if any(n in p.stem for n in names)]
    print("| config | model type | task | build s | green (export + onnx) | first error |")
    print("|---|---|---|---:|---|---|")
    rows = []
    for path in paths:
        row = _check(path, build_only)
        rows.append(row)
        model_type, task, seconds, green, error = row
        shown = "-" if seconds is None else f"{seconds:.2f}"
        print(f"| {path.stem} | {model_type} | {task} | {shown} | {green} | {error} |", flush=True)
    built = [r for r in rows if r[2] is not None]
    slow = [r for r in built if r[2] >= 5.0]
    greens = sum(1 for r in rows if r[3] == "yes")
    print()
    print(f"built {len(built)} of {len(rows)}, {len(slow)} in 5 s or more")
    if built:
        print(f"slowest build {max(r[2] for r in built):.2f} s")
    if not build_only:
        print(f"green {greens} of {len(rows)} ({100 * greens / max(len(rows), 1):.0f} %)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
