"""Every patch is still needed: without it, the export (or the ONNX conversion) fails with
the error the patch says it fixes. A patch whose error went away shows up here."""

import copy

import pytest
import torch

from exportcheck import export_patches, untrained_model
from exportcheck.families import KNOWN_FAILURES
from exportcheck.patches import PATCHES


def _error_text(error):
    texts = []
    while error is not None and len(texts) < 10:
        texts.append(f"{type(error).__name__}: {error}")
        error = error.__cause__ or error.__context__
    return "\n".join(texts)


def _fragments(fixes):
    return [f.strip() for f in fixes.split("...") if len(f.strip()) > 3]


# Generic patches name no model type: one model that needs each. moe_batched_mm and
# torch_single_value_root have their own tests in test_patches.py; cache_pytrees is a
# registration every cache input needs (test_caches.py shows the error without it).
_GENERIC = {"gated_delta_ceil_chunks": "qwen3_next", "kda_ceil_chunks": "kimi_linear"}
# Patches for another task than the model type's default, whose error shows when
# onnxruntime runs: the test file named shows it.
_ELSEWHERE = {
    "mbart_shift_squeeze": "tests/test_encoder_families.py",
    # needed only once the audio length is relaxed to Dim.AUTO: shown there
    "lasr_contiguous_subsampling": "tests/test_ctc.py",
    # its error shows in the conversion of the task's component as validate builds it
    "siglip2_scalar_checks": "tests/test_image_classification.py",
    "gemma3_scalar_checks": "tests/test_image_classification.py",
    # text2text-generation's graphs: shown below
    "prophetnet_streams_split": "tests/test_patches_needed.py",
    "prophetnet_float_masks": "tests/test_patches_needed.py",
    # the conversion succeeds, onnxruntime fails: shown below on bucketize alone
    "torch_bucketize_as_count": "tests/test_patches_needed.py",
    # the decoder step (not the first component) refuses a call of one pool
    "glm5_next_pool_count": "tests/test_glm5_next.py",
    # the decoder step (not the first component) loops over the hit experts
    "step3p7_experts_gather": "tests/test_step3p7.py",
    # the conversion succeeds and drops an epsilon: shown there on one norm
    "muse_norm_eps_tensor": "tests/test_muse_glimmer.py",
}


def _cases():
    cases = sorted(_GENERIC.items())
    for name, patch in PATCHES.items():
        types = [t for t in patch.model_types if t not in KNOWN_FAILURES]
        if types and not patch.corrects_eager and name not in _ELSEWHERE:
            cases.append((name, types[0]))
    return cases


def _graph(m):
    """What the task exports first: its first component (the module, the traced inputs,
    the others, the dynamic shapes), or the whole model."""
    if m.components:
        c = m.components[0]
        return c.module, c.input_sets[0], c.input_sets[1:], c.dynamic_shapes
    return m.model, m.inputs, m.other_inputs, m.dynamic_shapes


def _export(m, exclude, runtime):
    module, feeds, _, shapes = _graph(m)
    with export_patches(module, exclude=exclude, runtime=runtime), torch.no_grad():
        return torch.export.export(module, (), kwargs=copy.deepcopy(feeds), dynamic_shapes=shapes)


@pytest.mark.models
@pytest.mark.parametrize(("name", "model_type"), _cases())
def test_without_the_patch_the_error_it_names_comes_back(name, model_type, tmp_path):
    patch = PATCHES[name]
    m = untrained_model(model_type)
    model, inputs, others, _ = _graph(m)
    with pytest.raises(Exception) as failure:
        if "exported_program" in patch.runtimes:
            program = _export(m, (name,), "exported_program")
            # some guards only show when another shape runs
            with export_patches(model, runtime="exported_program"), torch.no_grad():
                module = program.module()
                for feeds in others:
                    module(**copy.deepcopy(feeds))
        else:
            program = _export(m, (name,), "onnx")
            with export_patches(model, exclude=(name,), runtime="onnx"), torch.no_grad():
                torch.onnx.export(
                    program, (), str(tmp_path / "m.onnx"), kwargs=copy.deepcopy(inputs)
                )
    text = _error_text(failure.value)
    missing = [f for f in _fragments(patch.fixes) if f not in text]
    assert not missing, f"{name}: {missing} not in\n{text[:3000]}"


