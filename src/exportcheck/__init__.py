"""exportcheck: export transformers and PyTorch models with torch.export and ONNX, checked."""

from importlib.metadata import PackageNotFoundError, version

from .caches import (
    cache_dynamic_shapes,
    cache_pytrees,
    make_dynamic_cache,
    make_encoder_decoder_cache,
    make_static_cache,
    registered_cache_classes,
)
from .compare import compare_generation, depth, green, green_everywhere, max_diff, verdict
from .describe import onnx_dtype_code, register_formatter, string_type
from .families.minimax import make_minimax_cache
from .models import UntrainedModel, available_configs, get_config, tiny_config
from .observation import CallCheck, InferredInputs, ObservedCall, ObservedCalls, observe
from .patches import Patch, export_patches
from .report import categorize, summarize_results
from .runtimes.onnx import ort_feeds
from .sweep import read_results
from .tasks import untrained_model
from .validation import ValidationReport, validate

try:
    __version__ = version("exportcheck")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0"

__all__ = [
    "CallCheck",
    "InferredInputs",
    "ObservedCall",
    "ObservedCalls",
    "Patch",
    "UntrainedModel",
    "ValidationReport",
    "available_configs",
    "cache_dynamic_shapes",
    "cache_pytrees",
    "categorize",
    "compare_generation",
    "depth",
    "export_patches",
    "get_config",
    "green",
    "green_everywhere",
    "make_dynamic_cache",
    "make_encoder_decoder_cache",
    "make_minimax_cache",
    "make_static_cache",
    "max_diff",
    "observe",
    "onnx_dtype_code",
    "ort_feeds",
    "read_results",
    "register_formatter",
    "registered_cache_classes",
    "string_type",
    "summarize_results",
    "tiny_config",
    "untrained_model",
    "validate",
    "verdict",
]
