"""Functions that sphinx-gallery calls by name (see ``sphinx_gallery_conf`` in conf.py)."""

import inspect
import re
from pathlib import Path


def reset_torch(gallery_conf, fname):
    """Start every recipe with a fresh dynamo state, as a new Python process would."""
    import torch

    torch._dynamo.reset()


_ZERO_TIME = re.compile(
    r"\*\*Total running time of the script:\*\* \( *0 minutes +0\.000 seconds\)"
)


def recipes_that_did_not_run(docs_dir):
    """Generated recipe pages whose reported running time is zero: they never executed."""
    bad = []
    for page in sorted(Path(docs_dir).glob("auto_*recipes/**/*.rst")):
        text = page.read_text(encoding="utf-8")
        if "Total running time of the script" in text and _ZERO_TIME.search(text):
            bad.append(page.name)
    return bad


def write_patch_page(docs_dir):
    """docs/patches.rst: every registered patch, from the registry itself (git-ignored)."""
    from exportcheck.patches import PATCH_FAMILY, PATCHES

    lines = [
        "Patches",
        "=======",
        "",
        "Every fix :func:`exportcheck.export_patches` applies, generated from the registry",
        "(:data:`exportcheck.patches.PATCHES`) when the documentation is built. A patch",
        "names the exact error it fixes and the condition under which it can be deleted;",
        "its runtimes say which exporters need it.",
        "",
    ]
    for name, patch in PATCHES.items():
        title = f"``{name}``"
        lines += [title, "-" * len(title), ""]
        lines.append(f"* family: {PATCH_FAMILY[name]}")
        if patch.model_types:
            lines.append(f"* model types: {', '.join(patch.model_types)}")
        lines.append(f"* runtimes: {', '.join(patch.runtimes)}")
        if patch.corrects_eager:
            lines.append("* corrects eager transformers: the eager reference is computed with it")
        lines.append(f"* fixes: {patch.fixes}")
        lines.append(f"* remove when: {patch.remove_when}")
        lines.append("")
        doc = inspect.cleandoc(patch.doc or getattr(patch.install, "__doc__", "") or "")
        if doc:
            lines += [doc, ""]
    (Path(docs_dir) / "patches.rst").write_text("\n".join(lines), encoding="utf-8")
