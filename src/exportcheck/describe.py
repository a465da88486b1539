"""One line that describes nested inputs and outputs: ``string_type``.

The format is short enough to print for every call of a model during ``generate``
and precise enough to write dynamic shapes from it.

==============================  ==========================================================
object                          rendering
==============================  ==========================================================
``torch.Tensor``                ``T{code}s{d0}x{d1}...`` with ``with_shape=True``,
                                ``T{code}r{rank}`` otherwise (``T1s`` and ``T1r0`` for a
                                scalar tensor); ``{code}`` is the ONNX element type (1
                                float32, 2 uint8, 3 int8, 4 uint16, 5 int16, 6 int32, 7
                                int64, 9 bool, 10 float16, 11 float64, 12 uint32, 13
                                uint64, 14 complex64, 15 complex128, 16 bfloat16, 17-20
                                float8, 21 uint4, 22 int4, 23 float4, 24 float8_e8m0, 25
                                uint2, 26 int2), or the dtype name when ONNX has none
                                (``Tcomplex32r1``)
FakeTensor                      ``F{code}s...`` (same rules, prefix ``F``), also for the
                                tensors a model sees inside ``torch.export``
``numpy.ndarray``               ``A{code}s...`` (same rules, prefix ``A``; strings are 8)
onnxruntime ``OrtValue``        ``OV{code}s...`` (same rules, prefix ``OV``)
symbolic dimension              its symbol, ``T1s2xs17``, or its expression without
                                spaces inside parentheses, ``T1s2x(2*s17)``
``list``                        ``#N[item,item,...]``
``tuple``                       ``(item,item,...)``
``dict``                        ``dict(key:item,...)``
dynamic shape ``dict``          ``{0:Dim(batch,min=1,max=1024),2:DYNAMIC}``: a non-empty
                                dict whose values are all ``Dim``, ``Dim.DYNAMIC``,
                                ``Dim.AUTO``, ``Dim.STATIC`` or ``None``, at least one
                                not ``None``
``torch.export.Dim``            ``Dim(batch,min=1,max=1024)``; bounds left at their
                                default (min 0, no max) are omitted: ``Dim(batch)``
derived ``Dim``                 its expression: ``2*batch+1``
``Dim.DYNAMIC`` and co.         ``DYNAMIC``, ``AUTO``, ``STATIC``, with bounds if given:
                                ``AUTO(min=2,max=8)``
``None``                        ``None``
Python scalar                   its type (``int``, ``float``, ``bool``, ``str``);
                                with ``with_min_max=True`` its value too (``int=3``,
                                ``float=0.5``, ``str='abc'``)
``torch.SymInt`` and co.        ``SymInt=s17``
``DynamicCache``                ``DynamicCache(key_cache=#L[...], value_cache=#L[...])``
                                when every layer is a plain ``DynamicLayer``, see below
                                otherwise
``StaticCache``                 ``StaticCache(key_cache=#L[...], value_cache=#L[...])``
                                when every layer is a plain ``StaticLayer``, see below
                                otherwise
``EncoderDecoderCache``         ``EncoderDecoderCache(self_attention_cache=...,
                                cross_attention_cache=...)``
``ModelOutput``                 its class and non-None fields:
                                ``CausalLMOutputWithPast(logits:T1s2x3x32000,...)``
a cycle in containers           ``<cycle>``
anything else                   its class name
==============================  ==========================================================

With ``with_min_max=True`` a tensor, array or ``OrtValue`` is followed by
``[min,max:Amean]``; numbers keep four significant digits (``[-2,4:A1.5]``,
``[0.1235,1e+20:A5e+19]``). NaN and infinite values are left out of the
statistics and counted: ``[1,3:A2,NaN:1,Inf:2]``; ``[empty]`` stands for a tensor
without elements and ``[no finite value,NaN:3]`` for one without finite values.
Nothing is appended where there are no values to read: fake or meta tensors,
symbolic shapes, code traced by ``torch.export`` or ``torch.compile``, dtypes
that cannot be converted to float64 (``uint4``, ``float4_e2m1fn_x2``, strings).

Caches whose layers are not all plain ``DynamicLayer`` (or all plain
``StaticLayer``) list their layers, each as its class followed by the fields it
holds, in this order: ``sliding_window`` (the window of a
``DynamicSlidingWindowLayer``; a ``StaticSlidingWindowLayer`` only shows it in
its shapes), ``keys``, ``values``, ``indexer_keys``, ``indexer_position_ids``,
``quantized_keys``, ``quantized_values`` (the private storage of quantized
layers), ``conv_states`` and ``recurrent_states`` (the states of linear-attention
layers, as lists indexed by state). A field that holds nothing (``None``, or only
``None`` states) is left out, and a layer holding nothing (``DummyLayer``, a layer
not filled yet) is shown by its class name alone::

    DynamicCache(layers=#3[DynamicSlidingWindowLayer(sliding_window=4,keys=T1s2x1x3x8,
    values=T1s2x1x3x8),LinearAttentionLayer(conv_states=#1[T1s2x16x2],
    recurrent_states=#1[T1s2x2x4x4]),DummyLayer])

(one line, wrapped here). Layer and cache classes defined outside
``transformers.cache_utils`` (in a modeling file, or a subclass of your own) also
show their other public attributes holding tensors, in the order they were set:
``MiniMaxCache(key_cache=#1[...], value_cache=#1[...], linear_cache=#1[T1s1x2])``.
Caches of transformers 4.x that modeling files define without subclassing
``Cache`` (``Qwen3NextDynamicCache``, ``MambaCache``, ...) show their public
attributes holding tensors the same way:
``Qwen3NextDynamicCache(conv_states=#2[T1s2x16x2,None], ...)``.
A cache that cannot be read this way is shown by its class name.

``register_formatter`` adds a rendering for your own classes; it takes precedence
over every rule above.

``string_type`` can be called inside the ``forward`` of a model exported with
``torch.export.export`` (non-strict, the default): the model sees fake tensors
with symbolic shapes, ``F1s2xs17``, and nothing is added to the graph. Strict
export (``strict=True``) traces the function with dynamo, which cannot convert
symbolic dimensions to text: call it outside the traced code there.
"""

