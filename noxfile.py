"""Sessions: tests, docs, recipes, lint. Run ``nox -l`` to list them."""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import nox

nox.needs_version = ">=2024.3.2"
nox.options.default_venv_backend = "venv"  # uv does not see the local torch wheel
nox.options.sessions = ["lint", "tests"]

ROOT = Path(__file__).resolve().parent
CONSTRAINTS = str(ROOT / "constraints" / "ci.txt")
ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "MPLBACKEND": "Agg"}


def _install(session: nox.Session, extras: str) -> None:
    # torch first, alone and pinned, so that nothing can pull another build of it.
    session.install("-c", CONSTRAINTS, "torch")
    session.install("-c", CONSTRAINTS, "-e", f".[{extras}]")


@nox.session
def tests(session: nox.Session) -> None:
    """Unit tests, doctests and one smoke test per recipe."""
    _install(session, "test")
    # -n auto: one worker per core (pytest-xdist); worksteal balances the slow tests.
    session.run("pytest", "-n", "auto", "--dist", "worksteal", *session.posargs, env=ENV)


# The helpers (string_type, cache builders, pytrees, patches) also support the last
# transformers 4.x. The model checker (untrained_model, validate, sweep) follows the
# model types of the pinned transformers 5.x: its tests are marked "models".
HELPER_TESTS = [
    "tests/test_describe.py",
    "tests/test_caches.py",
    "tests/test_cache_builders.py",
    "tests/test_pytrees.py",
    "tests/test_patches.py",
    "src/exportcheck/describe.py",
    "src/exportcheck/caches",
    "src/exportcheck/patches",
]


@nox.session
def compat(session: nox.Session) -> None:
    """The helper tests on transformers 4.57 (constraints/transformers4.txt)."""
    _install(session, "test")
    session.install("-c", str(ROOT / "constraints" / "transformers4.txt"), "transformers")
    session.run(
        "pytest", "-n", "auto", "-m", "not models", *HELPER_TESTS, *session.posargs, env=ENV
    )


@nox.session
def docs(session: nox.Session) -> None:
    """Build the HTML docs, running every recipe: docs/_build/html/index.html."""
    _install(session, "docs")
    for generated in ROOT.glob("docs/auto_*"):
        shutil.rmtree(generated)
    session.run(
        "sphinx-build",
        "-W",
        "--keep-going",
        "-b",
        "html",
        "docs",
        "docs/_build/html",
        *session.posargs,
        env=ENV,
    )
    session.log(f"HTML: {ROOT / 'docs' / '_build' / 'html' / 'index.html'}")


@nox.session
def recipes(session: nox.Session) -> None:
    """Run recipes with plain python; posargs select them by a part of their name."""
    _install(session, "docs")
    found = sorted([*ROOT.glob("recipes/**/*.py"), *ROOT.glob("onnx_recipes/**/*.py")])
    selected = [
        p for p in found if not session.posargs or any(a in p.name for a in session.posargs)
    ]
    if not selected:
        session.error(f"no recipe matches {session.posargs}; recipes: {[p.name for p in found]}")
    times = {}
    for path in selected:
        with tempfile.TemporaryDirectory() as tmp:
            session.chdir(tmp)
            begin = time.perf_counter()
            session.run("python", str(path), env=ENV)
            times[path] = time.perf_counter() - begin
    session.chdir(ROOT)
    for path, seconds in times.items():
        session.log(f"{seconds:7.1f} s  {path.relative_to(ROOT)}")


@nox.session
def lint(session: nox.Session) -> None:
    """ruff check and ruff format --check."""
    session.install("-c", CONSTRAINTS, "ruff")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session(default=False)
def sweep(session: nox.Session) -> None:
    """Validate every causal-LM architecture and render docs/status (about 25 minutes).

    Extra arguments go to ``exportcheck sweep`` (``-- --only llama gemma3_text``). The
    results file is resumable: delete it to start over.
    """
    _install(session, "docs")
    results = ROOT / "docs" / "status" / "results.jsonl"
    session.run(
        "exportcheck",
        "sweep",
        "--out",
        str(results),
        "--workers",
        "2",
        *session.posargs,
        env=ENV,
    )
    session.run("exportcheck", "report", str(results), "--out", str(results.parent), env=ENV)
