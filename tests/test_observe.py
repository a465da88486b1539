"""observe(): recording forward calls, inferring export inputs, checking an export on them."""

import pytest
import torch

from exportcheck import (
    CallCheck,
    InferredInputs,
    ObservedCalls,
    export_patches,
    observe,
    untrained_model,
)

ATOL = 1e-5


@pytest.fixture(scope="module")
def tiny_llm():
    return untrained_model("arnir0/Tiny-LLM").model


def _prompt(model, batch, length=5, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, model.config.vocab_size, (batch, length), generator=generator)


def _generate(model, prompt, mask=None, max_new_tokens=4):
    mask = torch.ones_like(prompt) if mask is None else mask
    return model.generate(
        prompt,
        attention_mask=mask,
        max_new_tokens=max_new_tokens,
        do_sample=False,
        pad_token_id=0,
    )


def _export(model, inferred):
    with export_patches(model), torch.no_grad():
        return torch.export.export(
            model, inferred.args, inferred.kwargs, dynamic_shapes=inferred.dynamic_shapes
        )


def _cache_name(calls):
    names = {k for c in calls for k in c.kwargs if k in ("cache", "past_key_values")}
    assert len(names) == 1, names
    return names.pop()


def _cache_lengths(cache):
    return [layer.keys.shape[2] for layer in cache.layers if layer.keys is not None]


def _assert_all_ok(results, expected_indices):
    assert [r.index for r in results] == list(expected_indices)
    assert all(isinstance(r, CallCheck) for r in results)
    bad = [str(r) for r in results if not r.ok]
    assert not bad, bad
    assert max(r.abs for r in results) <= ATOL


# --- recording ----------------------------------------------------------------------


def test_generate_records_prefill_and_decode_steps(tiny_llm):
    prompt = _prompt(tiny_llm, 1)
    with observe(tiny_llm) as calls:
        generated = _generate(tiny_llm, prompt)
    assert isinstance(calls, ObservedCalls) and len(calls) == 4
    assert generated.shape == (1, 9)
    cache_name = _cache_name(calls)
    prefill, *decode = calls
    assert prefill.kwargs["input_ids"].shape == (1, 5)
    assert _cache_lengths(prefill.kwargs[cache_name]) == []  # empty cache
    assert [c.kwargs["input_ids"].shape for c in decode] == [(1, 1)] * 3
    # Deep copies: generate kept appending to the cache, the records did not move.
    assert [_cache_lengths(c.kwargs[cache_name]) for c in decode] == [[5], [6], [7]]
    assert [c.output.logits.shape[:2] for c in calls] == [(1, 1)] * 4
    assert all(c.error is None for c in calls)
    assert "forward" not in vars(tiny_llm)

    table = calls.summary().splitlines()
    assert len(table) == 5
    assert table[0].split()[:3] == ["call", "input_ids", "position_ids"]
    assert cache_name in table[0].split()
    assert table[1].split()[:2] == ["0", "T7s1x5"]
    assert "T1s1x1x7x96" in table[4]


def test_observing_does_not_change_what_generate_passes(tiny_llm):
    prompt = _prompt(tiny_llm, 2)
    seen = []
    handle = tiny_llm.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(sorted(kwargs)), with_kwargs=True
    )
    try:
        _generate(tiny_llm, prompt, max_new_tokens=2)
    finally:
        handle.remove()
    with observe(tiny_llm) as calls:
        _generate(tiny_llm, prompt, max_new_tokens=2)
    assert [sorted(c.kwargs) for c in calls] == seen