from __future__ import annotations

import contextlib
import inspect
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
    "uint4": 21,
    "int4": 22,
    # torch packs two float4 values per element, ONNX counts the values, but the
    # element type is the same one.
    "float4_e2m1fn_x2": 23,
    "float8_e8m0fnu": 24,
    "uint2": 25,
    "int2": 26,
}
_TORCH_CODES: dict[torch.dtype, int] = {
    getattr(torch, name): code
    for name, code in _ONNX_CODES_BY_NAME.items()
    if isinstance(getattr(torch, name, None), torch.dtype)
}

# numpy knows the usual types; ml_dtypes (a dependency of onnx) adds the small
# float and integer types under the names ONNX uses.
_NUMPY_NAMES = {
    **_ONNX_CODES_BY_NAME,
    "float4_e2m1fn": 23,
    "float6_e2m3fn": 27,
    "float6_e3m2fn": 28,
}
_NUMPY_CODES: dict[np.dtype, int] = {}
for _name, _code in _NUMPY_NAMES.items():
    with contextlib.suppress(TypeError):
        _NUMPY_CODES[np.dtype(_name)] = _code
try:
    import ml_dtypes as _ml_dtypes
except ImportError:  # pragma: no cover - ml_dtypes comes with onnx
    _ml_dtypes = None
if _ml_dtypes is not None:
    for _name, _code in _NUMPY_NAMES.items():
        _type = getattr(_ml_dtypes, _name, None)
        if _type is not None:
            _NUMPY_CODES.setdefault(np.dtype(_type), _code)
_ONNX_STRING = 8

# onnxruntime names element types "tensor(float)", ...; only used when
# OrtValue.element_type() does not return the ONNX code itself (older releases).
_ORT_CODES = {
    "tensor(float)": 1,
    "tensor(uint8)": 2,
    "tensor(int8)": 3,
    "tensor(uint16)": 4,
    "tensor(int16)": 5,
    "tensor(int32)": 6,
    "tensor(int64)": 7,
    "tensor(string)": 8,
    "tensor(bool)": 9,
    "tensor(float16)": 10,
    "tensor(double)": 11,
    "tensor(uint32)": 12,
    "tensor(uint64)": 13,
    "tensor(complex64)": 14,
    "tensor(complex128)": 15,
    "tensor(bfloat16)": 16,
    "tensor(float8e4m3fn)": 17,
    "tensor(float8e4m3fnuz)": 18,
    "tensor(float8e5m2)": 19,
    "tensor(float8e5m2fnuz)": 20,
    "tensor(uint4)": 21,
    "tensor(int4)": 22,
    "tensor(float4e2m1)": 23,
}

