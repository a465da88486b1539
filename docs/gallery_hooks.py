"""Functions that sphinx-gallery calls by name (see ``sphinx_gallery_conf`` in conf.py)."""

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
