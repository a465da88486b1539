"""Caches of every layer kind through the pytree registration, export and dynamic shapes."""

import copy

import pytest
import torch
import torch.utils._pytree as pytree
from support import CACHE_FIELD, needs_cache_classes, output_cache
from transformers import AutoConfig, AutoModelForCausalLM

from exportcheck import (
    cache_dynamic_shapes,
    cache_pytrees,
    make_dynamic_cache,
    make_encoder_decoder_cache,
    make_static_cache,
    max_diff,
    string_type,
)

SMALL = dict(
    num_hidden_layers=4,
    hidden_size=64,
    intermediate_size=128,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    vocab_size=1000,
)
HYBRIDS = {
    "gemma3_text": dict(
        sliding_window=16,
        layer_types=["sliding_attention"] * 3 + ["full_attention"],
    ),
    "lfm2": dict(
        layer_types=["conv", "full_attention", "conv", "full_attention"], block_ff_dim=128
    ),
}


def _kv(batch, length, heads=1, dim=4):
    return torch.randn(batch, heads, length, dim), torch.randn(batch, heads, length, dim)


def _round_trip(cache):
    with cache_pytrees():
        leaves, spec = pytree.tree_flatten(cache)
        rebuilt = pytree.tree_unflatten(leaves, spec)
        # The rebuilt cache flattens to the same structure: the spec is stable.
        assert pytree.tree_structure(rebuilt) == spec
    return leaves, rebuilt


# transformers 4.x keeps lfm2's convolution states in a cache class of its modeling
# file (Lfm2HybridConvCache), outside the Cache hierarchy the pytrees cover.
@pytest.fixture(
    scope="module",
    params=[
        "gemma3_text",
        pytest.param("lfm2", marks=needs_cache_classes("LinearAttentionLayer")),
    ],
)
def hybrid(request):
    torch.manual_seed(0)
    config = AutoConfig.for_model(request.param, **SMALL, **HYBRIDS[request.param])
    model = AutoModelForCausalLM.from_config(config).eval()

    def inputs(batch, cache_length, new_tokens):
        with torch.no_grad():
            prefill = model(input_ids=torch.randint(0, 1000, (batch, cache_length)), use_cache=True)
        return dict(
            input_ids=torch.randint(0, 1000, (batch, new_tokens)),
            attention_mask=torch.ones((batch, cache_length + new_tokens), dtype=torch.int64),
            **{CACHE_FIELD: output_cache(prefill)},
        )

    return request.param, model, inputs


def test_hybrid_cache_round_trip_keeps_layer_classes(hybrid):
    _, model, inputs = hybrid
    cache = inputs(2, 5, 1)[CACHE_FIELD]
    _, rebuilt = _round_trip(cache)
    assert [type(x) for x in rebuilt.layers] == [type(x) for x in cache.layers]
    assert rebuilt.get_seq_length() == cache.get_seq_length() == 5
    step = dict(input_ids=torch.randint(0, 1000, (2, 1)), use_cache=True)
    with torch.no_grad():
        expected = model(**step, **{CACHE_FIELD: copy.deepcopy(cache)})
        got = model(**step, **{CACHE_FIELD: rebuilt})
    assert max_diff(expected, got)["abs"] == 0.0


def test_hybrid_export_runs_on_other_shapes(hybrid):
    name, model, inputs = hybrid
    feeds = inputs(2, 5, 3)
    # gemma3's sliding layers (window 16) behave differently once the window is full:
    # 5 cached + 3 new tokens exports the branch "window not full", up to 12 cached.
    batch, length = torch.export.Dim("batch", min=1, max=64), torch.export.Dim("length", max=12)
    dynamic = torch.export.Dim.DYNAMIC
    ds = dict(
        input_ids={0: batch, 1: dynamic},
        attention_mask={0: batch, 1: dynamic},
        **{CACHE_FIELD: cache_dynamic_shapes(feeds[CACHE_FIELD], batch, length)},
    )
    with cache_pytrees(), torch.no_grad():
        ep = torch.export.export(model, (), kwargs=copy.deepcopy(feeds), dynamic_shapes=ds)
        # run_decompositions is what torch.onnx.export does next: it must not meet
        # lifted constants created by the unflatten function.
        ep = ep.run_decompositions()
        for other in (inputs(1, 7, 1), inputs(3, 4, 2)):
            expected = model(**copy.deepcopy(other))
            got = ep.module()(**copy.deepcopy(other))
            assert max_diff(expected, got)["abs"] <= 1e-5, name