_FORMATTERS: dict[type, Callable[..., str]] = {}

_CACHE_MODULE = "transformers.cache_utils"
# Layers rendered as one entry of key_cache / value_cache.
_PLAIN_LAYERS = ("DynamicLayer", "StaticLayer")
# (attribute, displayed name) of the fields a cache layer may hold, in display order.
_LAYER_FIELDS = (
    ("sliding_window", "sliding_window"),
    ("keys", "keys"),
    ("values", "values"),
    ("indexer_keys", "indexer_keys"),
    ("indexer_position_ids", "indexer_position_ids"),
    ("_quantized_keys", "quantized_keys"),
    ("_quantized_values", "quantized_values"),
    ("conv_states", "conv_states"),
    ("recurrent_states", "recurrent_states"),
)
_STATE_FIELDS = ("conv_states", "recurrent_states")
_MAX_STR = 20


def onnx_dtype_code(dtype: torch.dtype | np.dtype | type) -> int:
    """Return the ONNX element type of a torch or numpy dtype.

    :param dtype: a ``torch.dtype``, a ``numpy.dtype`` or a numpy scalar type
        (``numpy.float32``, ``ml_dtypes.bfloat16``)
    :return: the ``onnx.TensorProto`` element type
    :raises TypeError: if ``dtype`` is not a dtype
    :raises ValueError: if ONNX has no element type for it

    >>> import numpy as np
    >>> import torch
    >>> onnx_dtype_code(torch.int64), onnx_dtype_code(np.dtype("float16"))
    (7, 10)
    """
    if isinstance(dtype, torch.dtype):
        if dtype in _TORCH_CODES:
            return _TORCH_CODES[dtype]
        raise ValueError(
            f"onnx_dtype_code: {dtype} has no ONNX element type; convert the tensor to one of "
            f"{', '.join(sorted(str(d) for d in _TORCH_CODES))} first."
        )
    if isinstance(dtype, np.dtype):
        np_dtype = dtype
    elif isinstance(dtype, type) and issubclass(dtype, np.generic):
        np_dtype = np.dtype(dtype)
    else:
        raise TypeError(
            "onnx_dtype_code: expected a torch.dtype, a numpy.dtype or a numpy scalar type, "
            f"got {type(dtype).__name__} {dtype!r}; for a tensor or an array pass its .dtype."
        )
    code = _numpy_code(np_dtype)
    if code is None:
        raise ValueError(
            f"onnx_dtype_code: numpy dtype {np_dtype} has no ONNX element type; convert the "
            "array to a numeric, bool or string dtype first."
        )
    return code


def _numpy_code(dtype: np.dtype) -> int | None:
    if dtype in _NUMPY_CODES:
        return _NUMPY_CODES[dtype]
    if dtype.kind in "USO":
        return _ONNX_STRING
    return None


def register_formatter(cls: type, formatter: Callable[..., str]) -> None:
    """Tell ``string_type`` how to render instances of ``cls``.

    ``formatter(obj, with_shape, with_min_max)`` must return a string. A formatter
    registered for a class also applies to its subclasses and takes precedence over
    the built-in rules. Registering again for the same class replaces the formatter.

    :param cls: the class to render
    :param formatter: a callable taking ``(obj, with_shape, with_min_max)``
    :raises TypeError: if ``cls`` is not a class or ``formatter`` cannot be called
        with three positional arguments

    >>> class Box:
    ...     def __init__(self, n):
    ...         self.n = n
    >>> register_formatter(Box, lambda obj, with_shape, with_min_max: f"Box{obj.n}")
    >>> string_type([Box(3)])
    '#1[Box3]'
    """
    if not isinstance(cls, type):
        raise TypeError(
            f"register_formatter: expected a class, got {type(cls).__name__} {cls!r}; "
            "pass the class itself, not an instance or its name."
        )
    if not callable(formatter):
        raise TypeError(
            f"register_formatter: the formatter for {cls.__name__} must be callable, "
            f"got {type(formatter).__name__}."
        )
    try:
        signature = inspect.signature(formatter)
    except (TypeError, ValueError):  # builtins without a signature: trust them
        signature = None
    if signature is not None:
        try:
            signature.bind(None, False, False)
        except TypeError as e:
            raise TypeError(
                f"register_formatter: the formatter for {cls.__name__} must accept three "
                f"positional arguments (obj, with_shape, with_min_max), its signature is "
                f"{signature}."
            ) from e
    _FORMATTERS[cls] = formatter


