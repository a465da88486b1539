import math

import numpy as np
import pytest
import torch

from exportcheck import make_dynamic_cache, max_diff, string_type


def test_identical():
    d = max_diff([torch.ones(2)], (torch.ones(2),))
    assert d == {"abs": 0.0, "rel": 0.0, "leaves": 1, "nan": 0, "mismatch": None}


def test_cache_against_flat_arrays():
    k, v = torch.ones(1, 1, 2, 3), torch.zeros(1, 1, 2, 3)
    cache = make_dynamic_cache([(k, v)])
    d = max_diff(
        {"logits": torch.ones(2), "cache": cache}, [np.ones(2), k.numpy() + 0.25, v.numpy()]
    )
    assert d["abs"] == 0.25
    assert d["leaves"] == 3


def test_count_and_shape_mismatch():
    assert (
        "expected 2 output tensors, got 1"
        in max_diff([torch.ones(1)] * 2, [torch.ones(1)])["mismatch"]
    )
    d = max_diff([torch.ones(2)], [torch.ones(3)])
    assert math.isinf(d["abs"]) and "shape (3,)" in d["mismatch"]


def test_nan_on_one_side_only():
    d = max_diff([torch.tensor([1.0, 2.0])], [torch.tensor([1.0, float("nan")])])
    assert d["nan"] == 1 and math.isinf(d["abs"])


def test_uncomparable_leaf():
    with pytest.raises(TypeError, match="only tensors, arrays and numbers compare"):
        max_diff([torch.ones(1)], ["x"])


def _constraint_error(suggestions):
    text = "Constraints violated (cache_length)! For more information, run with TORCH_LOGS.\n"
    text += "  - Not all values of cache_length in the specified range satisfy the guard.\n"
    if suggestions:
        text += "\nSuggested fixes:\n" + "".join(f"  {s}\n" for s in suggestions)
    return RuntimeError(text)


def _cache_spec():
    batch = torch.export.Dim("batch", min=1, max=1024)
    cache = torch.export.Dim("cache_length", min=1, max=8128)
    return {"input_ids": {0: batch}, "cache": [{0: batch, 2: cache}]}


def test_refine_narrows_the_bounds_torch_suggests():
    from exportcheck.dims import refine_dynamic_shapes

    error = _constraint_error(["cache_length = Dim('cache_length', max=510)"])
    refined, note = refine_dynamic_shapes(_cache_spec(), error)
    dim = refined["cache"][0][2]
    assert (dim.__name__, dim.min, dim.max) == ("cache_length", 1, 510)
    assert refined["cache"][0][0].max == 1024  # other dimensions untouched
    assert note == "export suggested narrower bounds: cache_length in [1, 510]"


@pytest.mark.parametrize(
    "suggestions",
    [
        ["cache_length = 30"],  # a specialization
        ["cache_length = Dim('cache_length', max=1)"],  # one value left with min=1
        ["_c = Dim('_c', min=1, max=1)", "cache_length = 4*_c - 1"],
    ],
)
def test_refine_never_applies_a_specialization(suggestions):
    from exportcheck.dims import refine_dynamic_shapes

    assert refine_dynamic_shapes(_cache_spec(), _constraint_error(suggestions)) is None


def test_refine_relaxes_to_auto_when_torch_suggests_nothing():
    from exportcheck.dims import refine_dynamic_shapes

    refined, note = refine_dynamic_shapes(_cache_spec(), _constraint_error([]))
    assert string_type(refined) == (
        "dict(input_ids:{0:AUTO(min=1,max=1024)},cache:#1[{0:AUTO(min=1,max=1024),"
        "2:AUTO(min=1,max=8128)}])"
    )
    assert note.startswith("named dimensions relaxed to Dim.AUTO after an unprovable guard")
    assert refine_dynamic_shapes(_cache_spec(), RuntimeError("shape mismatch")) is None