@needs_cache_classes("LinearAttentionLayer")
def test_linear_attention_leaves_have_layer_indices():
    conv, recurrent = torch.randn(2, 8, 3), torch.randn(2, 2, 4, 4)
    cache = make_dynamic_cache(
        [(conv, recurrent), _kv(2, 5)], layer_types=["linear_attention", "full_attention"]
    )
    with cache_pytrees():
        paths = [pytree.keystr(p) for p, _ in pytree.tree_flatten_with_path(cache)[0]]
    assert paths == [
        "['key_cache'][1]",
        "['value_cache'][1]",
        "['conv_states'][0][0]",
        "['recurrent_states'][0][0]",
    ]
    batch = torch.export.Dim("batch")
    assert cache_dynamic_shapes(cache, batch, None) == [
        [(), {0: batch, 2: None}],
        [(), {0: batch, 2: None}],
        [[{0: batch}], ()],
        [[{0: batch}], ()],
    ]
    _, rebuilt = _round_trip(cache)
    assert rebuilt.layers[0].conv_states[0] is conv
    assert rebuilt.layers[0].conv_kernel_size[0] == 3
    assert rebuilt.layers[0].has_previous_state[0] is True


def test_sliding_window_cache():
    cache = make_dynamic_cache(
        [_kv(1, 3), _kv(1, 3)],
        layer_types=["sliding_attention", "full_attention"],
        sliding_window=8,
    )
    _, rebuilt = _round_trip(cache)
    assert type(rebuilt.layers[0]).__name__ == "DynamicSlidingWindowLayer"
    assert rebuilt.layers[0].sliding_window == 8
    assert rebuilt.layers[0].cumulative_length == 3
    spec = cache_dynamic_shapes(cache, 0, "ignored" if False else None, torch.export.Dim.AUTO)
    assert spec[0][0] == {0: 0, 2: torch.export.Dim.AUTO}
    assert spec[0][1] == {0: 0, 2: None}


class _Attend(torch.nn.Module):
    """Reads every layer of a cache: enough to check a cache through torch.export."""

    def forward(self, query, cache):
        out = query
        for layer in cache.layers:
            scores = query @ layer.keys.transpose(-1, -2)
            out = out + scores.softmax(-1) @ layer.values
        return out