class _Context:
    """Options of one call to string_type and the containers being rendered."""

    def __init__(self, with_shape: bool, with_min_max: bool, limit: int) -> None:
        self.with_shape = with_shape
        self.with_min_max = with_min_max
        self.limit = limit
        self.active: set[int] = set()


def _format_number(x: float) -> str:
    if isinstance(x, bool | int):
        return str(x)
    if math.isnan(x) or math.isinf(x):
        return str(x)
    if x == int(x) and abs(x) < 1e15:
        return str(int(x))
    return f"{x:.4g}"


def _dim(d: Any) -> str:
    if isinstance(d, int):
        return str(d)
    text = str(d).replace(" ", "")
    if text.isidentifier() or text.lstrip("-").isdigit():
        return text
    return f"({text})"


def _tensor_string(prefix: str, code: int | str, shape: Any, with_shape: bool) -> str:
    if with_shape:
        return f"{prefix}{code}s{'x'.join(_dim(d) for d in shape)}"
    return f"{prefix}{code}r{len(shape)}"


def _stats(values: np.ndarray) -> str:
    """``[min,max:Amean]`` of a float64 array."""
    if values.size == 0:
        return "[empty]"
    n_nan = int(np.isnan(values).sum())
    n_inf = int(np.isinf(values).sum())
    suffix = (f",NaN:{n_nan}" if n_nan else "") + (f",Inf:{n_inf}" if n_inf else "")
    kept = values[np.isfinite(values)] if n_nan or n_inf else values
    if kept.size == 0:
        return f"[no finite value{suffix}]"
    return (
        f"[{_format_number(float(kept.min()))},{_format_number(float(kept.max()))}"
        f":A{_format_number(float(kept.mean()))}{suffix}]"
    )


def _numpy_stats(a: np.ndarray) -> str:
    if a.size == 0:
        return "[empty]"
    if a.dtype.kind in "USOV" and a.dtype not in _NUMPY_CODES:
        return ""  # strings, objects, structured arrays
    if a.dtype.kind == "c":
        a = np.abs(a)
    try:
        values = np.asarray(a, dtype=np.float64)
    except (TypeError, ValueError):
        return ""
    return _stats(values)


def _is_tracing() -> bool:
    compiler = getattr(torch, "compiler", None)
    return bool(compiler is not None and compiler.is_compiling())


def _has_symbolic_shape(t: torch.Tensor) -> bool:
    return any(not isinstance(d, int) for d in t.shape)


def _is_fake(t: torch.Tensor) -> bool:
    from torch._subclasses.fake_tensor import is_fake

    try:
        return bool(is_fake(t))
    except Exception:
        return False


def _torch_stats(t: torch.Tensor) -> str:
    if _is_fake(t) or t.is_meta or _has_symbolic_shape(t) or _is_tracing():
        return ""
    if t.numel() == 0:
        return "[empty]"
    try:
        with torch.no_grad():
            values = t.detach()
            if values.is_complex():
                values = values.abs()
            values = values.to(device="cpu", dtype=torch.float64).contiguous().numpy()
    except Exception:
        return ""  # dtypes torch cannot convert (uint4, float4_e2m1fn_x2, ...)
    return _stats(values)


def _torch_code(dtype: torch.dtype) -> int | str:
    return _TORCH_CODES.get(dtype, str(dtype).replace("torch.", ""))


def _render_tensor(t: torch.Tensor, ctx: _Context) -> str:
    prefix = "F" if _is_fake(t) else "T"
    s = _tensor_string(prefix, _torch_code(t.dtype), t.shape, ctx.with_shape)
    if ctx.with_min_max:
        s += _torch_stats(t)
    return s