def test_the_eager_fix_is_still_needed():
    # rwkv_one_token_shift corrects eager itself; tests/test_patches.py compares its
    # numbers with batch-1 runs. Without it, eager's logits have the wrong shape.
    m = untrained_model("rwkv")
    with torch.no_grad():
        out = m.model(**copy.deepcopy(m.inputs))
    batch = m.inputs["input_ids"].shape[0]
    assert tuple(out.logits.shape[:2]) == (batch, batch), out.logits.shape


def test_the_recurrent_gemma_state_is_still_needed():
    # recurrent_gemma_state corrects eager given a cache; tests/test_patches.py shows it
    # changes nothing generate sees. Without it, a prefill returns no cache, and a decode
    # step given one computes with the state its modules kept from the last call.
    from exportcheck.patches import eager_fixes

    m = untrained_model("recurrent_gemma")
    ids = m.inputs["input_ids"]
    with torch.no_grad():
        out = m.model(input_ids=ids, use_cache=True)
        assert getattr(out, "cache", None) is None
        without = m.model(**copy.deepcopy(m.inputs)).logits
        with eager_fixes(m.model):
            with_state = m.model(**copy.deepcopy(m.inputs)).logits
    assert float((without - with_state).abs().max()) > 1e-2


def test_the_git_mask_fix_is_still_needed():
    # git_cached_mask corrects eager; tests/test_patches.py shows an image prefill keeps
    # its numbers. Without it, the left-padded decode step differs from the full forward.
    from exportcheck.patches import eager_fixes
    from exportcheck.tasks.text_generation import _check_eager

    m = untrained_model("git")
    without = {c["input_set"]: c["abs"] for c in _check_eager(m, 1e-4)}
    padded = next(i for i, s in enumerate(m.input_sets) if s["attention_mask"][0, 0] == 0)
    assert without[padded] > 1e-3
    with eager_fixes(m.model) as names:
        fixed = _check_eager(m, 1e-4)
    assert names == ["git_cached_mask"]
    assert all(c["ok"] for c in fixed), fixed


def test_the_prophetnet_eager_fixes_are_still_needed_and_keep_unpadded_steps():
    # prophetnet_predict_layout corrects eager's forward over several tokens (the decode
    # step, one token, keeps its numbers); prophetnet_cached_mask masks the padding that
    # the decoder drops on cached steps. Without the first, the unpadded sets differ;
    # with it alone, the left-padded one still does.
    from exportcheck.patches import PATCHES, eager_fixes
    from exportcheck.tasks.text_generation import _check_eager

    m = untrained_model("prophetnet")
    padded = [i for i, s in enumerate(m.input_sets) if s["attention_mask"][0, 0] == 0]
    unpadded = [i for i in range(len(m.input_sets)) if i not in padded]
    without = _check_eager(m, 1e-4)
    assert all(without[i]["abs"] > 1e-4 for i in unpadded), without
    with PATCHES["prophetnet_predict_layout"].apply(m.model):
        layout_only = _check_eager(m, 1e-4)
    assert padded and all(layout_only[i]["abs"] > 1e-3 for i in padded), layout_only
    with torch.no_grad():
        steps = [m.model(**copy.deepcopy(f)).logits for f in m.input_sets]
    with eager_fixes(m.model) as names, torch.no_grad():
        fixed = _check_eager(m, 1e-4)
        same = [m.model(**copy.deepcopy(f)).logits for f in m.input_sets]
    assert names == ["prophetnet_predict_layout", "prophetnet_cached_mask"]
    assert all(c["abs"] <= 1e-6 for c in fixed), fixed
    assert all(torch.equal(steps[i], same[i]) for i in unpadded)


