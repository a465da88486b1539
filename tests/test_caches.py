import copy

import pytest
import torch
import torch.fx._pytree as fx_pytree
import torch.utils._pytree as pytree

from exportcheck import cache_pytrees, make_dynamic_cache, registered_cache_classes


def _pairs(n_layers=2, batch=2, length=5):
    return [
        (torch.randn(batch, 1, length, 4), torch.randn(batch, 1, length, 4))
        for _ in range(n_layers)
    ]


def test_make_dynamic_cache_holds_the_tensors():
    pairs = _pairs()
    cache = make_dynamic_cache(pairs)
    assert len(cache.layers) == 2
    for layer, (k, v) in zip(cache.layers, pairs, strict=True):
        assert layer.keys is k
        assert layer.values is v
    assert cache.get_seq_length() == 5


@pytest.mark.parametrize(
    ("pairs", "error", "message"),
    [
        (torch.zeros(3), TypeError, "expected a list of \\(key, value\\) pairs"),
        ([torch.zeros(1)], TypeError, "layer 0 must be a \\(key, value\\) pair"),
        ([(torch.zeros(1, 1, 2, 4), "x")], TypeError, "the value of layer 0 must be a tensor"),
        ([(torch.zeros(1, 2, 4), torch.zeros(1, 2, 4))], ValueError, "must have 4 dimensions"),
        (
            [(torch.zeros(2, 1, 30, 96), torch.zeros(2, 1, 31, 96))],
            ValueError,
            "key and value of layer 0 differ in shape \\(2x1x30x96 vs 2x1x31x96\\)",
        ),
        (
            [(torch.zeros(2, 1, 3, 4), torch.zeros(2, 1, 3, 4, dtype=torch.float16))],
            ValueError,
            "differ in dtype",
        ),
        (
            [
                (torch.zeros(2, 1, 3, 4), torch.zeros(2, 1, 3, 4)),
                (torch.zeros(2, 1, 3, 4).double(), torch.zeros(2, 1, 3, 4).double()),
            ],
            ValueError,
            "layer 1 has dtype torch.float64 but layer 0 has torch.float32",
        ),
    ],
)
def test_make_dynamic_cache_bad_inputs(pairs, error, message):
    with pytest.raises(error, match=message):
        make_dynamic_cache(pairs)


def _registry_snapshot():
    return [
        dict(pytree.SUPPORTED_NODES),
        dict(pytree.SUPPORTED_SERIALIZED_TYPES),
        dict(pytree.SERIALIZED_TYPE_TO_PYTHON_TYPE),
        dict(fx_pytree.SUPPORTED_NODES),
        dict(fx_pytree.SUPPORTED_NODES_EXACT_MATCH),
    ]


def test_registry_unchanged_after_exit():
    before = _registry_snapshot()
    with cache_pytrees():
        for cls in registered_cache_classes():
            assert cls in pytree.SUPPORTED_NODES
        with cache_pytrees():  # nesting
            pass
        assert _registry_snapshot() != before
    assert _registry_snapshot() == before
    for cls in registered_cache_classes():
        assert cls not in pytree.SUPPORTED_NODES


def test_registry_restored_after_exception():
    before = _registry_snapshot()
    with pytest.raises(RuntimeError, match="boom"), cache_pytrees():
        raise RuntimeError("boom")
    assert _registry_snapshot() == before


def test_round_trip_through_pytree():
    cache = make_dynamic_cache(_pairs())
    with cache_pytrees():
        leaves, spec = pytree.tree_flatten(cache)
        paths = [pytree.keystr(p) for p, _ in pytree.tree_flatten_with_path(cache)[0]]
        rebuilt = pytree.tree_unflatten(leaves, spec)
    assert len(leaves) == 4
    assert paths == [
        "['key_cache'][0]",
        "['key_cache'][1]",
        "['value_cache'][0]",
        "['value_cache'][1]",
    ]
    assert type(rebuilt) is type(cache)
    assert [type(x) for x in rebuilt.layers] == [type(x) for x in cache.layers]
    for a, b in zip(rebuilt.layers, cache.layers, strict=True):
        assert a.keys is b.keys and a.values is b.values
    assert rebuilt.get_seq_length() == cache.get_seq_length()


def test_empty_layer_flattens_to_no_leaf_and_comes_back_empty():
    from transformers.cache_utils import DynamicCache, DynamicLayer

    cache = DynamicCache()
    cache.layers = [DynamicLayer(), make_dynamic_cache(_pairs(1)).layers[0]]
    with cache_pytrees():
        leaves, spec = pytree.tree_flatten(cache)
        paths = [pytree.keystr(p) for p, _ in pytree.tree_flatten_with_path(cache)[0]]
        rebuilt = pytree.tree_unflatten(leaves, spec)
    assert paths == ["['key_cache'][1]", "['value_cache'][1]"]
    assert rebuilt.layers[0].keys is None and not rebuilt.layers[0].is_initialized
    assert rebuilt.layers[1].keys is leaves[0]


class _ReadCache(torch.nn.Module):
    def forward(self, x, cache):
        k = cache.layers[0].keys
        return x + k.sum(dim=2, keepdim=True), k.shape[2]


def test_export_with_cache_then_run_on_other_length():
    cache = make_dynamic_cache(_pairs(1, 2, 5))
    x = torch.randn(2, 1, 1, 4)
    length = torch.export.Dim("length", min=1, max=100)
    ds = {"x": {0: torch.export.Dim.AUTO}, "cache": [[{2: length}], [{2: length}]]}
    with cache_pytrees():
        ep = torch.export.export(_ReadCache(), (x, copy.deepcopy(cache)), dynamic_shapes=ds)
        other = make_dynamic_cache(_pairs(1, 2, 9))
        got = ep.module()(x, other)
    expected = _ReadCache()(x, other)
    torch.testing.assert_close(got[0], expected[0])
    assert got[1] == 9
