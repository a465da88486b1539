"""Every notebook the docs build offers for download runs as a user runs it.

Each one runs in a fresh kernel of this environment (where exportcheck is installed,
as the notebook's first cell asks), from an empty temporary folder: a notebook that
reads a file of the clone fails here. Run by ``nox -s notebooks`` after the docs
build; the default test session ignores this file.
"""

import re
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted(ROOT.glob("docs/auto_*/**/*.ipynb"))
CHECK_PREFIX = "check passed:"
ANSI = re.compile(r"\x1b\[[0-9;]*m")  # the colours of IPython's tracebacks


def _printed(nb) -> list[str]:
    """The non-empty lines the notebook printed, in order."""
    lines = []
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            if output.get("output_type") == "stream" and output.get("name") == "stdout":
                lines += [line for line in output["text"].splitlines() if line.strip()]
    return lines


def test_notebooks_were_built():
    recipes = [*ROOT.glob("recipes/**/*.py"), *ROOT.glob("onnx_recipes/**/*.py")]
    assert NOTEBOOKS, "no notebook under docs/auto_*: build the docs first (nox -s docs)"
    assert {p.stem for p in NOTEBOOKS} == {p.stem for p in recipes}


def test_kernel_is_this_environment():
    from jupyter_client.kernelspec import KernelSpecManager

    argv = KernelSpecManager().get_kernel_spec("python3").argv
    # jupyter_client starts "python" as the Python that starts the kernel: this one.
    assert argv[0] in {"python", "python3", sys.executable}, argv


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: str(p.relative_to(ROOT / "docs")))
def test_notebook_runs(notebook, tmp_path):
    nb = nbformat.read(notebook, as_version=4)
    client = nbclient.NotebookClient(
        nb,
        kernel_name="python3",
        timeout=600,
        resources={"metadata": {"path": str(tmp_path)}},
    )
    try:
        client.execute()
    except nbclient.exceptions.CellExecutionError as e:
        pytest.fail(f"{notebook.name} failed in a fresh kernel:\n{ANSI.sub('', str(e))[-5000:]}")
    printed = _printed(nb)
    assert printed, f"{notebook.name} printed nothing"
    assert printed[-1].startswith(CHECK_PREFIX), (
        f"{notebook.name} must end by printing a line starting with {CHECK_PREFIX!r}, "
        f"its last line was {printed[-1]!r}"
    )
    assert list(tmp_path.iterdir()) == [], f"{notebook.name} wrote into its working folder"