def _render_array(a: np.ndarray, ctx: _Context) -> str:
    code = _numpy_code(a.dtype)
    s = _tensor_string("A", str(a.dtype) if code is None else code, a.shape, ctx.with_shape)
    if ctx.with_min_max:
        s += _numpy_stats(a)
    return s


def _is_ort_value(obj: Any) -> bool:
    return type(obj).__name__ == "OrtValue" and type(obj).__module__.startswith("onnxruntime")


def _render_ort_value(obj: Any, ctx: _Context) -> str | None:
    if not obj.is_tensor():
        return None
    elem = obj.element_type()
    code = elem if isinstance(elem, int) else _ORT_CODES.get(obj.data_type(), obj.data_type())
    s = _tensor_string("OV", code, obj.shape(), ctx.with_shape)
    if ctx.with_min_max:
        try:
            values = obj.numpy()
        except Exception:
            values = None
        if values is None:
            # no numpy type (bfloat16, float8): read it through dlpack if possible
            with contextlib.suppress(Exception):
                capsule = getattr(obj, "_ortvalue", obj).to_dlpack()
                s += _torch_stats(torch.utils.dlpack.from_dlpack(capsule))
        else:
            s += _numpy_stats(values)
    return s


def _dim_classes() -> tuple[type, ...]:
    from torch.export import dynamic_shapes as ds

    return tuple(c for c in (getattr(ds, "Dim", None), getattr(ds, "_DimHint", None)) if c)


def _render_dim(obj: Any) -> str | None:
    from torch.export import dynamic_shapes as ds

    hint = getattr(ds, "_DimHint", None)
    if hint is not None and isinstance(obj, hint):
        kind = getattr(obj.type, "name", str(obj.type))
        bounds = [f"{b}={v}" for b, v in (("min", obj.min), ("max", obj.max)) if v is not None]
        return f"{kind}({','.join(bounds)})" if bounds else kind
    if not isinstance(obj, ds.Dim):
        return None
    static = getattr(ds, "_StaticDim", None)
    if static is not None and isinstance(obj, static):
        return str(obj.value)
    derived = getattr(ds, "_DerivedDim", None)
    if derived is not None and isinstance(obj, derived):
        return str(obj.__name__).replace(" ", "")
    parts = [str(obj.__name__)]
    if isinstance(obj.min, int) and obj.min != 0:
        parts.append(f"min={obj.min}")
    if type(obj.max) is int:  # no upper bound is torch's int_oo
        parts.append(f"max={obj.max}")
    return f"Dim({','.join(parts)})"


def _is_dynamic_shape_dict(obj: dict) -> bool:
    if not obj:
        return False
    dims = _dim_classes()
    values = list(obj.values())
    return all(v is None or isinstance(v, dims) for v in values) and any(
        v is not None for v in values
    )


def _join(items: list[Any], ctx: _Context) -> str:
    parts = [_render(x, ctx) for x in items[: ctx.limit]]
    if len(items) > ctx.limit:
        parts.append("...")
    return ",".join(parts)


def _join_items(items: list[tuple[Any, Any]], ctx: _Context) -> str:
    parts = [f"{k}:{_render(v, ctx)}" for k, v in items[: ctx.limit]]
    if len(items) > ctx.limit:
        parts.append("...")
    return ",".join(parts)


def _render_list(items: list[Any], ctx: _Context) -> str:
    return f"#{len(items)}[{_join(items, ctx)}]"


def _class_in(obj: Any, names: tuple[str, ...], module: str) -> bool:
    for cls in type(obj).__mro__:
        if cls.__name__ in names and cls.__module__.startswith(module):
            return True
    return False


def _is_model_cache(obj: Any) -> bool:
    """A cache class of a modeling file that does not subclass ``Cache`` (transformers 4.x)."""
    cls = type(obj)
    return cls.__module__.startswith("transformers.models.") and cls.__name__.endswith("Cache")


def _is_cache(obj: Any) -> bool:
    return _class_in(obj, ("Cache",), "transformers") or _is_model_cache(obj)


def _holds_nothing(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, dict):
        return all(v is None for v in value.values())
    if isinstance(value, list | tuple):
        return all(v is None for v in value)
    return False


