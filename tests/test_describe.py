import numpy as np
import pytest
import torch
from support import CACHE_FIELD, needs_cache_classes, needs_model_types

from exportcheck import make_dynamic_cache, onnx_dtype_code, register_formatter, string_type


@pytest.mark.parametrize(
    ("dtype", "code"),
    [
        (torch.float32, 1),
        (torch.uint8, 2),
        (torch.int8, 3),
        (torch.int16, 5),
        (torch.int32, 6),
        (torch.int64, 7),
        (torch.bool, 9),
        (torch.float16, 10),
        (torch.float64, 11),
        (torch.bfloat16, 16),
    ],
)
def test_dtype_codes(dtype, code):
    assert onnx_dtype_code(dtype) == code
    assert string_type(torch.zeros((2, 3), dtype=dtype), with_shape=True) == f"T{code}s2x3"
    assert string_type(torch.zeros((2, 3), dtype=dtype)) == f"T{code}r2"


def test_numpy_prefix_and_codes():
    assert string_type(np.zeros((4,), dtype=np.float16), with_shape=True) == "A10s4"
    assert string_type(np.zeros((1, 2), dtype=np.int64)) == "A7r2"


def test_seed_string_with_cache():
    cache = make_dynamic_cache([(torch.rand(2, 1, 30, 96), torch.rand(2, 1, 30, 96))])
    inputs = dict(
        input_ids=torch.zeros((2, 3), dtype=torch.int64),
        attention_mask=torch.ones((2, 33), dtype=torch.int64),
        cache=cache,
    )
    assert string_type(inputs, with_shape=True) == (
        "dict(input_ids:T7s2x3,attention_mask:T7s2x33,"
        "cache:DynamicCache(key_cache=#1[T1s2x1x30x96], value_cache=#1[T1s2x1x30x96]))"
    )


def test_seed_string_of_generate_call():
    call = [
        (),
        dict(
            cache_position=torch.arange(8),
            input_ids=torch.zeros((1, 8), dtype=torch.int64),
            inputs_embeds=None,
            use_cache=True,
            return_dict=True,
        ),
    ]
    assert string_type(call, with_shape=True) == (
        "#2[(),dict(cache_position:T7s8,input_ids:T7s1x8,inputs_embeds:None,"
        "use_cache:bool,return_dict:bool)]"
    )


def test_nesting():
    obj = [(torch.zeros(1), [None, 1.5]), {"a": {"b": "x"}}]
    assert string_type(obj) == "#2[(T1r1,#2[None,float]),dict(a:dict(b:str))]"


def test_min_max_and_scalars():
    t = torch.tensor([[1.0, -2.0], [4.0, 3.0]])
    assert string_type(t, with_shape=True, with_min_max=True) == "T1s2x2[-2,4:A1.5]"
    assert string_type(3, with_min_max=True) == "int=3"
    assert string_type(torch.zeros((0, 3)), with_min_max=True) == "T1r2[empty]"
    with_nan = torch.tensor([1.0, float("nan"), 3.0])
    assert string_type(with_nan, with_min_max=True) == "T1r1[1,3:A2,NaN:1]"


def test_limit():
    assert string_type([torch.zeros(2)] * 300, with_shape=True, limit=2) == "#300[T1s2,T1s2,...]"


def test_unknown_object_is_its_class_name():
    class Thing:
        pass

    assert string_type([Thing()]) == "#1[Thing]"


def test_register_formatter():
    class Box:
        pass

    register_formatter(Box, lambda obj, with_shape, with_min_max: "BOX")
    assert string_type((Box(), 1)) == "(BOX,int)"
    with pytest.raises(TypeError, match="expected a class"):
        register_formatter("Box", lambda *a: "")


def test_model_output():
    from transformers.modeling_outputs import CausalLMOutputWithPast

    out = CausalLMOutputWithPast(logits=torch.zeros((2, 3, 8)))
    assert string_type(out, with_shape=True) == "CausalLMOutputWithPast(logits:T1s2x3x8)"


def test_bad_limit():
    with pytest.raises(ValueError, match="limit must be at least 1"):
        string_type([1], limit=0)


