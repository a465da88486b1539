"""One line that describes nested inputs and outputs: :func:`string_type`.

The format is short enough to print for every call of a model during ``generate``
and precise enough to write dynamic shapes from it.

==============================  ==========================================================
object                          rendering
==============================  ==========================================================
``torch.Tensor``                ``T{code}s{d0}x{d1}...`` with ``with_shape=True``,
                                ``T{code}r{rank}`` otherwise; ``{code}`` is the ONNX
                                element type (1 float32, 7 int64, 9 bool, 10 float16,
                                16 bfloat16, ...)
FakeTensor                      ``F{code}s...`` (same rules, prefix ``F``)
``numpy.ndarray``               ``A{code}s...`` (same rules, prefix ``A``)
onnxruntime ``OrtValue``        ``OV{code}s...`` (same rules, prefix ``OV``)
symbolic dimension              its symbol or expression: ``T1s2xs17``
``list``                        ``#N[item,item,...]``
``tuple``                       ``(item,item,...)``
``dict``                        ``dict(key:item,...)``
``None``                        ``None``
Python scalar                   its type (``int``, ``float``, ``bool``, ``str``);
                                with ``with_min_max=True`` its value too (``int=3``)
``DynamicCache``                ``DynamicCache(key_cache=#L[...], value_cache=#L[...])``
``EncoderDecoderCache``         ``EncoderDecoderCache(self_attention_cache=...,
                                cross_attention_cache=...)``
``ModelOutput``                 its class and non-None fields:
                                ``CausalLMOutputWithPast(logits:T1s2x3x32000,...)``
anything else                   its class name
==============================  ==========================================================

With ``with_min_max=True`` a tensor is followed by ``[min,max:Amean]``.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

__all__ = ["onnx_dtype_code", "register_formatter", "string_type"]

# torch dtype name -> ONNX TensorProto element type. Names are looked up with
# getattr so that dtypes missing from an older torch are simply skipped.
_ONNX_CODES_BY_NAME = {
    "float32": 1,
    "uint8": 2,
    "int8": 3,
    "uint16": 4,
    "int16": 5,
    "int32": 6,
    "int64": 7,
    "bool": 9,
    "float16": 10,
    "float64": 11,
    "uint32": 12,
    "uint64": 13,
    "complex64": 14,
    "complex128": 15,
    "bfloat16": 16,
    "float8_e4m3fn": 17,
    "float8_e4m3fnuz": 18,
    "float8_e5m2": 19,
    "float8_e5m2fnuz": 20,
    "float4_e2m1fn_x2": 23,
}
_TORCH_CODES: dict[torch.dtype, int] = {
    getattr(torch, name): code
    for name, code in _ONNX_CODES_BY_NAME.items()
    if isinstance(getattr(torch, name, None), torch.dtype)
}
_NUMPY_CODES: dict[np.dtype, int] = {}
for _name, _code in _ONNX_CODES_BY_NAME.items():
    with contextlib.suppress(TypeError):
        _NUMPY_CODES[np.dtype(_name)] = _code

_FORMATTERS: dict[type, Callable[..., str]] = {}


def onnx_dtype_code(dtype: torch.dtype | np.dtype) -> int:
    """Return the ONNX element type of a torch or numpy dtype.

    >>> import torch
    >>> onnx_dtype_code(torch.int64)
    7
    """
    if isinstance(dtype, torch.dtype):
        if dtype in _TORCH_CODES:
            return _TORCH_CODES[dtype]
        raise ValueError(f"onnx_dtype_code: torch dtype {dtype} has no ONNX element type.")
    np_dtype = np.dtype(dtype)
    if np_dtype in _NUMPY_CODES:
        return _NUMPY_CODES[np_dtype]
    raise ValueError(f"onnx_dtype_code: numpy dtype {np_dtype} has no ONNX element type.")


def register_formatter(cls: type, formatter: Callable[..., str]) -> None:
    """Tell :func:`string_type` how to render instances of ``cls``.

    ``formatter(obj, with_shape, with_min_max)`` must return a string. A formatter
    registered for a class also applies to its subclasses and takes precedence over
    the built-in rules.

    >>> class Box:
    ...     def __init__(self, n):
    ...         self.n = n
    >>> register_formatter(Box, lambda obj, with_shape, with_min_max: f"Box{obj.n}")
    >>> string_type([Box(3)])
    '#1[Box3]'
    """
    if not isinstance(cls, type):
        raise TypeError(f"register_formatter: expected a class, got {type(cls).__name__}.")
    if not callable(formatter):
        raise TypeError(
            f"register_formatter: the formatter for {cls.__name__} must be callable, "
            f"got {type(formatter).__name__}."
        )
    _FORMATTERS[cls] = formatter


def _format_number(x: float) -> str:
    if isinstance(x, bool):
        return str(x)
    if isinstance(x, int):
        return str(x)
    if math.isnan(x) or math.isinf(x):
        return str(x)
    if x == int(x) and abs(x) < 1e15:
        return str(int(x))
    return f"{x:.4g}"


def _dims(shape: Any) -> str:
    return "x".join(str(d) for d in shape)


def _min_max_torch(t: torch.Tensor) -> str:
    if t.numel() == 0:
        return "[empty]"
    if t.dtype == torch.bool:
        t = t.to(torch.int64)
    if t.is_complex():
        t = t.abs()
    values = t.detach().to(torch.float64)
    finite = torch.isfinite(values)
    n_nan = int(torch.isnan(values).sum())
    n_inf = int(torch.isinf(values).sum())
    suffix = ""
    if n_nan:
        suffix += f",NaN:{n_nan}"
    if n_inf:
        suffix += f",Inf:{n_inf}"
    if not bool(finite.any()):
        return f"[no finite value{suffix}]"
    kept = values[finite]
    return (
        f"[{_format_number(float(kept.min()))},{_format_number(float(kept.max()))}"
        f":A{_format_number(float(kept.mean()))}{suffix}]"
    )


def _tensor_string(prefix: str, code: int | str, shape: Any, with_shape: bool) -> str:
    if with_shape:
        return f"{prefix}{code}s{_dims(shape)}"
    return f"{prefix}{code}r{len(shape)}"


def _tensor_prefix(t: torch.Tensor) -> str:
    from torch._subclasses.fake_tensor import FakeTensor

    return "F" if isinstance(t, FakeTensor) else "T"


def _torch_code(dtype: torch.dtype) -> int | str:
    return _TORCH_CODES.get(dtype, str(dtype).replace("torch.", ""))


def _cache_string(obj: Any, with_shape: bool, with_min_max: bool, limit: int) -> str | None:
    """Renders transformers caches, or returns None if ``obj`` is not one."""
    name = type(obj).__name__
    if name == "EncoderDecoderCache" and hasattr(obj, "self_attention_cache"):
        sa = string_type(obj.self_attention_cache, with_shape, with_min_max, limit)
        ca = string_type(obj.cross_attention_cache, with_shape, with_min_max, limit)
        return f"{name}(self_attention_cache={sa}, cross_attention_cache={ca})"
    layers = getattr(obj, "layers", None)
    if layers is not None and isinstance(layers, list):
        keys = [getattr(layer, "keys", None) for layer in layers]
        values = [getattr(layer, "values", None) for layer in layers]
        k = string_type(keys, with_shape, with_min_max, limit)
        v = string_type(values, with_shape, with_min_max, limit)
        kinds = sorted({type(layer).__name__ for layer in layers})
        extra = "" if kinds in ([], ["DynamicLayer"]) else f", layers={'|'.join(kinds)}"
        return f"{name}(key_cache={k}, value_cache={v}{extra})"
    if hasattr(obj, "key_cache") and hasattr(obj, "value_cache"):
        k = string_type(list(obj.key_cache), with_shape, with_min_max, limit)
        v = string_type(list(obj.value_cache), with_shape, with_min_max, limit)
        return f"{name}(key_cache={k}, value_cache={v})"
    return None


def _is_cache(obj: Any) -> bool:
    for cls in type(obj).__mro__:
        if cls.__name__ == "Cache" and cls.__module__.startswith("transformers"):
            return True
    return False


def _is_model_output(obj: Any) -> bool:
    for cls in type(obj).__mro__:
        if cls.__name__ == "ModelOutput" and cls.__module__.startswith("transformers"):
            return True
    return False


def _join(items: list[Any], with_shape: bool, with_min_max: bool, limit: int) -> str:
    parts = [string_type(x, with_shape, with_min_max, limit) for x in items[:limit]]
    if len(items) > limit:
        parts.append("...")
    return ",".join(parts)


def string_type(
    obj: Any, with_shape: bool = False, with_min_max: bool = False, limit: int = 20
) -> str:
    """Describe a nested structure of tensors, caches and containers in one line.

    :param obj: anything: tensors, arrays, containers, transformers caches and outputs
    :param with_shape: print shapes (``T1s2x3``) instead of ranks (``T1r2``)
    :param with_min_max: append ``[min,max:Amean]`` to tensors and values to scalars
    :param limit: at most that many items of a container are shown, then ``...``
    :return: one line, see the table in the module documentation

    >>> import torch
    >>> string_type({"input_ids": torch.zeros((2, 3), dtype=torch.int64)}, with_shape=True)
    'dict(input_ids:T7s2x3)'
    >>> string_type((torch.tensor([1.0, 3.0]), 3), with_min_max=True)
    '(T1r1[1,3:A2],int=3)'
    """
    if limit < 1:
        raise ValueError(f"string_type: limit must be at least 1, got {limit}.")
    for cls in type(obj).__mro__:
        if cls in _FORMATTERS:
            return _FORMATTERS[cls](obj, with_shape, with_min_max)
    if obj is None:
        return "None"
    if isinstance(obj, bool | int | float | str):
        if with_min_max:
            return f"{type(obj).__name__}={obj}"
        return type(obj).__name__
    if isinstance(obj, torch.SymInt | torch.SymFloat | torch.SymBool):
        return f"{type(obj).__name__}={obj}"
    if isinstance(obj, torch.Tensor):
        s = _tensor_string(_tensor_prefix(obj), _torch_code(obj.dtype), obj.shape, with_shape)
        if with_min_max and _tensor_prefix(obj) == "T":
            s += _min_max_torch(obj)
        return s
    if isinstance(obj, np.ndarray):
        code = _NUMPY_CODES.get(obj.dtype, str(obj.dtype))
        s = _tensor_string("A", code, obj.shape, with_shape)
        if with_min_max:
            s += _min_max_torch(torch.from_numpy(np.ascontiguousarray(obj)))
        return s
    if type(obj).__name__ == "OrtValue" and hasattr(obj, "shape"):
        elem = obj.element_type() if callable(getattr(obj, "element_type", None)) else None
        code = _ORT_CODES.get(elem, elem)
        return _tensor_string("OV", code, obj.shape(), with_shape)
    if isinstance(obj, list):
        return f"#{len(obj)}[{_join(obj, with_shape, with_min_max, limit)}]"
    if isinstance(obj, tuple):
        return f"({_join(list(obj), with_shape, with_min_max, limit)})"
    if isinstance(obj, dict) and not _is_model_output(obj):
        items = list(obj.items())
        parts = [f"{k}:{string_type(v, with_shape, with_min_max, limit)}" for k, v in items[:limit]]
        if len(items) > limit:
            parts.append("...")
        return f"dict({','.join(parts)})"
    if _is_cache(obj):
        s = _cache_string(obj, with_shape, with_min_max, limit)
        if s is not None:
            return s
    if _is_model_output(obj):
        parts = [
            f"{k}:{string_type(v, with_shape, with_min_max, limit)}"
            for k, v in obj.items()
            if v is not None
        ]
        return f"{type(obj).__name__}({','.join(parts)})"
    return type(obj).__name__


# onnxruntime reports element types as strings such as "tensor(float)".
_ORT_CODES = {
    "tensor(float)": 1,
    "tensor(uint8)": 2,
    "tensor(int8)": 3,
    "tensor(uint16)": 4,
    "tensor(int16)": 5,
    "tensor(int32)": 6,
    "tensor(int64)": 7,
    "tensor(bool)": 9,
    "tensor(float16)": 10,
    "tensor(double)": 11,
    "tensor(uint32)": 12,
    "tensor(uint64)": 13,
    "tensor(bfloat16)": 16,
}
