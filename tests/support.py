"""What the installed transformers offers, detected by feature, not by version.

The helper tests (describe, caches, pytrees, patches) run on transformers 4.57 and
5.x (``nox -s compat``). A test that needs something only one of them has is marked
with one of the conditions below, whose reason names the missing feature.
"""

import importlib.util

import pytest
import transformers
import transformers.cache_utils as cache_utils
from transformers.modeling_outputs import CausalLMOutputWithPast

#: the field of model outputs holding the cache (renamed from past_key_values in 5.x)
CACHE_FIELD = (
    "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"
)


def output_cache(outputs):
    """The cache a transformers model returned."""
    return getattr(outputs, CACHE_FIELD)


def needs_cache_classes(*names):
    missing = [n for n in names if not hasattr(cache_utils, n)]
    return pytest.mark.skipif(
        bool(missing),
        reason=f"transformers {transformers.__version__} has no cache_utils.{', '.join(missing)}",
    )


def needs_model_types(*model_types):
    missing = [
        t for t in model_types if importlib.util.find_spec(f"transformers.models.{t}") is None
    ]
    return pytest.mark.skipif(
        bool(missing),
        reason=f"transformers {transformers.__version__} has no model type {', '.join(missing)}",
    )


needs_experts_implementation = pytest.mark.skipif(
    not hasattr(transformers.PretrainedConfig(), "_experts_implementation"),
    reason=f"transformers {transformers.__version__} configs have no experts implementation",
)


def load_script(path):
    """A Python file that is not in a package (docs hooks, a benchmark), as a module."""
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(Path(path).stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