# --- dtypes ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "code"),
    [
        ("uint16", 4),
        ("uint32", 12),
        ("uint64", 13),
        ("complex64", 14),
        ("complex128", 15),
        ("float8_e4m3fn", 17),
        ("float8_e4m3fnuz", 18),
        ("float8_e5m2", 19),
        ("float8_e5m2fnuz", 20),
        ("uint4", 21),
        ("int4", 22),
        ("float4_e2m1fn_x2", 23),
        ("float8_e8m0fnu", 24),
        ("uint2", 25),
        ("int2", 26),
    ],
)
def test_every_torch_dtype_with_an_onnx_code(name, code):
    dtype = getattr(torch, name)
    assert onnx_dtype_code(dtype) == code
    # meta tensors: sub-byte dtypes cannot be filled on CPU
    t = torch.empty((2, 3), dtype=dtype, device="meta")
    assert string_type(t, with_shape=True) == f"T{code}s2x3"
    assert string_type(t, with_min_max=True) == f"T{code}r2"


@pytest.mark.filterwarnings("ignore:ComplexHalf support is experimental")
def test_dtype_without_onnx_code_shows_its_name():
    t = torch.empty((2,), dtype=torch.complex32, device="meta")
    assert string_type(t) == "Tcomplex32r1"
    with pytest.raises(ValueError, match=r"torch.complex32 has no ONNX element type; convert"):
        onnx_dtype_code(torch.complex32)


def test_onnx_dtype_code_of_numpy_dtypes():
    import ml_dtypes

    assert onnx_dtype_code(np.dtype("float32")) == 1
    assert onnx_dtype_code(np.float64) == 11
    assert onnx_dtype_code(np.dtype(np.bool_)) == 9
    assert onnx_dtype_code(ml_dtypes.bfloat16) == 16
    assert onnx_dtype_code(np.dtype(ml_dtypes.float8_e5m2)) == 19
    assert onnx_dtype_code(np.dtype("U3")) == 8


@pytest.mark.parametrize("bad", ["float32", None, 7, torch.zeros(1)])
def test_onnx_dtype_code_rejects_non_dtypes(bad):
    with pytest.raises(
        TypeError, match=r"expected a torch\.dtype, a numpy\.dtype or a numpy scalar"
    ):
        onnx_dtype_code(bad)


def test_onnx_dtype_code_of_numpy_dtype_without_code():
    with pytest.raises(ValueError, match=r"numpy dtype datetime64\[s\] has no ONNX element type"):
        onnx_dtype_code(np.dtype("datetime64[s]"))


# --- numpy and onnxruntime ---------------------------------------------------------------


def test_numpy_min_max():
    import ml_dtypes

    assert string_type(np.array([1, 2, 3], dtype=np.int32), with_min_max=True) == "A6r1[1,3:A2]"
    bf16 = np.array([1, 2], dtype=ml_dtypes.bfloat16)
    assert string_type(bf16, with_shape=True, with_min_max=True) == "A16s2[1,2:A1.5]"
    assert string_type(np.zeros((0, 2)), with_shape=True, with_min_max=True) == "A11s0x2[empty]"
    # strings: code 8, no statistics
    assert string_type(np.array(["a", "bc"]), with_shape=True, with_min_max=True) == "A8s2"


def test_ort_value():
    import onnxruntime as ort

    v = ort.OrtValue.ortvalue_from_numpy(np.array([[1.0, -2.0, 4.0]], dtype=np.float32))
    assert string_type(v, with_shape=True) == "OV1s1x3"
    assert string_type(v, with_min_max=True) == "OV1r2[-2,4:A1]"
    i = ort.OrtValue.ortvalue_from_numpy(np.zeros((0,), dtype=np.int64))
    assert string_type([i], with_shape=True, with_min_max=True) == "#1[OV7s0[empty]]"
    # the C++ OrtValue returned by run_with_ort_values renders the same way
    assert string_type(v._ortvalue, with_shape=True) == "OV1s1x3"
    # bfloat16 has no numpy type: read through dlpack
    bf16 = ort.OrtValue.ortvalue_from_numpy_with_onnx_type(
        np.array([16256, 16384], dtype=np.uint16), 16
    )
    assert string_type(bf16, with_shape=True, with_min_max=True) == "OV16s2[1,2:A1.5]"


# --- fake tensors, symbolic shapes, torch.export ------------------------------------------


def _symbolic_fake(shape, dynamic):
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.fx.experimental.symbolic_shapes import (
        DimDynamic,
        ShapeEnv,
        StatelessSymbolicContext,
    )

    mode = FakeTensorMode(shape_env=ShapeEnv())
    context = StatelessSymbolicContext(
        dynamic_sizes=[DimDynamic.DYNAMIC if d else DimDynamic.STATIC for d in dynamic]
    )
    return mode, mode.from_tensor(torch.rand(shape), symbolic_context=context)