def _holds_tensor(value: Any, depth: int = 2) -> bool:
    if isinstance(value, torch.Tensor):
        return True
    if depth == 0:
        return False
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, list | tuple):
        return any(_holds_tensor(v, depth - 1) for v in value)
    return False


def _extra_attributes(obj: Any, known: set[str]) -> list[tuple[str, Any]]:
    """Public attributes holding tensors of a class defined outside cache_utils."""
    if type(obj).__module__ == _CACHE_MODULE:
        return []
    return [
        (name, value)
        for name, value in vars(obj).items()
        if not name.startswith("_") and name not in known and _holds_tensor(value)
    ]


def _render_states(states: Any, ctx: _Context) -> str:
    if isinstance(states, dict) and all(isinstance(k, int) for k in states):
        return _render_list([states[k] for k in sorted(states)], ctx)
    return _render(states, ctx)


def _render_layer(layer: Any, ctx: _Context) -> str:
    fields = []
    for attribute, name in _LAYER_FIELDS:
        value = getattr(layer, attribute, None)
        if _holds_nothing(value):
            continue
        if attribute == "sliding_window":
            text = str(value)
        elif attribute in _STATE_FIELDS:
            text = _render_states(value, ctx)
        else:
            text = _render(value, ctx)
        fields.append(f"{name}={text}")
    known = {a for a, _ in _LAYER_FIELDS} | {n for _, n in _LAYER_FIELDS}
    for name, value in _extra_attributes(layer, known):
        fields.append(f"{name}={_render(value, ctx)}")
    name = type(layer).__name__
    return f"{name}({','.join(fields)})" if fields else name


def _is_plain(layers: list[Any]) -> bool:
    if not layers:
        return True
    kinds = {(type(layer).__module__, type(layer).__name__) for layer in layers}
    return len(kinds) == 1 and kinds <= {(_CACHE_MODULE, n) for n in _PLAIN_LAYERS}


def _render_cache(obj: Any, ctx: _Context) -> str | None:
    """Renders transformers caches, or returns None if ``obj`` cannot be read."""
    name = type(obj).__name__
    if hasattr(obj, "self_attention_cache") and hasattr(obj, "cross_attention_cache"):
        sa = _render(obj.self_attention_cache, ctx)
        ca = _render(obj.cross_attention_cache, ctx)
        return f"{name}(self_attention_cache={sa}, cross_attention_cache={ca})"
    layers = getattr(obj, "layers", None)
    if isinstance(layers, list | tuple):
        layers = list(layers)
        if _is_plain(layers):
            k = _render_list([getattr(layer, "keys", None) for layer in layers], ctx)
            v = _render_list([getattr(layer, "values", None) for layer in layers], ctx)
            fields = [f"key_cache={k}", f"value_cache={v}"]
        else:
            fields = [f"layers=#{len(layers)}[{_join_layers(layers, ctx)}]"]
        known = {"layers", "layer_class_to_replicate"}
        fields.extend(f"{n}={_render(v, ctx)}" for n, v in _extra_attributes(obj, known))
        return f"{name}({', '.join(fields)})"
    if _is_model_cache(obj):
        fields = [f"{n}={_render(v, ctx)}" for n, v in _extra_attributes(obj, set())]
        return f"{name}({', '.join(fields)})" if fields else None
    if hasattr(obj, "key_cache") and hasattr(obj, "value_cache"):  # transformers < 4.56
        k = _render_list(list(obj.key_cache), ctx)
        v = _render_list(list(obj.value_cache), ctx)
        return f"{name}(key_cache={k}, value_cache={v})"
    return None


def _join_layers(layers: list[Any], ctx: _Context) -> str:
    parts = [_render_layer(layer, ctx) for layer in layers[: ctx.limit]]
    if len(layers) > ctx.limit:
        parts.append("...")
    return ",".join(parts)


def _render_scalar(obj: bool | int | float | str, ctx: _Context) -> str:
    kind = type(obj).__name__
    if not ctx.with_min_max:
        return kind
    if isinstance(obj, str):
        value = repr(obj[:_MAX_STR]) + ("..." if len(obj) > _MAX_STR else "")
    elif isinstance(obj, float):
        value = _format_number(obj)
    else:
        value = str(obj)
    return f"{kind}={value}"


