"""exportcheck: export transformers and PyTorch models with torch.export and ONNX, checked."""

from .caches import make_dynamic_cache
from .describe import onnx_dtype_code, register_formatter, string_type
from .models import available_configs, get_config
from .pytrees import cache_pytrees, registered_cache_classes
from .validate import max_diff

__version__ = "0.1.0"

__all__ = [
    "available_configs",
    "cache_pytrees",
    "get_config",
    "make_dynamic_cache",
    "max_diff",
    "onnx_dtype_code",
    "register_formatter",
    "registered_cache_classes",
    "string_type",
]