def test_fake_tensor_prefix_and_no_statistics():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode() as mode:
        t = mode.from_tensor(torch.rand(2, 3))
    assert string_type(t, with_shape=True) == "F1s2x3"
    assert string_type(t, with_shape=True, with_min_max=True) == "F1s2x3"
    meta = torch.empty((2,), device="meta")
    assert string_type(meta, with_min_max=True) == "T1r1"


def test_symbolic_dimensions():
    import re

    mode, t = _symbolic_fake((2, 17), (False, True))
    sym = str(t.shape[1])
    assert re.fullmatch(r"s\d+", sym)
    assert string_type(t, with_shape=True) == f"F1s2x{sym}"
    assert string_type(t, with_shape=True, with_min_max=True) == f"F1s2x{sym}"
    assert string_type(t) == "F1r2"
    with mode:
        doubled = torch.cat([t, t], dim=1)
        shorter = t[:, 1:]
    assert string_type([doubled, shorter], with_shape=True, with_min_max=True) == (
        f"#2[F1s2x(2*{sym}),F1s2x({sym}-1)]"
    )
    assert string_type(t.shape[1], with_min_max=True) == f"SymInt={sym}"


def test_inside_torch_export():
    seen = {}

    class Model(torch.nn.Module):
        def forward(self, x):
            y = torch.cat([x, x], dim=1)
            seen["sym"] = str(x.shape[1])
            seen["inputs"] = string_type((x, y), with_shape=True, with_min_max=True)
            seen["constant"] = string_type(torch.tensor([1.0, 2.0]), with_min_max=True)
            return y + 1

    ep = torch.export.export(
        Model(), (torch.rand(2, 5),), dynamic_shapes=({1: torch.export.Dim("seq")},)
    )
    sym = seen["sym"]
    assert seen["inputs"] == f"(F1s2x{sym},F1s2x(2*{sym}))"
    assert seen["constant"] == "F1r1"
    # with_min_max added nothing to the graph
    targets = [str(n.target) for n in ep.graph.nodes if n.op == "call_function"]
    assert targets == ["aten.cat.default", "aten.add.Tensor"]


# --- containers and scalars ---------------------------------------------------------------


def test_containers_and_scalars():
    obj = [(1, 0.5, True, "abc", None), {"k": []}, ()]
    assert string_type(obj) == "#3[(int,float,bool,str,None),dict(k:#0[]),()]"
    assert string_type(obj, with_min_max=True) == (
        "#3[(int=1,float=0.5,bool=True,str='abc',None),dict(k:#0[]),()]"
    )
    assert string_type({}) == "dict()"
    long = "a" * 30
    assert string_type(long, with_min_max=True) == "str='" + "a" * 20 + "'..."
    assert string_type({1: 2}) == "dict(1:int)"


def test_min_max_statistics():
    assert string_type(torch.tensor([0.123456, 1e20]), with_min_max=True) == (
        "T1r1[0.1235,1e+20:A5e+19]"
    )
    assert string_type(
        torch.tensor([1.0, float("inf"), float("-inf"), 3.0]), with_min_max=True
    ) == ("T1r1[1,3:A2,Inf:2]")
    assert string_type(torch.tensor([float("nan")] * 3), with_min_max=True) == (
        "T1r1[no finite value,NaN:3]"
    )
    assert string_type(torch.tensor([True, False]), with_min_max=True) == "T9r1[0,1:A0.5]"
    assert string_type(torch.tensor([3 + 4j]), with_min_max=True) == "T14r1[5,5:A5]"
    assert string_type(torch.tensor(2.5), with_shape=True, with_min_max=True) == "T1s[2.5,2.5:A2.5]"


def test_limit_on_every_container():
    assert string_type(tuple(range(5)), limit=2) == "(int,int,...)"
    assert string_type(dict(a=1, b=2, c=3), limit=1) == "dict(a:int,...)"
    assert string_type([[1, 2, 3]], limit=1) == "#1[#3[int,...]]"


def test_cycle():
    loop = [1]
    loop.append(loop)
    assert string_type(loop) == "#2[int,<cycle>]"
    shared = [0]
    assert string_type([shared, shared]) == "#2[#1[int],#1[int]]"


def test_anything_else_is_its_class_name():
    assert string_type([torch.device("cpu"), {1, 2}, object(), np.float32(1)]) == (
        "#4[device,set,object,float32]"
    )


