"""exportcheck: export transformers and PyTorch models with torch.export and ONNX, checked."""

from .caches import (
    make_dynamic_cache,
    make_encoder_decoder_cache,
    make_minimax_cache,
    make_static_cache,
)
from .describe import onnx_dtype_code, register_formatter, string_type
from .models import UntrainedModel, available_configs, get_config, untrained_model
from .observe import CallCheck, InferredInputs, ObservedCall, ObservedCalls, observe
from .ort import ort_feeds
from .patches import export_patches
from .pytrees import cache_dynamic_shapes, cache_pytrees, registered_cache_classes
from .report import categorize, summarize_results
from .sweep import read_results
from .tiny import tiny_config
from .validate import ValidationReport, max_diff, validate

__version__ = "0.1.0"

__all__ = [
    "CallCheck",
    "InferredInputs",
    "ObservedCall",
    "ObservedCalls",
    "UntrainedModel",
    "ValidationReport",
    "available_configs",
    "cache_dynamic_shapes",
    "cache_pytrees",
    "categorize",
    "export_patches",
    "get_config",
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
]