def _render(obj: Any, ctx: _Context) -> str:
    for cls in type(obj).__mro__:
        if cls in _FORMATTERS:
            text = _FORMATTERS[cls](obj, ctx.with_shape, ctx.with_min_max)
            if not isinstance(text, str):
                raise TypeError(
                    f"string_type: the formatter registered for {cls.__name__} returned "
                    f"{type(text).__name__}, it must return a str."
                )
            return text
    if obj is None:
        return "None"
    if isinstance(obj, bool | int | float | str):
        return _render_scalar(obj, ctx)
    if isinstance(obj, torch.SymInt | torch.SymFloat | torch.SymBool):
        return f"{type(obj).__name__}={str(obj).replace(' ', '')}"
    if isinstance(obj, torch.Tensor):
        return _render_tensor(obj, ctx)
    if isinstance(obj, np.ndarray):
        return _render_array(obj, ctx)
    if _is_ort_value(obj):
        with contextlib.suppress(Exception):
            s = _render_ort_value(obj, ctx)
            if s is not None:
                return s
        return type(obj).__name__
    dim = _render_dim(obj)
    if dim is not None:
        return dim
    if not isinstance(obj, list | tuple | dict) and not _is_cache(obj):
        return type(obj).__name__
    if id(obj) in ctx.active:
        return "<cycle>"
    ctx.active.add(id(obj))
    try:
        return _render_container(obj, ctx)
    finally:
        ctx.active.discard(id(obj))


def _render_container(obj: Any, ctx: _Context) -> str:
    if _class_in(obj, ("ModelOutput",), "transformers"):
        try:
            items = [(k, v) for k, v in obj.items() if v is not None]
            return f"{type(obj).__name__}({_join_items(items, ctx)})"
        except Exception:
            return type(obj).__name__
    if _is_cache(obj):
        try:
            s = _render_cache(obj, ctx)
        except Exception:
            s = None
        return type(obj).__name__ if s is None else s
    if isinstance(obj, list):
        return _render_list(obj, ctx)
    if isinstance(obj, tuple):
        return f"({_join(list(obj), ctx)})"
    if _is_dynamic_shape_dict(obj):
        return f"{{{_join_items(list(obj.items()), ctx)}}}"
    return f"dict({_join_items(list(obj.items()), ctx)})"


def string_type(
    obj: Any, with_shape: bool = False, with_min_max: bool = False, limit: int = 20
) -> str:
    """Describe a nested structure of tensors, caches and containers in one line.

    :param obj: anything: tensors, arrays, containers, transformers caches and outputs,
        dynamic shapes
    :param with_shape: print shapes (``T1s2x3``) instead of ranks (``T1r2``)
    :param with_min_max: append ``[min,max:Amean]`` to tensors and values to scalars
    :param limit: at most that many items of a container are shown, then ``...``
    :return: one line, see the table in the module documentation
    :raises TypeError: if ``limit`` is not an int or a flag is not a bool
    :raises ValueError: if ``limit`` is smaller than 1

    >>> import torch
    >>> string_type({"input_ids": torch.zeros((2, 3), dtype=torch.int64)}, with_shape=True)
    'dict(input_ids:T7s2x3)'
    >>> string_type((torch.tensor([1.0, 3.0]), 3), with_min_max=True)
    '(T1r1[1,3:A2],int=3)'
    >>> string_type({0: torch.export.Dim("batch", max=64), 1: torch.export.Dim.DYNAMIC})
    '{0:Dim(batch,max=64),1:DYNAMIC}'
    """
    if not isinstance(limit, int) or isinstance(limit, bool):
        raise TypeError(
            f"string_type: limit must be an int (items shown per container), "
            f"got {type(limit).__name__} {limit!r}."
        )
    if limit < 1:
        raise ValueError(
            f"string_type: limit must be at least 1 (items shown per container), got {limit}."
        )
    for flag, value in (("with_shape", with_shape), ("with_min_max", with_min_max)):
        if not isinstance(value, bool | int | np.bool_):
            raise TypeError(
                f"string_type: {flag} must be True or False, got {type(value).__name__} "
                f"{value!r}; pass the options by keyword: string_type(obj, {flag}=True)."
            )
    return _render(obj, _Context(bool(with_shape), bool(with_min_max), limit))