# --- dynamic shapes -----------------------------------------------------------------------


def test_dims():
    from torch.export import Dim

    batch = Dim("batch", min=1, max=1024)
    assert string_type(batch) == "Dim(batch,min=1,max=1024)"
    assert string_type(Dim("seq")) == "Dim(seq)"
    assert string_type(Dim("seq", min=2)) == "Dim(seq,min=2)"
    assert string_type(Dim("seq", max=8)) == "Dim(seq,max=8)"
    assert string_type([Dim.DYNAMIC, Dim.AUTO, Dim.STATIC]) == "#3[DYNAMIC,AUTO,STATIC]"
    assert string_type(Dim.AUTO(min=2, max=8)) == "AUTO(min=2,max=8)"
    assert string_type(2 * Dim("x") + 1) == "2*x+1"


def test_dynamic_shape_dicts():
    from torch.export import Dim

    batch = Dim("batch", min=1, max=1024)
    spec = {0: batch, 1: None, 2: Dim.DYNAMIC}
    assert string_type(spec) == "{0:Dim(batch,min=1,max=1024),1:None,2:DYNAMIC}"
    nested = {
        "input_ids": {0: batch, 1: 2 * Dim("s")},
        "cache": [[{0: batch}], [{0: batch}]],
        "mask": (None, Dim.AUTO),
    }
    assert string_type(nested) == (
        "dict(input_ids:{0:Dim(batch,min=1,max=1024),1:2*s},"
        "cache:#2[#1[{0:Dim(batch,min=1,max=1024)}],#1[{0:Dim(batch,min=1,max=1024)}]],"
        "mask:(None,AUTO))"
    )
    # not dynamic shapes: only None, empty, or other values
    assert string_type({0: None}) == "dict(0:None)"
    assert string_type({0: batch, 1: 3}) == "dict(0:Dim(batch,min=1,max=1024),1:int)"


# --- caches ---------------------------------------------------------------------------------


def _tiny_config(model_type, **kwargs):
    from transformers import AutoConfig

    base = dict(
        vocab_size=32,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=8,
        max_position_embeddings=64,
    )
    base.update(kwargs)
    return AutoConfig.for_model(model_type, **base)


def _kv(length=3):
    return torch.ones((2, 1, length, 8))


def _sliding_config():
    return _tiny_config(
        "qwen2",
        layer_types=["sliding_attention", "full_attention"],
        sliding_window=4,
        use_sliding_window=True,
    )


def test_causal_lm_output_of_a_tiny_model():
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(_tiny_config("llama")).eval()
    with torch.no_grad():
        out = model(input_ids=torch.zeros((2, 3), dtype=torch.int64), use_cache=True)
    assert string_type(out, with_shape=True) == (
        f"CausalLMOutputWithPast(logits:T1s2x3x32,{CACHE_FIELD}:DynamicCache("
        "key_cache=#2[T1s2x1x3x8,T1s2x1x3x8], value_cache=#2[T1s2x1x3x8,T1s2x1x3x8]))"
    )


@needs_cache_classes("LinearAttentionLayer")
def test_linear_attention_cache_of_a_tiny_model():
    from transformers import AutoModelForCausalLM

    config = _tiny_config(
        "qwen3_next",
        layer_types=["linear_attention", "full_attention"],
        linear_num_value_heads=2,
        linear_num_key_heads=1,
        linear_key_head_dim=4,
        linear_value_head_dim=4,
        linear_conv_kernel_dim=2,
        num_experts=2,
        num_experts_per_tok=1,
        moe_intermediate_size=8,
        shared_expert_intermediate_size=8,
    )
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():
        out = model(input_ids=torch.zeros((2, 3), dtype=torch.int64), use_cache=True)
    assert string_type(out, with_shape=True) == (
        "MoeCausalLMOutputWithPast(logits:T1s2x3x32,cache:DynamicCache(layers=#2["
        "LinearAttentionLayer(conv_states=#1[T1s2x16x2],recurrent_states=#1[T1s2x2x4x4]),"
        "DynamicLayer(keys=T1s2x1x3x8,values=T1s2x1x3x8)]))"
    )