def test_the_reformer_eager_fixes_are_still_needed_and_keep_unpadded_steps():
    # reformer_cached_padding masks the padding LSH attention forgets on cached steps;
    # reformer_cache_buckets stops the cache from growing a buckets entry per layer and
    # step. Without them the left-padded step differs from the full forward and the
    # step's cache has more entries than it was given; unpadded numbers do not change.
    from exportcheck.patches import eager_fixes
    from exportcheck.tasks.text_generation import _check_eager

    m = untrained_model("reformer")
    padded = [i for i, s in enumerate(m.input_sets) if s["attention_mask"][0, 0] == 0]
    unpadded = [i for i in range(len(m.input_sets)) if i not in padded]
    without = _check_eager(m, 1e-4)
    assert padded and all(without[i]["abs"] > 1e-4 for i in padded), without
    with torch.no_grad():
        outs = [m.model(**copy.deepcopy(f)) for f in m.input_sets]
    entries = len(m.inputs["past_buckets_states"].buckets_cache)
    assert len(outs[0].past_buckets_states.buckets_cache) == 2 * entries
    with eager_fixes(m.model) as names, torch.no_grad():
        fixed = _check_eager(m, 1e-4)
        same = [m.model(**copy.deepcopy(f)) for f in m.input_sets]
    assert names == ["reformer_cached_padding", "reformer_cache_buckets"]
    assert all(c["abs"] <= 1e-6 for c in fixed), fixed
    assert len(same[0].past_buckets_states.buckets_cache) == entries
    assert all(torch.equal(outs[i].logits, same[i].logits) for i in unpadded)


@pytest.mark.models
def test_the_nemotron_chunk_rewrites_keep_eager_numbers():
    # nemotron_asr_chunks and nemotron_diarization_one_chunk are covered by the generic
    # test above (their guards come back without them); this shows they change no
    # number: one chunk (every clip the task checks) is bitwise the original, and chunks
    # shrunk to 5 encoder frames, over lengths that are and are not multiples of them,
    # differ by the padding of the shorter contexts only (float32 rounding).
    from exportcheck.patches import PATCHES

    m = untrained_model("nemo_speechlm")
    tower = m.model.model.audio_tower
    config = tower.config.diarization_config
    bins = tower.config.asr_config.num_mel_bins
    generator = torch.Generator().manual_seed(0)

    def outputs(frames, patched):
        features = torch.randn(2, frames, bins, generator=generator)
        mask = torch.ones(2, frames, dtype=torch.long)
        mask[1, frames - 40 :] = 0
        with torch.no_grad():
            expected = tower(features, input_features_mask=mask)
            with (
                PATCHES["nemotron_asr_chunks"].apply(tower) as asr,
                PATCHES["nemotron_diarization_one_chunk"].apply(tower) as diarization,
            ):
                got = tower(features, input_features_mask=mask)
        assert asr.changed and diarization.changed == patched, (asr, diarization)
        return [
            (getattr(expected, k), getattr(got, k))
            for k in ("last_hidden_state", "asr_last_hidden_state", "speaker_logits")
        ]

    for frames in (168, 200):
        assert all(torch.equal(a, b) for a, b in outputs(frames, True))
    config.chunk_length, config.chunk_left_context, config.chunk_right_context = 5, 2, 3
    for frames in (160, 168, 184):  # 20, 21 and 23 encoder frames: 4 or 5 chunks
        pairs = outputs(frames, False)  # the diarization runs the original: several chunks
        assert torch.equal(*pairs[2])
        assert all(float((a - b).abs().max()) <= 1e-5 for a, b in pairs[:2]), pairs


