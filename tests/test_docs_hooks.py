"""The docs build refuses recipe pages that report a zero running time."""

from pathlib import Path

from support import load_script

ROOT = Path(__file__).resolve().parents[1]


def _hooks():
    return load_script(ROOT / "docs" / "gallery_hooks.py")


def test_zero_running_time_is_reported(tmp_path):
    (tmp_path / "auto_recipes").mkdir()
    ran = "**Total running time of the script:** (0 minutes 3.466 seconds)"
    did_not_run = "**Total running time of the script:** (0 minutes 0.000 seconds)"
    (tmp_path / "auto_recipes" / "plot_a.rst").write_text(ran)
    (tmp_path / "auto_recipes" / "plot_b.rst").write_text(did_not_run)
    assert _hooks().recipes_that_did_not_run(tmp_path) == ["plot_b.rst"]
