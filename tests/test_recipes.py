"""Smoke tests: every recipe runs, prints its final check, and writes nothing in its folder."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted([*ROOT.glob("recipes/**/*.py"), *ROOT.glob("onnx_recipes/**/*.py")])
CHECK_PREFIX = "check passed:"


def test_recipes_are_found():
    assert len(RECIPES) >= 2


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: str(p.relative_to(ROOT)))
def test_recipe_runs_and_checks(recipe, tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", MPLBACKEND="Agg")
    proc = subprocess.run(
        [sys.executable, str(recipe)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, (
        f"{recipe.name} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    )
    assert "Traceback" not in proc.stderr, proc.stderr[-5000:]
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    assert lines, f"{recipe.name} printed nothing"
    assert lines[-1].startswith(CHECK_PREFIX), (
        f"{recipe.name} must end by printing a line starting with {CHECK_PREFIX!r}, "
        f"its last line was {lines[-1]!r}"
    )
    assert list(tmp_path.iterdir()) == [], f"{recipe.name} wrote into its working folder"