@pytest.mark.parametrize("kind", ["dynamic", "sliding", "static", "encoder_decoder"])
def test_builders_export_and_run_on_another_length(kind):
    def build(length):
        if kind == "dynamic":
            return make_dynamic_cache([_kv(2, length), _kv(2, length)])
        if kind == "sliding":
            return make_dynamic_cache(
                [_kv(2, length), _kv(2, length)],
                layer_types=["sliding_attention", "full_attention"],
                sliding_window=64,
            )
        if kind == "static":
            return make_static_cache([_kv(2, length)], max_cache_len=32)
        return make_encoder_decoder_cache([_kv(2, length)], [_kv(2, 7)])

    def attend_cache(cache):
        return cache.self_attention_cache if kind == "encoder_decoder" else cache

    class Model(torch.nn.Module):
        def forward(self, query, cache):
            return _Attend()(query, attend_cache(cache))

    cache = build(5)
    length = torch.export.Dim("length", min=2, max=30)
    ds = {"query": None, "cache": cache_dynamic_shapes(cache, None, length)}
    query = torch.randn(2, 1, 1, 4)
    with cache_pytrees():
        ep = torch.export.export(Model(), (query, copy.deepcopy(cache)), dynamic_shapes=ds)
        other = build(9)
        got = ep.module()(query, copy.deepcopy(other))
    torch.testing.assert_close(got, Model()(query, other))


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (
            lambda: make_dynamic_cache([_kv(1, 2)], layer_types="full"),
            TypeError,
            "one entry per layer",
        ),
        (lambda: make_dynamic_cache([_kv(1, 2)], layer_types=[]), ValueError, "has 0 entries"),
        (lambda: make_dynamic_cache([_kv(1, 2)], layer_types=["mamba"]), ValueError, "'mamba'"),
        (
            lambda: make_dynamic_cache([_kv(1, 2)], layer_types=["sliding_attention"]),
            ValueError,
            "need sliding_window, a positive int",
        ),
        (
            lambda: make_dynamic_cache(
                [_kv(1, 9)], layer_types=["sliding_attention"], sliding_window=8
            ),
            ValueError,
            "holds 9 tokens but a window of 8 keeps at most 7",
        ),
        (
            lambda: make_dynamic_cache([(None, None)], layer_types=["linear_attention"]),
            ValueError,
            "needs a conv state, a recurrent state or both",
        ),
        (
            lambda: make_dynamic_cache([(1, None)], layer_types=["linear_attention"]),
            TypeError,
            "the conv state of layer 0 must be a tensor or None",
        ),
        (lambda: make_static_cache([_kv(1, 2)], max_cache_len=0), ValueError, "positive int"),
        (
            lambda: make_static_cache([_kv(1, 20)], max_cache_len=8),
            ValueError,
            "layer 0 holds 20 tokens, more than max_cache_len=8",
        ),
        (
            lambda: make_encoder_decoder_cache("x", []),
            TypeError,
            "self_attention must be a Cache or a list",
        ),
        (
            lambda: cache_dynamic_shapes({"k": torch.zeros(1)}),
            TypeError,
            "expected a transformers cache with layers",
        ),
        (
            lambda: cache_dynamic_shapes(make_dynamic_cache([_kv(1, 2)]), batch="batch"),
            TypeError,
            "batch must be a torch.export.Dim",
        ),
    ],
)
def test_bad_inputs(call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_device_mismatch_is_reported():
    key, value = _kv(1, 2)
    with pytest.raises(ValueError, match="move every tensor to one device"):
        make_dynamic_cache([(key, value), (key.to("meta"), value.to("meta"))])


@pytest.mark.models
def test_compressed_cache_counters_follow_the_tensors():
    from exportcheck import untrained_model

    cache = untrained_model("deepseek_v4").inputs["cache"]
    _, rebuilt = _round_trip(cache)
    for layer, original in zip(rebuilt.layers, cache.layers, strict=True):
        assert type(layer) is type(original)
        assert layer.entry_count == original.entry_count
        assert layer.entry_count == {k: v.shape[1] for k, v in layer.compressed_kv.items()}
    batch, length = torch.export.Dim("batch"), torch.export.Dim("length")
    spec = cache_dynamic_shapes(cache, batch, length)
    # slots: key_cache, value_cache (sliding layers: AUTO), buffer_gate, buffer_kv and
    # compressed_kv (cache_length % rate buffered tokens and cache_length // rate
    # windows: dimensions of their own, left to export), overlap_gate and overlap_kv
    # (one window: only the batch varies). Three layers: heavily compressed, compressed
    # sparse, heavily compressed (the tiny config keeps the hash_moe layer and a moe one)
    assert len(cache.layers) == 3
    a, b = "{0:Dim(batch),1:AUTO}", "{0:Dim(batch)}"
    tokens = f"#3[#1[{a}],#2[{a},{a}],#1[{a}]]"
    overlap = f"#3[(),#2[{b},{b}],()]"
    keys = "#3[{0:Dim(batch),2:AUTO},{0:Dim(batch),2:AUTO},{0:Dim(batch),2:AUTO}]"
    assert string_type(spec) == f"#7[{keys},{keys},{tokens},{tokens},{tokens},{overlap},{overlap}]"


def _reference_cache(prompt, decoded, declared=None):
    """A cache of two reference sliding-window layers (Unlimited-OCR's) after ``prompt``
    tokens, then ``decoded`` more; ``declared``: the prompt's length declared beforehand,
    as generate does (a longer one leaves the prompt unfinished)."""
    from transformers.cache_utils import DynamicCache

    # the layer came with transformers 5 (the compat session runs transformers 4)
    modeling = pytest.importorskip("transformers.models.unlimited_ocr.modeling_unlimited_ocr")
    UnlimitedOcrDynamicReferenceSlidingWindowLayer = (
        modeling.UnlimitedOcrDynamicReferenceSlidingWindowLayer
    )

    import exportcheck.families.unlimited_ocr  # noqa: F401  (registers the prompt's slots)

    cache = DynamicCache()
    cache.layers = [UnlimitedOcrDynamicReferenceSlidingWindowLayer(sliding_window=8) for _ in "ab"]
    for layer in cache.layers:
        if declared is not None:
            layer.set_prefill_length(declared)
        layer.update(*_kv(2, prompt, heads=2))
        if decoded:
            layer.update(*_kv(2, decoded, heads=2))
    cache.layer_class_to_replicate = None
    return cache


def _prompt_counters(layer):
    return (layer.prefill_length, layer.prefill_cumulative_length, layer.cumulative_length)


@pytest.mark.parametrize("decoded", [0, 3])
def test_reference_sliding_window_cache_keeps_the_prompt_apart(decoded):
    cache = _reference_cache(5, decoded)
    assert cache.layers[0].keys.dim() == (4 if decoded else 1)  # empty: the lazy 1-D tensor
    leaves, rebuilt = _round_trip(cache)
    # key_cache, value_cache (the window: 0 or 3 tokens), prefill_keys, prefill_values
    assert [t.shape for t in leaves] == [(2, 2, decoded, 4)] * 4 + [(2, 2, 5, 4)] * 4
    for layer, original in zip(rebuilt.layers, cache.layers, strict=True):
        assert type(layer) is type(original)
        assert _prompt_counters(layer) == _prompt_counters(original) == (5, 5, decoded)
        assert torch.equal(layer.prefill_keys, original.prefill_keys)
        assert layer.sliding_window == 8
        # the next token: the same mask sizes and states as the original layer gives
        step = _kv(2, 1, heads=2)
        assert layer.get_mask_sizes(1) == original.get_mask_sizes(1)
        for a, b in zip(layer.update(*step), copy.deepcopy(original).update(*step), strict=True):
            assert torch.equal(a, b)
    # the prompt on cache_length, the window on a dimension of its own
    batch, length, window = (torch.export.Dim(n) for n in ("batch", "length", "window"))
    spec = cache_dynamic_shapes(cache, batch, length, window)
    assert spec[0] == spec[1] == [{0: batch, 2: window}] * 2
    assert spec[2] == spec[3] == [{0: batch, 2: length}] * 2


def test_reference_sliding_window_caches_of_any_length_share_one_spec():
    with cache_pytrees():
        specs = {pytree.tree_structure(_reference_cache(p, d)) for p, d in [(5, 0), (7, 2), (1, 6)]}
    assert len(specs) == 1


def test_an_unfinished_prompt_keeps_its_declared_length():
    # a prompt declared longer than what the layer holds (a chunked prefill) is not the
    # length of its states: the declared length stays in the spec, the other counters follow
    cache = _reference_cache(4, 0, declared=10)
    assert _prompt_counters(cache.layers[0]) == (10, 4, 0)
    _, rebuilt = _round_trip(cache)
    assert _prompt_counters(rebuilt.layers[0]) == (10, 4, 0)
    with cache_pytrees():
        assert pytree.tree_structure(cache) != pytree.tree_structure(_reference_cache(4, 0))