def test_sliding_window_cache():
    from transformers.cache_utils import DynamicCache

    cache = DynamicCache(config=_sliding_config())
    assert string_type(cache, with_shape=True) == (
        "DynamicCache(layers=#2[DynamicSlidingWindowLayer(sliding_window=4),DynamicLayer])"
    )
    for layer in cache.layers:
        layer.update(_kv(), _kv())
    assert string_type(cache, with_shape=True, with_min_max=True) == (
        "DynamicCache(layers=#2[DynamicSlidingWindowLayer(sliding_window=4,"
        "keys=T1s2x1x3x8[1,1:A1],values=T1s2x1x3x8[1,1:A1]),"
        "DynamicLayer(keys=T1s2x1x3x8[1,1:A1],values=T1s2x1x3x8[1,1:A1])])"
    )
    assert string_type(cache, limit=1) == (
        "DynamicCache(layers=#2[DynamicSlidingWindowLayer(sliding_window=4,keys=T1r4,"
        "values=T1r4),...])"
    )


@needs_cache_classes("LinearAttentionLayer", "DynamicIndexedLayer", "DummyLayer")
def test_every_kind_of_layer():
    from transformers import cache_utils as cu

    linear = cu.LinearAttentionLayer(number_of_states=2)
    linear.update_conv_state(torch.zeros((2, 16, 2)))
    linear.update_recurrent_state(torch.zeros((2, 2, 4, 4)))
    hybrid = cu.LinearAttentionAndFullAttentionLayer()
    hybrid.update(_kv(), _kv())
    hybrid.update_conv_state(torch.zeros((2, 16, 2)))
    indexed = cu.DynamicIndexedLayer()
    indexed.update(_kv(), _kv())
    indexed.update_indexer(torch.zeros((2, 3, 4)))
    cache = cu.DynamicCache()
    cache.layers = [
        linear,
        hybrid,
        indexed,
        cu.DummyLayer(),
        cu.LinearAttentionLayer(),
        cu.DynamicLayer(),
    ]
    assert string_type(cache, with_shape=True) == (
        "DynamicCache(layers=#6["
        "LinearAttentionLayer(conv_states=#2[T1s2x16x2,None],"
        "recurrent_states=#2[T1s2x2x4x4,None]),"
        "LinearAttentionAndFullAttentionLayer(keys=T1s2x1x3x8,values=T1s2x1x3x8,"
        "conv_states=#1[T1s2x16x2]),"
        "DynamicIndexedLayer(keys=T1s2x1x3x8,values=T1s2x1x3x8,indexer_keys=T1s2x3x4),"
        "DummyLayer,LinearAttentionLayer,DynamicLayer])"
    )


def test_static_caches():
    from transformers.cache_utils import StaticCache

    cache = StaticCache(config=_tiny_config("llama"), max_cache_len=8)
    assert string_type(cache) == "StaticCache(key_cache=#2[None,None], value_cache=#2[None,None])"
    cache.update(_kv(), _kv(), 0)
    cache.update(_kv(), _kv(), 1)
    assert string_type(cache, with_shape=True) == (
        "StaticCache(key_cache=#2[T1s2x1x8x8,T1s2x1x8x8], value_cache=#2[T1s2x1x8x8,T1s2x1x8x8])"
    )
    sliding = StaticCache(config=_sliding_config(), max_cache_len=8)
    sliding.update(_kv(), _kv(), 0)
    sliding.update(_kv(), _kv(), 1)
    assert string_type(sliding, with_shape=True) == (
        "StaticCache(layers=#2[StaticSlidingWindowLayer(keys=T1s2x1x4x8,values=T1s2x1x4x8),"
        "StaticLayer(keys=T1s2x1x8x8,values=T1s2x1x8x8)])"
    )


def test_encoder_decoder_cache():
    from transformers.cache_utils import DynamicCache, EncoderDecoderCache

    cache = EncoderDecoderCache(make_dynamic_cache([(_kv(), _kv())]), DynamicCache())
    assert string_type(cache, with_shape=True) == (
        "EncoderDecoderCache(self_attention_cache=DynamicCache(key_cache=#1[T1s2x1x3x8], "
        "value_cache=#1[T1s2x1x3x8]), cross_attention_cache=DynamicCache(key_cache=#0[], "
        "value_cache=#0[]))"
    )


def test_cache_class_of_a_modeling_file_without_the_cache_base_class():
    # transformers 4.x hybrid models (qwen3_next, mamba, ...) keep their states in a
    # class of their modeling file that does not derive from Cache.
    cls = type("ToyHybridCache", (), {"__module__": "transformers.models.toy.modeling_toy"})
    cache = cls()
    cache.layer_types = ["linear_attention", "full_attention"]
    cache.conv_states = [torch.zeros((2, 16, 2)), None]
    cache.key_cache = [None, _kv()]
    cache._private = [_kv()]
    assert string_type(cache, with_shape=True) == (
        "ToyHybridCache(conv_states=#2[T1s2x16x2,None], key_cache=#2[None,T1s2x1x3x8])"
    )
    assert string_type(cls()) == "ToyHybridCache"


