import math

import numpy as np
import pytest
import torch

from exportcheck import make_dynamic_cache, max_diff


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
