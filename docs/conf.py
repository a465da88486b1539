"""Sphinx configuration: the two recipe galleries, the API reference and the status page."""

import os
import sys
from pathlib import Path

import exportcheck

DOCS = Path(__file__).resolve().parent
sys.path.insert(0, str(DOCS))  # for gallery_hooks

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

from gallery_hooks import recipes_that_did_not_run, write_patch_page

project = "exportcheck"
author = "the exportcheck developers"
copyright = "2026, the exportcheck developers"
release = exportcheck.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.intersphinx",
    "sphinx.ext.viewcode",
    "sphinx_gallery.gen_gallery",
]
exclude_patterns = ["_build", "auto_*/*.ipynb", "auto_*/*.py", "auto_*/*.zip"]
# A theme made for code-heavy docs; everything it needs ships with it (offline builds).
html_theme = "pydata_sphinx_theme"
html_title = "exportcheck"
html_static_path = ["_static"]
html_css_files = ["exportcheck.css"]
# Sorts and filters the per-model tables of the status page; vanilla JS, no library.
html_js_files = ["status_table.js"]
html_theme_options = {
    "navigation_with_keys": False,
    "show_toc_level": 2,
    "header_links_before_dropdown": 4,
    "navbar_persistent": ["search-button"],
    # The page's table of contents on the prose pages only: a recipe's code lines (up to
    # about 120 characters) and the status page's tables need the width.
    "secondary_sidebar_items": {
        page: ["page-toc", "sourcelink"] for page in ["index", "architecture", "patches", "api"]
    },
}
html_sidebars = {"status/**": []}
autodoc_member_order = "bysource"
autodoc_typehints = "description"
intersphinx_mapping = {}  # offline builds: no inventories are fetched

_INSTALL_CELL = """# This notebook comes from the exportcheck recipe gallery.
# It needs the CPU build of torch 2.13 and exportcheck with its dependencies:
#
#   pip install torch==2.13.0
#   pip install -e <path to a clone of exportcheck>
#
# Everything runs offline: models are built from configs that ship with exportcheck."""

sphinx_gallery_conf = {
    "examples_dirs": ["../recipes", "../onnx_recipes"],
    "gallery_dirs": ["auto_recipes", "auto_onnx_recipes"],
    # Every script is a recipe and every recipe runs.
    "filename_pattern": r"\.py$",
    "abort_on_example_error": False,
    "only_warn_on_example_error": False,
    "reset_modules": ("matplotlib", "gallery_hooks.reset_torch"),
    "reset_modules_order": "before",
    "min_reported_time": 0,
    "show_memory": True,
    "download_all_examples": True,
    "first_notebook_cell": _INSTALL_CELL,
    "remove_config_comments": True,
    "capture_repr": (),
    # The torch.export gallery is grouped by topic, in reading order.
    "subsection_order": [
        "../recipes/models",
        "../recipes/caches",
        "../recipes/dynamic_shapes",
        "../recipes/graphs",
    ],
    "within_subsection_order": "FileNameSortKey",
    # Rerun every recipe on every build, even if its source did not change.
    "run_stale_examples": True,
}


def _check_every_recipe_ran(app, exception):
    if exception is not None:
        return
    bad = recipes_that_did_not_run(app.srcdir)
    if bad:
        raise RuntimeError(
            "these recipe pages report a running time of 0 seconds, so they did not run: "
            + ", ".join(bad)
        )


def _write_generated_pages(app):
    write_patch_page(app.srcdir)


def setup(app):
    app.connect("builder-inited", _write_generated_pages)
    app.connect("build-finished", _check_every_recipe_ran)