@needs_cache_classes("MtpCache")
@needs_model_types("minimax")
def test_other_cache_classes():
    from transformers.cache_utils import MtpCache, QuantizedCache
    from transformers.models.minimax.modeling_minimax import MiniMaxCache

    mtp = MtpCache()
    mtp.update(_kv(), _kv(), 0)
    assert string_type(mtp, with_shape=True) == (
        "MtpCache(key_cache=#1[T1s2x1x3x8], value_cache=#1[T1s2x1x3x8])"
    )
    quantized = QuantizedCache("fp8", _tiny_config("llama"))
    quantized.update(_kv(), _kv(), 0)
    assert string_type(quantized, with_shape=True) == (
        "QuantizedCache(layers=#2[Fp8QuantizedLayer(keys=T1s0,values=T1s0,"
        "quantized_keys=(T17s2x1x3x8,T1s),quantized_values=(T17s2x1x3x8,T1s)),"
        "Fp8QuantizedLayer])"
    )
    minimax = MiniMaxCache()
    minimax.set_linear_cache(0, torch.zeros((1, 2)))
    assert string_type(minimax, with_shape=True) == (
        "MiniMaxCache(key_cache=#0[], value_cache=#0[], linear_cache=#1[T1s1x2])"
    )


def test_cache_and_layer_classes_of_your_own():
    from transformers.cache_utils import Cache, DynamicLayer

    class ScoredLayer(DynamicLayer):
        def __init__(self):
            super().__init__()
            self.scores = torch.zeros((2, 3))
            self.name = "not a tensor"

    class MemoryCache(Cache):
        def __init__(self):
            super().__init__(layers=[ScoredLayer()])
            self.memory = [torch.zeros((1,))]

    assert string_type(MemoryCache(), with_shape=True) == (
        "MemoryCache(layers=#1[ScoredLayer(scores=T1s2x3)], memory=#1[T1s1])"
    )

    class Unreadable(Cache):
        def __init__(self):
            super().__init__(layers=[])

        @property
        def layers(self):
            raise RuntimeError("no layers")

        @layers.setter
        def layers(self, value):
            pass

    class NoLayers(Cache):
        def __init__(self):
            pass

    assert string_type([Unreadable(), NoLayers()]) == "#2[Unreadable,NoLayers]"


# --- bad inputs -----------------------------------------------------------------------------


@pytest.mark.parametrize("limit", [1.5, "3", None, True])
def test_limit_must_be_an_int(limit):
    with pytest.raises(TypeError, match="limit must be an int"):
        string_type([1], limit=limit)


def test_negative_limit():
    with pytest.raises(ValueError, match=r"limit must be at least 1 .* got -2"):
        string_type([1], limit=-2)


def test_flags_must_be_bools():
    with pytest.raises(TypeError, match="with_shape must be True or False, got str"):
        string_type([1], "yes")
    with pytest.raises(TypeError, match="with_min_max must be True or False"):
        string_type([1], with_min_max=[True])


def test_register_formatter_errors_and_precedence():
    class Thing:
        pass

    with pytest.raises(TypeError, match="expected a class, got Thing"):
        register_formatter(Thing(), lambda *a: "")
    with pytest.raises(TypeError, match="the formatter for Thing must be callable, got str"):
        register_formatter(Thing, "THING")
    with pytest.raises(TypeError, match=r"must accept three positional arguments"):
        register_formatter(Thing, lambda obj: "THING")

    register_formatter(Thing, lambda obj, with_shape, with_min_max: 3)
    with pytest.raises(TypeError, match="formatter registered for Thing returned int"):
        string_type(Thing())

    class Stack(list):
        pass

    class SubStack(Stack):
        pass

    register_formatter(Stack, lambda obj, with_shape, with_min_max: f"Stack{len(obj)}")
    assert string_type([Stack([1]), SubStack([1, 2]), [1]]) == "#3[Stack1,Stack2,#1[int]]"


def test_module_documentation_is_valid_rest():
    import docutils.core

    from exportcheck import describe

    docutils.core.publish_doctree(
        describe.__doc__, settings_overrides={"report_level": 2, "halt_level": 2}
    )
