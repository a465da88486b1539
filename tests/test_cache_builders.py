"""Builders for the caches other than plain DynamicCache: each rebuilds what a model returns."""

import copy

import pytest
import torch
from support import needs_cache_classes

from exportcheck import (
    cache_dynamic_shapes,
    cache_pytrees,
    make_dynamic_cache,
    make_minimax_cache,
    max_diff,
    string_type,
    untrained_model,
)


def _next_step_matches(m, rebuilt):
    """The model gives the same next step with the cache it returned and the rebuilt one."""
    original = m.inputs[m.cache_argument]
    assert string_type(rebuilt, with_shape=True) == string_type(original, with_shape=True)
    with torch.no_grad():
        expected = m.model(**copy.deepcopy(m.inputs))
        got = m.model(**{**copy.deepcopy(m.inputs), m.cache_argument: rebuilt})
    assert max_diff(expected, got)["abs"] == 0.0


@pytest.mark.models
def test_indexed_layers_rebuild_a_sparse_attention_cache():
    m = untrained_model("deepseek_v32")
    layers = m.inputs[m.cache_argument].layers
    rebuilt = make_dynamic_cache(
        [(layer.keys.clone(), layer.values.clone()) for layer in layers],
        indexer_keys=[layer.indexer_keys.clone() for layer in layers],
    )
    assert {type(layer).__name__ for layer in rebuilt.layers} == {"DynamicIndexedLayer"}
    _next_step_matches(m, rebuilt)


@pytest.mark.models
@pytest.mark.parametrize(
    "layer_types",
    [
        ["full_attention", "linear_attention"],
        ["linear_attention", "full_attention", "linear_attention"],
    ],
)
def test_minimax_cache_rebuilds_what_the_model_returns(layer_types):
    m = untrained_model("minimax", layer_types=layer_types, num_hidden_layers=len(layer_types))
    cache = m.inputs[m.cache_argument]
    states = [
        (cache.layers[i].keys.clone(), cache.layers[i].values.clone())
        if kind == "full_attention"
        else cache.linear_cache[i].clone()
        for i, kind in enumerate(layer_types)
    ]
    _next_step_matches(m, make_minimax_cache(states, layer_types))


class _ReadCache(torch.nn.Module):
    def forward(self, x, cache):
        layer = cache.layers[0]
        extra = (
            layer.indexer_keys.sum(dim=1, keepdim=True)
            if hasattr(layer, "indexer_keys")
            else cache.linear_cache[1].sum()
        )
        return (x @ layer.keys.transpose(2, 3)).sum() + extra.sum(), cache.get_seq_length()


def _kv(batch, length):
    return torch.randn(batch, 1, length, 4), torch.randn(batch, 1, length, 4)


def _indexed(batch, length):
    return make_dynamic_cache([_kv(batch, length)], indexer_keys=[torch.randn(batch, length, 8)])


def _minimax(batch, length):
    states = [_kv(batch, length), torch.randn(batch, 2, 4, 4)]
    return make_minimax_cache(states, ["full_attention", "linear_attention"])


@pytest.mark.parametrize(
    "build",
    [
        pytest.param(_indexed, marks=needs_cache_classes("DynamicIndexedLayer"), id="indexed"),
        pytest.param(_minimax, marks=pytest.mark.models, id="minimax"),
    ],
)
def test_cache_exports_and_runs_on_another_batch_and_length(build):
    batch, length = torch.export.Dim("batch"), torch.export.Dim("length", min=1, max=100)
    cache = build(2, 5)
    ds = ({0: batch}, cache_dynamic_shapes(cache, batch, length))
    with cache_pytrees():
        ep = torch.export.export(
            _ReadCache(), (torch.randn(2, 1, 1, 4), copy.deepcopy(cache)), dynamic_shapes=ds
        )
        x, other = torch.randn(3, 1, 1, 4), build(3, 9)
        got = ep.module()(x, other)
    expected = _ReadCache()(x, other)
    torch.testing.assert_close(got[0], expected[0])
    assert got[1] == 9


@needs_cache_classes("MtpCache")
def test_cache_class_builds_a_subclass_that_keeps_its_behaviour():
    from transformers.cache_utils import MtpCache

    cache = make_dynamic_cache([_kv(2, 5), _kv(2, 5)], cache_class=MtpCache)
    assert type(cache) is MtpCache
    assert string_type(cache, with_shape=True) == (
        "MtpCache(key_cache=#2[T1s2x1x5x4,T1s2x1x5x4], value_cache=#2[T1s2x1x5x4,T1s2x1x5x4])"
    )
    # MTP depth k reads k + 1 tokens ahead of the main model.
    assert [cache.get_query_offset(i) for i in range(2)] == [6, 7]
    with cache_pytrees():
        leaves, spec = torch.utils._pytree.tree_flatten(cache)
        rebuilt = torch.utils._pytree.tree_unflatten(leaves, spec)
    assert type(rebuilt) is MtpCache and rebuilt.get_query_offset(1) == 7


@pytest.mark.skipif(
    hasattr(__import__("transformers.cache_utils").cache_utils, "LinearAttentionLayer"),
    reason="this transformers has LinearAttentionLayer: linear layers are built",
)
def test_linear_layers_without_the_layer_class_say_what_is_missing():
    with pytest.raises(
        NotImplementedError, match=r"layers need transformers\.cache_utils\.LinearAttentionLayer"
    ):
        make_dynamic_cache(
            [(torch.zeros(1, 8, 3), None), _kv(1, 2)],
            layer_types=["linear_attention", "full_attention"],
        )


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        (dict(cache_class=dict), TypeError, "cache_class must be DynamicCache or a subclass"),
        (dict(indexer_keys=torch.zeros(2, 5, 8)), TypeError, "indexer_keys must be a list"),
        (dict(indexer_keys=[]), ValueError, "indexer_keys has 0 entries but there are 1 layers"),
        (
            dict(indexer_keys=[torch.zeros(2, 5)]),
            ValueError,
            "the indexer keys of layer 0 must be a tensor \\(batch, cache_length, index_head_dim\\), got shape 2x5",
        ),
        (
            dict(indexer_keys=[torch.zeros(2, 4, 8)]),
            ValueError,
            "must have the batch and cache length of its keys \\(2x1x5x4\\)",
        ),
    ],
)
def test_make_dynamic_cache_bad_options(kwargs, error, message):
    with pytest.raises(error, match=message):
        make_dynamic_cache([_kv(2, 5)], **kwargs)


@pytest.mark.parametrize(
    ("states", "layer_types", "error", "message"),
    [
        (torch.zeros(1), ["full_attention"], TypeError, "expected a list with one entry per layer"),
        ([_kv(1, 2)], "full_attention", TypeError, "layer_types must be a list"),
        (
            [_kv(1, 2)],
            ["full_attention"] * 2,
            ValueError,
            "layer_types has 2 entries but there are 1",
        ),
        ([_kv(1, 2)], ["sliding_attention"], ValueError, "layer 0 has type 'sliding_attention'"),
        (
            [_kv(1, 2)],
            ["linear_attention"],
            ValueError,
            "linear_attention layer 0 needs its state, a tensor \\(batch, heads, head_dim, head_dim\\), got tuple",
        ),
        (
            [(torch.zeros(1, 1, 2, 4), torch.zeros(1, 1, 3, 4))],
            ["full_attention"],
            ValueError,
            "key and value of layer 0 differ in shape",
        ),
    ],
)
def test_make_minimax_cache_bad_inputs(states, layer_types, error, message):
    with pytest.raises(error, match=message):
        make_minimax_cache(states, layer_types)