def test_plain_call_and_deep_copies_not_rewritten(tiny_llm):
    prompt = _prompt(tiny_llm, 1, length=4)
    with observe(tiny_llm) as calls:
        first = tiny_llm(input_ids=prompt)
        cache_name = "cache" if "cache" in first else "past_key_values"
        live = first[cache_name]
        second = tiny_llm(input_ids=prompt[:, :1], **{cache_name: live})
    assert len(calls) == 2
    # The live cache grew during the second call; the records kept their shapes.
    assert _cache_lengths(second[cache_name]) == [5]
    assert _cache_lengths(calls[0].output[cache_name]) == [4]
    assert _cache_lengths(calls[1].kwargs[cache_name]) == [4]
    assert calls[1].kwargs[cache_name] is not live
    assert _cache_lengths(calls[1].output[cache_name]) == [5]
    live.layers[0].keys.zero_()
    assert calls[1].kwargs[cache_name].layers[0].keys.abs().sum() > 0
    torch.testing.assert_close(calls[0].output.logits, first.logits)


def test_outputs_requiring_grad_are_recorded_detached():
    model = torch.nn.Linear(3, 2)
    with observe(model) as calls:
        out = model(torch.rand(2, 3))
    assert out.requires_grad and not calls[0].output.requires_grad
    torch.testing.assert_close(calls[0].output, out.detach())


def test_forward_restored_after_exception_in_block():
    model = torch.nn.Linear(3, 2)
    with pytest.raises(RuntimeError, match="boom"), observe(model):
        model(torch.rand(1, 3))
        raise RuntimeError("boom")
    assert "forward" not in vars(model)
    assert model.forward.__func__ is torch.nn.Linear.forward


def test_forward_restored_after_exception_in_forward():
    model = torch.nn.Linear(3, 2)
    with pytest.raises(RuntimeError), observe(model) as calls:
        model(torch.rand(1, 5))  # wrong last dimension
    assert len(calls) == 1 and calls[0].error.startswith("RuntimeError")
    assert calls[0].output is None
    assert "forward" not in vars(model)


def test_forward_set_on_the_instance_is_restored():
    model = torch.nn.Linear(3, 2)

    def custom_forward(x):
        return x * 2

    model.forward = custom_forward
    with observe(model) as calls:
        model(torch.ones(1, 3))
    assert vars(model)["forward"] is custom_forward
    torch.testing.assert_close(calls[0].output, torch.full((1, 3), 2.0))


def test_max_calls():
    model = torch.nn.Linear(3, 2)
    with observe(model, max_calls=2, record_outputs=False) as calls:
        for _ in range(5):
            model(torch.rand(1, 3))
    assert len(calls) == 2 and calls.unrecorded == 3 and calls[0].output is None


def test_misuse_raises_clear_errors(tiny_llm):
    with pytest.raises(TypeError, match=r"torch\.nn\.Module, got str"), observe("model"):
        pass
    with pytest.raises(ValueError, match="max_calls"), observe(tiny_llm, max_calls=-1):
        pass
    model = torch.nn.Linear(3, 2)
    with observe(model) as calls:
        model(torch.rand(2, 3))
    with pytest.raises(ValueError, match="at least 2 are needed"):
        calls.infer()
    with observe(model) as calls:
        model(torch.rand(2, 3))
        model(torch.rand(4, 3))
    with pytest.raises(ValueError, match=r"one of \[0, 1\], got 5"):
        calls.infer(call=5)
    with pytest.raises(ValueError, match="call infer"):
        calls.check(torch.export.export(model, (torch.rand(2, 3),)))
    calls.infer()
    with pytest.raises(TypeError, match="ExportedProgram"):
        calls.check(model)
    with pytest.raises(ValueError, match=r"indices of observed calls \(0 to 1\), got \[2\]"):
        calls.check(torch.export.export(model, (torch.rand(2, 3),)), calls=[2])


# --- inference ----------------------------------------------------------------------