@pytest.mark.models
def test_the_moonshine_encoder_copy_is_still_needed_and_keeps_the_first_call():
    # moonshine_streaming's decoder adds its position embeddings to the caller's encoder
    # states in place; the patch passes it a copy, and the first call's logits stay
    from exportcheck.patches import PATCHES

    m = untrained_model("moonshine_streaming", task="automatic-speech-recognition")
    init = next(c for c in m.components if c.name == "decoder_init")
    feeds = dict(init.input_sets[0])
    before = feeds["encoder_hidden_states"].clone()
    feeds["encoder_hidden_states"] = before.clone()
    with torch.no_grad():
        first = init.module(**feeds)["logits"]
    assert not torch.equal(feeds["encoder_hidden_states"], before)  # shifted in place
    feeds["encoder_hidden_states"] = before.clone()
    with PATCHES["moonshine_encoder_copy"].apply(m.model) as record, torch.no_grad():
        again = init.module(**feeds)["logits"]
        twice = init.module(**feeds)["logits"]
    assert record.changed
    assert torch.equal(feeds["encoder_hidden_states"], before)
    assert torch.equal(first, again) and torch.equal(again, twice)


@pytest.mark.models
@pytest.mark.parametrize(
    ("name", "component", "runtime"),
    [
        ("prophetnet_streams_split", "decoder_init", "exported_program"),
        ("prophetnet_float_masks", "encoder", "onnx"),
    ],
)
def test_the_prophetnet_text2text_patches_are_still_needed(name, component, runtime, tmp_path):
    # the first decoder step (several tokens) and the encoder exist in text2text-generation
    # only; without the patch, their export or conversion fails with the error it names
    m = untrained_model("prophetnet", task="text2text-generation")
    c = next(x for x in m.components if x.name == component)
    feeds = c.input_sets[0]
    patches = export_patches(c.module, exclude=(name,), runtime=runtime)
    with pytest.raises(Exception) as failure, patches, torch.no_grad():
        program = torch.export.export(
            c.module, (), kwargs=copy.deepcopy(feeds), dynamic_shapes=c.dynamic_shapes
        )
        if runtime == "onnx":
            torch.onnx.export(program, (), str(tmp_path / "m.onnx"), kwargs=copy.deepcopy(feeds))
    text = _error_text(failure.value)
    missing = [f for f in _fragments(PATCHES[name].fixes) if f not in text]
    assert not missing, f"{name}: {missing} not in\n{text[:3000]}"


class _Buckets(torch.nn.Module):
    """Idefics 3's fractional patch coordinates bucketed over 7 patches a side."""

    def forward(self, x):
        boundaries = torch.arange(1 / 7, 1.0, 1 / 7)
        return torch.bucketize(x, boundaries, right=True), torch.bucketize(x, boundaries)


def _buckets_in_onnxruntime(exclude, path):
    import onnxruntime

    x = torch.tensor([[0.0, 0.5, 1 / 7, 0.99, 0.2]])
    module = _Buckets()
    with export_patches(module, exclude=exclude, runtime="onnx"), torch.no_grad():
        program = torch.export.export(module, (x,), dynamic_shapes=({1: torch.export.Dim.DYNAMIC},))
        torch.onnx.export(program, (x,), str(path))
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    return got, module(x)


def test_the_bucketize_patch_is_still_needed_and_keeps_the_buckets(tmp_path):
    name = "torch_bucketize_as_count"
    with pytest.raises(Exception) as failure:  # a value beyond the last boundary (0.99)
        _buckets_in_onnxruntime((name,), tmp_path / "plain.onnx")
    text = _error_text(failure.value)
    missing = [f for f in _fragments(PATCHES[name].fixes) if f not in text]
    assert not missing, text
    got, expected = _buckets_in_onnxruntime((), tmp_path / "patched.onnx")
    assert [g.tolist() for g in got] == [e.tolist() for e in expected]
    assert expected[0].tolist() == [[0, 3, 1, 6, 1]] and expected[1].tolist() == [[0, 3, 0, 6, 1]]
