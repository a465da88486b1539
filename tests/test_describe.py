import numpy as np
import pytest
import torch

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