class StarArgs(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(4, 3)

    def forward(self, *args):
        x, mask = args
        return self.linear(x) * mask.unsqueeze(-1)


def test_forward_taking_star_args():
    torch.manual_seed(0)
    model = StarArgs()
    # Without recorded outputs, check() runs eager again.
    with observe(model, record_outputs=False) as calls:
        for batch, length in [(2, 5), (3, 7), (1, 1)]:
            model(torch.rand(batch, length, 4), torch.rand(batch, length))
    inferred = calls.infer()
    assert isinstance(inferred, InferredInputs) and inferred.call_index == 0
    assert inferred.kwargs == {} and len(inferred.args) == 2
    x_spec, mask_spec = inferred.dynamic_shapes["args"]
    assert set(inferred.dynamic_shapes) == {"args"}
    assert x_spec == mask_spec == {0: inferred.dims["batch"], 1: inferred.dims["args_0_dim1"]}
    assert inferred.dim_sizes["args_0_dim1"] == {0: 5, 1: 7, 2: 1}
    assert any("args_0_dim1" in note for note in inferred.notes)
    ep = torch.export.export(model, inferred.args, dynamic_shapes=inferred.dynamic_shapes)
    _assert_all_ok(calls.check(ep), [1, 2])


def test_batch_varying_across_two_generate_runs(tiny_llm):
    with observe(tiny_llm) as calls:
        _generate(tiny_llm, _prompt(tiny_llm, 1), max_new_tokens=3)
        _generate(tiny_llm, _prompt(tiny_llm, 2, seed=1), max_new_tokens=3)
    assert len(calls) == 6
    inferred = calls.infer()
    # A decode step of the batch-2 run: only seq_length needs growing.
    assert inferred.call_index == 4
    assert inferred.dim_sizes["batch"] == {0: 1, 1: 1, 2: 1, 3: 2, 4: 2, 5: 2}
    assert any(n.startswith("batch varies across calls (1, 2)") for n in inferred.notes)
    assert not any("batch was" in n for n in inferred.notes)
    assert inferred.absent == {_cache_name(calls): [0, 3]}
    ep = _export(tiny_llm, inferred)
    results = calls.check(ep)
    assert [r.status for r in results] == ["skipped", "ok", "ok", "skipped", "ok"]
    assert "empty" in results[0].reason
    _assert_all_ok([r for r in results if r.status != "skipped"], [1, 2, 5])


def test_single_batch_is_assumed_dynamic_with_a_note(tiny_llm):
    with observe(tiny_llm) as calls:
        _generate(tiny_llm, _prompt(tiny_llm, 1), max_new_tokens=2)
    inferred = calls.infer()
    assert inferred.call_index == 1
    assert inferred.dynamic_shapes["input_ids"] == {
        0: inferred.dims["batch"],
        1: inferred.dims["seq_length"],
    }
    assert (
        "batch was 1 in every call: dimension 0 of input_ids, position_ids and the cache is "
        "assumed dynamic as the batch; run generate with a batch of 2 to confirm."
    ) in inferred.notes
    # Export inputs grown to 2 along batch and seq_length, the cache kept its length.
    assert inferred.kwargs["input_ids"].shape == (2, 2)
    cache = inferred.kwargs[_cache_name(calls)]
    assert _cache_lengths(cache) == [5] and cache.layers[0].keys.shape[0] == 2
    assert any("repeat the last slice" in n for n in inferred.notes)
    # The observed call itself is untouched.
    assert calls[1].kwargs["input_ids"].shape == (1, 1)


def test_attention_mask_with_padding_is_dynamic(tiny_llm):
    prompt = _prompt(tiny_llm, 2)
    mask = torch.ones_like(prompt)
    mask[0, :2] = 0  # left padding: generate passes the mask at every step
    with observe(tiny_llm) as calls:
        _generate(tiny_llm, prompt, mask=mask, max_new_tokens=3)
    assert [c.kwargs["attention_mask"].shape[1] for c in calls] == [5, 6, 7]
    inferred = calls.infer()
    assert inferred.dynamic_shapes["attention_mask"] == {
        0: inferred.dims["batch"],
        1: torch.export.Dim.DYNAMIC,
    }
    assert any("seq_length + cache_length" in n for n in inferred.notes)
    # Grown with seq_length: the mask still covers cache and new tokens.
    assert inferred.kwargs["attention_mask"].shape == (2, 5 + 2)
    ep = _export(tiny_llm, inferred)
    results = calls.check(ep, calls=[1, 2])
    _assert_all_ok(results, [1, 2])


def test_pipeline_loop_with_inputs_present_in_some_calls(tiny_llm):
    prompt = _prompt(tiny_llm, 1, length=6)
    with observe(tiny_llm) as calls:
        out = tiny_llm(input_ids=prompt, attention_mask=torch.ones_like(prompt))
        cache_name = "cache" if "cache" in out else "past_key_values"
        for _ in range(3):
            next_token = out.logits[:, -1:].argmax(-1)
            out = tiny_llm(input_ids=next_token, **{cache_name: out[cache_name]})
    inferred = calls.infer()
    assert inferred.call_index == 1
    assert inferred.absent == {"attention_mask": [1, 2, 3], cache_name: [0]}
    assert cache_name in inferred.kwargs and "attention_mask" not in inferred.kwargs
    assert any(
        n.startswith(f"{cache_name} is absent in some calls (not passed in call 0)")
        for n in inferred.notes
    )
    assert any(n.startswith("attention_mask is absent") for n in inferred.notes)
    ep = _export(tiny_llm, inferred)
    results = calls.check(ep, calls=range(4))
    assert results[0].status == "skipped"
    assert "attention_mask" in results[0].reason or cache_name in results[0].reason
    _assert_all_ok(results[1:], [1, 2, 3])


def test_deprecated_cache_name_through_kwargs(tiny_llm):
    import inspect

    if "cache" not in inspect.signature(tiny_llm.forward).parameters:
        pytest.skip("this transformers names the cache past_key_values")
    prompt = _prompt(tiny_llm, 2, length=3)
    with pytest.warns(FutureWarning), observe(tiny_llm) as calls:
        out = tiny_llm(input_ids=prompt)
        for _ in range(2):
            out = tiny_llm(input_ids=prompt[:, :1], past_key_values=out.cache)
    inferred = calls.infer()
    assert "cache" in inferred.kwargs and "past_key_values" not in inferred.kwargs
    assert "kwargs" not in inferred.dynamic_shapes
    assert any("past_key_values was passed through **kwargs" in n for n in inferred.notes)
    ep = _export(tiny_llm, inferred)
    _assert_all_ok(calls.check(ep, calls=[2]), [2])


# --- the sweep: observe generate, infer, export, check -------------------------------


@pytest.mark.parametrize(
    ("source", "batch"),
    [
        ("arnir0/Tiny-LLM", 1),
        ("qwen3", 2),
        ("gemma3_text", 1),
        ("phi3", 2),
        ("qwen3_moe", 1),
    ],
)
def test_observe_infer_export_check(source, batch):
    model = untrained_model(source).model
    with observe(model) as calls:
        _generate(model, _prompt(model, batch), max_new_tokens=4)
    assert len(calls) == 4
    inferred = calls.infer()
    assert inferred.call_index == 1
    cache_name = _cache_name(calls)
    assert inferred.absent == {cache_name: [0]}
    assert inferred.dim_sizes["cache_length"] == {1: 5, 2: 6, 3: 7}
    assert inferred.dynamic_shapes["input_ids"][1] is inferred.dims["seq_length"]
    ep = _export(model, inferred)
    results = calls.check(ep)
    assert [r.index for r in results] == [0, 2, 3]
    assert results[0].status == "skipped" and "empty" in results[0].reason
    _assert_all_ok(results[1:], [2, 3])
    # Recomputing eager gives the same verdict as the outputs recorded during generate.
    _assert_all_ok(calls.check(ep, calls=[3], recompute=True), [3])
