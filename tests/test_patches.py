"""export_patches: every fix applies inside the block and nothing survives it."""

import contextlib
import copy
import os
import sys

import pytest
import torch
import torch.fx._pytree as fx_pytree
import torch.utils._pytree as pytree
from support import needs_experts_implementation
from transformers import AutoConfig, AutoModelForCausalLM

from exportcheck import export_patches, max_diff


@pytest.fixture(scope="module")
def moe_model():
    torch.manual_seed(0)
    config = AutoConfig.for_model(
        "mixtral",
        num_hidden_layers=1,
        hidden_size=32,
        intermediate_size=64,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        vocab_size=100,
        num_local_experts=4,
        num_experts_per_tok=2,
    )
    return AutoModelForCausalLM.from_config(config).eval()


def _state(model):
    return (
        [
            dict(r)
            for r in (
                pytree.SUPPORTED_NODES,
                pytree.SUPPORTED_SERIALIZED_TYPES,
                pytree.SERIALIZED_TYPE_TO_PYTHON_TYPE,
                fx_pytree.SUPPORTED_NODES,
                fx_pytree.SUPPORTED_NODES_EXACT_MATCH,
            )
        ],
        model.config._experts_implementation,
    )


@needs_experts_implementation
def test_patches_apply_inside_and_restore_after(moe_model):
    from transformers import DynamicCache

    before = _state(moe_model)
    assert before[1] == "grouped_mm"
    with export_patches(moe_model):
        assert moe_model.config._experts_implementation == "batched_mm"
        assert DynamicCache in pytree.SUPPORTED_NODES
        with export_patches(moe_model):  # nested
            assert moe_model.config._experts_implementation == "batched_mm"
        assert moe_model.config._experts_implementation == "batched_mm"
    assert _state(moe_model) == before
    with export_patches(moe_model):  # a second time
        pass
    assert _state(moe_model) == before


@needs_experts_implementation
def test_patches_restore_after_an_exception(moe_model):
    before = _state(moe_model)
    with pytest.raises(KeyError, match="inside"), export_patches(moe_model):
        raise KeyError("inside")
    assert _state(moe_model) == before


@needs_experts_implementation
def test_moe_onnx_export_needs_the_patch(moe_model, tmp_path):
    import onnxruntime

    input_ids = torch.randint(0, 100, (2, 3))
    kwargs = dict(use_cache=False)
    with pytest.raises(torch.onnx.OnnxExporterError) as failure:
        torch.onnx.export(moe_model, (input_ids,), tmp_path / "a.onnx", kwargs=kwargs, dynamo=True)
    cause = f"{failure.value}\n{failure.value.__cause__}"
    assert "No ONNX function found" in cause and "grouped_mm" in cause, cause
    with export_patches(moe_model):
        torch.onnx.export(moe_model, (input_ids,), tmp_path / "b.onnx", kwargs=kwargs, dynamo=True)
    assert os.path.exists(tmp_path / "b.onnx")
    session = onnxruntime.InferenceSession(tmp_path / "b.onnx", providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: input_ids.numpy()})
    with torch.no_grad():
        expected = moe_model(input_ids, use_cache=False).logits
    assert max_diff(expected, got[:1])["abs"] <= 1e-4


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        (dict(exclude="cache_pytrees"), TypeError, "exclude must be a tuple of patch names"),
        (dict(exclude=("nope",)), ValueError, "unknown patch names \\['nope'\\]"),
        (dict(model="llama"), TypeError, "model must be a torch.nn.Module"),
    ],
)
def test_bad_arguments(kwargs, error, message):
    with pytest.raises(error, match=message), export_patches(**kwargs):
        pass


@pytest.mark.models
def test_real_rotary_matches_complex_rotary_and_restores():
    import transformers.models.llama4.modeling_llama4 as llama4

    from exportcheck import untrained_model
    from exportcheck.patches import PATCHES

    m = untrained_model("llama4_text")
    before = (llama4.Llama4TextRotaryEmbedding.__dict__["forward"], llama4.apply_rotary_emb)
    with torch.no_grad():
        expected = m.model(**copy.deepcopy(m.inputs)).logits
        with PATCHES["real_rotary"].apply():
            assert llama4.apply_rotary_emb is not before[1]
            got = m.model(**copy.deepcopy(m.inputs)).logits
    assert (llama4.Llama4TextRotaryEmbedding.__dict__["forward"], llama4.apply_rotary_emb) == before
    assert max_diff(expected, got)["abs"] <= 1e-5


@pytest.mark.models
def test_real_rotary_lets_llama4_convert_to_onnx(tmp_path):
    from exportcheck import validate

    report = validate("llama4_text", exporter="onnx")
    assert report.ok, report.table()
    assert report.worst("ort") <= 1e-4


@pytest.mark.models
def test_untrained_models_have_no_all_zero_linear_weights():
    from exportcheck import untrained_model

    m = untrained_model("afmoe")  # its router gate is zero-initialised by transformers
    for name, module in m.model.named_modules():
        if isinstance(module, torch.nn.Linear):
            assert module.weight.any(), name


_PATCHED_MODULES = [
    "transformers.models.llama4.modeling_llama4",
    "transformers.models.deepseek_v2.modeling_deepseek_v2",
    "transformers.models.minimax.modeling_minimax",
    "transformers.models.inkling2.modeling_inkling2",
    "transformers.models.opt.modeling_opt",
    "transformers.models.qwen3_next.modeling_qwen3_next",
    "transformers.models.kimi_linear.modeling_kimi_linear",
    "transformers.models.dbrx.modeling_dbrx",
    "transformers.models.longcat_flash.modeling_longcat_flash",
    "transformers.models.gemma3n.modeling_gemma3n",
    "transformers.models.cpmant.modeling_cpmant",
    "transformers.models.recurrent_gemma.modeling_recurrent_gemma",
    "transformers.models.xlstm.modeling_xlstm",
    "transformers.models.qwen4_exp.modeling_qwen4_exp",
    "transformers.models.xlnet.modeling_xlnet",
    "transformers.models.prophetnet.modeling_prophetnet",
    "transformers.models.reformer.modeling_reformer",
    "transformers.models.rwkv.modeling_rwkv",
    "transformers.models.deepseek_v4.modeling_deepseek_v4",
    "transformers.models.blt.modeling_blt",
    "transformers.models.longformer.modeling_longformer",
    "transformers.models.led.modeling_led",
    "transformers.models.longt5.modeling_longt5",
    "transformers.models.pegasus_x.modeling_pegasus_x",
]


def _module_state(module):
    """The attributes of a module and of the classes it defines."""
    import inspect

    state = {module.__name__: dict(vars(module))}
    for cls_name, cls in inspect.getmembers(module, inspect.isclass):
        if cls.__module__ == module.__name__:
            # copy.deepcopy caches __slotnames__ on a class the first time it copies one
            attributes = {k: v for k, v in vars(cls).items() if k != "__slotnames__"}
            state[f"{module.__name__}.{cls_name}"] = attributes
    return state


def _snapshot_modules():
    import importlib

    state = {}
    for name in _PATCHED_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:  # a model type this transformers lacks
            if not name.startswith(f"{e.name}."):
                raise
            continue
        state.update(_module_state(module))
    return state


def test_every_patch_restores_transformers_after_an_exception():
    before = _snapshot_modules()
    with pytest.raises(ZeroDivisionError), export_patches():
        after_entering = _snapshot_modules()
        1 / 0  # noqa: B018
    assert after_entering != before  # the patches did change something inside
    assert _snapshot_modules() == before


@pytest.mark.models
@pytest.mark.parametrize(
    ("model_type", "exporter"),
    [
        ("minimax", "export"),
        ("qwen3_next", "export"),
        ("kimi_linear", "export"),
        ("dbrx", "export"),
        ("opt", "export"),
        ("inkling2_text", "export"),
        ("recurrent_gemma", "export"),
        ("xlstm", "export"),
        ("qwen4_exp_text", "export"),
        ("reformer", "export"),
        ("deepseek_v4", "export"),
        # these two patches also fix the ONNX conversion
        ("xlnet", "onnx"),
        ("prophetnet", "onnx"),
        ("blt", "onnx"),
    ],
)
def test_patched_families_export_and_match_eager(model_type, exporter):
    from exportcheck import validate

    report = validate(model_type, exporter=exporter)
    # The export and every runtime pass, generation included. Eager itself may be
    # inconsistent (blt, prophetnet: tests/test_green_means.py and the status page report
    # it), and then its step-by-step loop cannot equal its own generate either, which
    # makes the verdict red without saying anything about the patches.
    failed = [s["stage"] for s in report.stages if not s["ok"]]
    assert failed in ([], ["eager_consistent"], ["eager_consistent", "eager_generate"]), (
        report.table()
    )
    assert report.runs and all(r["ok"] for r in report.runs), report.table()
    bounds = [n for n in report.notes if n.startswith(("export suggested", "named dimensions"))]
    assert not bounds, bounds  # no bound had to be narrowed or relaxed


# Patch -> (model type, max abs diff of the logits allowed between the patched and the
# original eager code: 0 where the rewrite only moves values, float rounding where it
# reorders sums).
_REWRITES = {
    "recurrent_gemma_scan": ("recurrent_gemma", 1e-5),
    "xlstm_closed_form": ("xlstm", 1e-5),
    "qwen4_exp_indexer": ("qwen4_exp_text", 0.0),
    "xlnet_rel_shift_gather": ("xlnet", 0.0),
    "xlnet_float_mask": ("xlnet", 0.0),
    "prophetnet_decode_step": ("prophetnet", 0.0),
    "reformer_axial_gather": ("reformer", 0.0),
    "reformer_step_mask": ("reformer", 0.0),
    "deepseek_v4_compressor_windows": ("deepseek_v4", 0.0),
    "blt_padded_patches": ("blt", 0.0),
    # encoder-decoders: the whole model on the encoder's input sets (see _whole_model_sets)
    "longt5_local_blocks": ("longt5", 0.0),
    "pegasus_x_block_padding": ("pegasus_x", 0.0),
}


def _whole_model_sets(m):
    """The input sets the whole model runs on: its own, or for an encoder-decoder built as
    components (encoder, first decoder step, ...), each encoder input set with the first
    decoder step's tokens, so that the logits go through the encoder."""
    if not m.components:
        return [m.inputs, *m.other_inputs]
    encoder, first_step = m.components[0], m.components[1]
    return [
        {**feeds, "decoder_input_ids": step["decoder_input_ids"]}
        for feeds, step in zip(encoder.input_sets, first_step.input_sets, strict=True)
    ]


@pytest.mark.models
@pytest.mark.parametrize("name", sorted(_REWRITES))
def test_rewrites_compute_what_the_original_computes(name):
    from exportcheck import untrained_model
    from exportcheck.patches import PATCHES, eager_fixes

    model_type, tolerance = _REWRITES[name]
    m = untrained_model(model_type)
    module = sys.modules[type(m.model).__module__]
    before = _module_state(module)
    for inputs in _whole_model_sets(m):
        # eager as validate runs it: with the patches that correct it
        with torch.no_grad(), eager_fixes(m.model):
            expected = m.model(**copy.deepcopy(inputs)).logits
            with PATCHES[name].apply(m.model):
                assert _module_state(module) != before, f"{name} changed nothing"
                got = m.model(**copy.deepcopy(inputs)).logits
        assert max_diff(expected, got)["abs"] <= tolerance, name
    assert _module_state(module) == before


def test_a_nested_replacement_still_reaches_the_original(monkeypatch):
    import types

    from exportcheck.patches import Patch

    class Base:
        def f(self):
            return "original"

    class Child(Base):
        pass

    module = types.ModuleType("exportcheck_toy_module")
    module.Base, module.Child = Base, Child
    monkeypatch.setitem(sys.modules, module.__name__, module)

    def f(self):
        return "patched+" + f.original(self)

    for owner in ("Base", "Child"):
        patch = Patch(
            name=f"toy_{owner}",
            fixes="a toy error",
            remove_when="never",
            install=lambda patcher, model, owner=owner: patcher.replace_in(
                module.__name__, owner, "f", f
            ),
        )
        with patch.apply() as outer:
            with patch.apply() as inner:
                assert Child().f() == "patched+original"
            assert inner.replaced == [] and not inner.changed  # nested: nothing replaced
            assert Child().f() == "patched+original"
        assert outer.calls == 2 and outer.changed
        assert Child().f() == Base().f() == "original"
    assert "f" not in vars(Child)  # an inherited attribute is removed again, not copied
    missing = Patch(
        name="toy_missing",
        fixes="a toy error",
        remove_when="never",
        install=lambda patcher, model: patcher.replace_in(
            "exportcheck_not_imported", "Base", "f", f
        ),
    )
    with missing.apply() as record:  # model not in use: no-op
        assert Base().f() == "original" and not record.changed


def test_a_patch_says_what_it_fixes_and_for_which_runtime():
    from exportcheck.patches import Patch

    with pytest.raises(ValueError, match="say what it fixes and when to remove it"):
        Patch(name="x", fixes="", remove_when="", install=lambda p, m: None)
    with pytest.raises(ValueError, match="runtimes must be a non-empty subset"):
        Patch(name="x", fixes="e", remove_when="r", install=lambda p, m: None, runtimes=("tvm",))
    with pytest.raises(ValueError, match="runtime must be one of"), export_patches(runtime="tvm"):
        pass


class _WindowsOfFour(torch.nn.Module):
    """Guards (2 + s) % 4 == 1 and 2 <= s <= 5: torch's suggestion is a derived
    dimension s = 4 * _s - 1 whose root _s has one value."""

    def forward(self, x):
        n = x.shape[0] + 2
        if n % 4 == 1:
            x = x * 2
        if 4 <= n < 8:
            x = x + 1
        return x


def test_a_one_value_root_reports_the_constraint_violation():
    from torch._dynamo.exc import UserError

    from exportcheck.dims import refine_dynamic_shapes

    ds = ({0: torch.export.Dim("s", min=1, max=64)},)
    args = (torch.randn(3, 2),)
    with pytest.raises(AssertionError, match="Cannot create Dim with inconsistent min=1, max=1"):
        torch.export.export(_WindowsOfFour(), args, dynamic_shapes=ds)
    with pytest.raises(UserError, match="Constraints violated") as failure, export_patches():
        torch.export.export(_WindowsOfFour(), args, dynamic_shapes=ds)
    assert "% 4) == 1" in str(failure.value)
    # One value left is a specialization: no narrower bounds to retry with.
    assert refine_dynamic_shapes(ds, failure.value) is None


def test_every_patch_is_on_the_generated_patch_page(tmp_path):
    import importlib.util

    from exportcheck.patches import PATCHES

    spec = importlib.util.spec_from_file_location(
        "gallery_hooks", os.path.join(os.path.dirname(__file__), "..", "docs", "gallery_hooks.py")
    )
    hooks = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hooks)
    hooks.write_patch_page(tmp_path)
    page = (tmp_path / "patches.rst").read_text()
    for name, patch in PATCHES.items():
        assert f"``{name}``" in page and patch.remove_when in page, name
    assert len(PATCHES) >= 23


@pytest.mark.models
def test_rwkv_fix_matches_batch_one_runs_and_the_full_forward():
    from exportcheck import untrained_model
    from exportcheck.patches import PATCHES, eager_fixes

    m = untrained_model("rwkv")
    g = torch.Generator().manual_seed(1)
    vocab = m.config.vocab_size

    def run(ids, state=None, patched=True, use_cache=True):
        ctx = PATCHES["rwkv_one_token_shift"].apply() if patched else contextlib.nullcontext()
        with ctx, torch.no_grad():
            out = m.model(input_ids=ids, state=copy.deepcopy(state), use_cache=use_cache)
        return out.logits, out.state

    # one new token, batch 3: each row equals the unpatched transformers on that row
    # alone (batch 1, where the original is right), state included
    _, state = run(torch.randint(0, vocab, (3, 7), generator=g), patched=False)
    token = torch.randint(0, vocab, (3, 1), generator=g)
    logits, new_state = run(token, state)
    assert run(token, state, patched=False)[0].shape == (3, 3, vocab)  # the bug
    for i in range(3):
        one, one_state = run(token[i : i + 1], [s[i : i + 1] for s in state], patched=False)
        assert max_diff(one, logits[i : i + 1])["abs"] <= 1e-5
        assert max_diff(one_state, [s[i : i + 1] for s in new_state])["abs"] <= 1e-5
    # a prefill then six one-token steps give the logits of one forward over all tokens
    ids = torch.randint(0, vocab, (3, 10), generator=g)
    full, _ = run(ids, use_cache=False, patched=False)
    steps, state = [], None
    logits, state = run(ids[:, :4], patched=False)
    steps.append(logits)
    for k in range(4, 10):
        logits, state = run(ids[:, k : k + 1], state)
        steps.append(logits)
    assert max_diff(torch.cat(steps, dim=1), full)["abs"] <= 1e-5
    with eager_fixes(m.model) as names:
        assert names == ["rwkv_one_token_shift"]


@pytest.mark.models
def test_recurrent_gemma_state_changes_nothing_generate_sees_and_steps_equal_the_forward():
    from exportcheck import untrained_model
    from exportcheck.patches import PATCHES, eager_fixes

    m = untrained_model("recurrent_gemma")
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(3, m.config.vocab_size, (2, 10), generator=g)
    mask = torch.ones_like(ids)
    mask[0, :2] = 0  # a left-padded row, as generate pads a batch

    def generate(patched):
        ctx = (
            PATCHES["recurrent_gemma_state"].apply(m.model) if patched else contextlib.nullcontext()
        )
        with ctx, torch.no_grad():
            return m.model.generate(
                input_ids=ids[:, :6],
                attention_mask=mask[:, :6],
                max_new_tokens=4,
                do_sample=False,
                output_logits=True,
                return_dict_in_generate=True,
            )

    # generate (prefill, then one token per step) gives the same tokens and logits
    before, after = generate(False), generate(True)
    assert torch.equal(before.sequences, after.sequences)
    assert max_diff(list(before.logits), list(after.logits))["abs"] <= 1e-5
    # with it, the state comes out of a prefill and a step of several new tokens
    # continues it: prefill 4 + 3 tokens + 3 one-token steps equal one forward over all
    with PATCHES["recurrent_gemma_state"].apply(m.model), torch.no_grad():
        full = m.model(input_ids=ids, use_cache=False).logits
        out = m.model(input_ids=ids[:, :4], use_cache=True)
        steps, cache = [out.logits], out.cache
        for start, stop in ((4, 7), (7, 8), (8, 9), (9, 10)):
            out = m.model(input_ids=ids[:, start:stop], cache=cache, use_cache=True)
            steps.append(out.logits)
            cache = out.cache
    assert cache is not None
    assert max_diff(torch.cat(steps, dim=1), full)["abs"] <= 1e-5
    with eager_fixes(m.model) as names:
        assert names == ["recurrent_gemma_state"]


@pytest.mark.models
def test_git_mask_fix_keeps_an_image_prefill_and_unpadded_steps_unchanged():
    from exportcheck import untrained_model
    from exportcheck.patches import PATCHES

    m = untrained_model("git")
    vision = m.config.vision_config
    g = torch.Generator().manual_seed(3)
    pixels = torch.randn(2, 3, vision.image_size, vision.image_size, generator=g)
    ids = torch.randint(3, m.config.vocab_size, (2, 7), generator=g)

    def steps(patched):
        ctx = PATCHES["git_cached_mask"].apply(m.model) if patched else contextlib.nullcontext()
        with ctx, torch.no_grad():
            # an image prefill (its mask covers the text only), then a cached text step
            out = m.model(input_ids=ids[:, :4], pixel_values=pixels, use_cache=True)
            step = m.model(
                input_ids=ids[:, 4:],
                attention_mask=torch.ones_like(ids),
                cache=out.cache,
                use_cache=True,
            )
            # a text-only prompt without padding, then a step
            plain = m.model(input_ids=ids[:, :4], use_cache=True)
            after = m.model(
                input_ids=ids[:, 4:], attention_mask=torch.ones_like(ids), cache=plain.cache
            )
        return [out.logits, step.logits, plain.logits, after.logits]

    assert max_diff(steps(False), steps(True))["abs"] == 0.0


@pytest.mark.models
def test_deepseek_v4_windows_match_the_original_over_many_decode_steps():
    from exportcheck import untrained_model
    from exportcheck.patches import PATCHES

    m = untrained_model("deepseek_v4")
    ids = torch.randint(0, 1000, (2, 150), generator=torch.Generator().manual_seed(1))
    steps = [1, 1, 2, 3, 1, 4, 5, 7, 1, 2, 9, 15, 1, 1, 3, 30, 40, 1, 2, 6, 5]

    def decode(patched):
        ctx = (
            PATCHES["deepseek_v4_compressor_windows"].apply()
            if patched
            else contextlib.nullcontext()
        )
        with ctx, torch.no_grad():
            out = m.model(input_ids=ids[:, :5], use_cache=True)
            logits, position = [out.logits], 5
            for step in steps:  # closes 4-token windows and the 128-token one
                out = m.model(input_ids=ids[:, position : position + step], cache=out.cache)
                logits.append(out.logits)
                position += step
        return logits, out.cache

    expected, expected_cache = decode(patched=False)
    got, got_cache = decode(patched=True)
    assert max_diff(expected, got)["abs"] == 0.0
    assert max_diff(expected_cache, got_cache)["abs"] == 0.0


@pytest.mark.models
def test_blt_exports_when_entropy_makes_fewer_patches_than_bytes():
    from exportcheck import untrained_model, validate

    m = untrained_model("blt")
    patcher = m.model.model.patcher
    with torch.no_grad():
        entropies, _, _ = patcher(m.inputs["input_ids"])
    # a threshold inside the untrained patcher's entropies: some bytes start no patch
    m.model.config.patching_threshold = float(entropies.median())
    counts = []
    for feeds in [m.inputs, *m.other_inputs]:
        with torch.no_grad():
            _, lengths, _ = patcher(
                feeds["input_ids"],
                patch_size=m.config.patch_size,
                threshold=m.model.config.patching_threshold,
            )
        counts.append((lengths.shape[1], feeds["input_ids"].shape[1] + 1))
    assert any(patches < possible for patches, possible in counts), counts
    report = validate(m, exporter="onnx")  # eager without the patch, export with it
    failed = [s["stage"] for s in report.stages if not s["ok"]]
    # blt's eager: see above
    assert failed in ([], ["eager_consistent"], ["eager_consistent", "eager_generate"]), (
        report.table()
    )
    assert report.runs and all(r["ok"] for r in report.runs), report.table()


# --- nesting: every patch, on a tiny model that runs through it ----------------------
#
# The models are built here from the families' tables and the generic shrinking rules,
# without untrained_model: a prefill, then a decode step with the cache it returned.

#: patches that no eager forward runs through, and why they are not in the nesting test
_NOT_RUN_IN_EAGER = {
    "torch_single_value_root": "replaces a method torch.export calls only while it writes the "
    "suggested fixes of a constraint violation; test_a_one_value_root_reports_the_"
    "constraint_violation runs it",
    "cache_pytrees": "a registration, not a function: nothing counts calls; "
    "test_patches_apply_inside_and_restore_after nests it",
    "mbart_shift_squeeze": "only the masked LM shifts tokens, not the causal LM built here; "
    "tests/test_encoder_families.py nests it on the masked LM",
    "size_oblivious_bounds": "sets torch's backed_size_oblivious while a GLM-4V model is "
    "exported, a setting only export reads; tests/test_patches_needed.py exports glm4v's "
    "vision encoder without it",
    "prophetnet_float_masks": "only the encoder-decoder reads the encoder's mask, not the "
    "causal LM built here; tests/test_patches_needed.py runs it on text2text-generation's "
    "encoder",
}
#: generic patches (no model types of their own) -> a model type that runs through them
_GENERIC_MODEL_TYPES = {
    "gated_delta_ceil_chunks": "qwen3_next",
    "kda_ceil_chunks": "kimi_linear",
    "moe_batched_mm": "mixtral",
    # the vision embeddings of Idefics 2 and 3 (no causal LM: not nested here)
    "torch_bucketize_as_count": "idefics2",
}
#: model types preferred for a patch over its first one (a text-only model builds faster)
_PREFERRED = {"real_rotary": "llama4_text", "qwen4_exp_indexer": "qwen4_exp_text"}
#: patches of a model type's other task than its first: nested on that task's model
_OTHER_TASK = {"llama4_image_outputs": "image-text-to-text"}


def _tiny_config_function():
    try:
        from exportcheck.models.tiny import tiny_config
    except ImportError:  # the layout before models/ became a package
        from exportcheck.tiny import tiny_config
    return tiny_config


def _tiny_model(model_type):
    from exportcheck.families import CONFIG_ARGUMENTS

    tiny_config = _tiny_config_function()
    arguments = copy.deepcopy(CONFIG_ARGUMENTS.get(model_type, ({}, ""))[0])
    config = tiny_config(AutoConfig.for_model(model_type, **arguments))
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config).to(torch.float32).eval()


def _has_attention(cache):
    if isinstance(cache, list | tuple):
        return False  # recurrent states (rwkv)
    layers = getattr(cache, "layers", None)
    if layers is None:
        return True
    return any(isinstance(getattr(layer, "keys", None), torch.Tensor) for layer in layers)


def _forward(model, use_cache=True):
    """The logits of a prefill of 5 tokens then of a decode step (3 new tokens, 1 where
    the family says so); of one forward of 8 tokens without a cache (also when the
    family or the model takes none)."""
    import inspect

    from exportcheck.families import NO_CACHE, ONE_TOKEN_DECODE

    model_type = model.config.model_type
    params = inspect.signature(model.forward).parameters
    vocab = model.config.get_text_config().vocab_size
    g = torch.Generator().manual_seed(0)
    batch, prompt, new = 2, 5, 1 if model_type in ONE_TOKEN_DECODE else 3
    names = ("cache", "past_key_values", "state", "past_buckets_states")
    cache_name = next((n for n in names if n in params), None)
    with torch.no_grad():
        if not use_cache or cache_name is None or model_type in NO_CACHE:
            feeds = {"input_ids": torch.randint(0, vocab, (batch, prompt + 3), generator=g)}
            if "use_cache" in params:
                feeds["use_cache"] = False
            return [model(**feeds).logits]
        ids = torch.randint(0, vocab, (batch, prompt), generator=g)
        feeds = {"input_ids": ids}
        if "use_cache" in params:
            feeds["use_cache"] = True
        if "attention_mask" in params:
            feeds["attention_mask"] = torch.ones((batch, prompt), dtype=torch.int64)
        out = model(**feeds)
        names = (cache_name, "cache", "past_key_values")
        cache = next((c for c in (getattr(out, n, None) for n in names) if c is not None), None)
        if cache is None:  # the state stays inside the model (recurrent_gemma)
            return _forward(model, use_cache=False)
        feeds = {"input_ids": torch.randint(0, vocab, (batch, new), generator=g), cache_name: cache}
        if "attention_mask" in params:
            width = prompt + new if _has_attention(cache) else new
            feeds["attention_mask"] = torch.ones((batch, width), dtype=torch.int64)
        return [out.logits, model(**feeds).logits]


def _has_causal_lm(model_type):
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    return model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES


def _nesting_cases():
    from exportcheck.families import KNOWN_FAILURES
    from exportcheck.patches import PATCHES

    cases = []
    for name, patch in PATCHES.items():
        if name in _NOT_RUN_IN_EAGER:
            continue
        buildable = [t for t in patch.model_types if t not in KNOWN_FAILURES]
        model_type = _PREFERRED.get(name) or _GENERIC_MODEL_TYPES.get(name) or buildable[0]
        if not _has_causal_lm(model_type) or name in _OTHER_TASK:
            continue  # test_nested_patches_of_other_tasks_run_once
        cases.append(pytest.param(name, model_type, True, id=f"{name}-{model_type}"))
    cases.append(pytest.param("minimax_lightning_decode", "minimax", False, id="minimax-no-cache"))
    return cases


def test_every_patch_is_nested_or_exempted():
    from exportcheck.patches import PATCHES

    for name, patch in PATCHES.items():
        assert patch.model_types or name in _GENERIC_MODEL_TYPES or name in _NOT_RUN_IN_EAGER, (
            f"{name}: give it model types, a model type in _GENERIC_MODEL_TYPES or a reason"
        )


@pytest.mark.models
@pytest.mark.parametrize(("name", "model_type", "use_cache"), _nesting_cases())
def test_nested_export_patches_run_each_patch_once(name, model_type, use_cache):
    # MiniMax without a cache is the old bug: nesting saved the patched method as the
    # "original", and the branch without a cache called itself until RecursionError.
    model = _tiny_model(model_type)
    with export_patches(model) as single:
        expected = _forward(model, use_cache)
    with export_patches(model) as outer, export_patches(model) as inner:
        got = _forward(model, use_cache)
    assert max_diff(expected, got)["abs"] <= 1e-5
    record = next(r for r in outer if r.name == name)
    if name == "moe_batched_mm":  # a config value, not a function: nothing to call
        assert record.values > 0, record
    elif not use_cache:  # MiniMax without a cache falls back to the original: no change
        assert record.calls == 0 and not record.changed, record
    else:
        assert record.calls > 0, f"{model_type} does not run through {name}: {record}"
    assert record.replaced == next(r for r in single if r.name == name).replaced
    nested = next(r for r in inner if r.name == name)
    assert nested.replaced == [] and nested.calls == 0 and nested.values == 0, nested


def _other_task_cases():
    from exportcheck.families import KNOWN_FAILURES
    from exportcheck.patches import PATCHES

    cases = []
    for name, patch in PATCHES.items():
        buildable = [t for t in patch.model_types if t not in KNOWN_FAILURES]
        if name in _OTHER_TASK:
            cases.append(
                pytest.param(name, buildable[0], _OTHER_TASK[name], id=f"{name}-{buildable[0]}")
            )
            continue
        if name in _NOT_RUN_IN_EAGER or not buildable or _has_causal_lm(buildable[0]):
            continue
        cases.append(pytest.param(name, buildable[0], None, id=f"{name}-{buildable[0]}"))
    return cases


@pytest.mark.models
@pytest.mark.parametrize(("name", "model_type", "task"), _other_task_cases())
def test_nested_patches_of_other_tasks_run_once(name, model_type, task):
    """The patches of model types without a causal LM (speech, vision), nested on the
    model of their default task, or of the task they are for: the same outputs, and the
    inner context replaces nothing."""
    from exportcheck import untrained_model

    m = untrained_model(model_type, task=task) if task else untrained_model(model_type)
    component = m.components[0] if m.components else None
    module = component.module if component else m.model
    feeds = component.input_sets[0] if component else m.inputs
    with export_patches(module) as single, torch.no_grad():
        expected = module(**copy.deepcopy(feeds))
    with export_patches(module) as outer, export_patches(module) as inner, torch.no_grad():
        got = module(**copy.deepcopy(feeds))
    assert max_diff(expected, got)["abs"] <= 1e-5
    record = next(r for r in outer if r.name == name)
    assert record.replaced == next(r for r in single if r.name == name).replaced
    assert record.replaced, f"{name} replaced nothing on {model_type}"
    nested = next(r for r in inner if r.name == name)
    assert nested.replaced == [] and nested.calls == 0 and nested.values == 0, nested


def _patched_state(model):
    """Everything a patch can replace: the patched modules and their classes, the pytree
    registries and the model's configs (experts implementation)."""
    configs = {id(m.config): m.config for m in model.modules() if hasattr(m, "config")}
    return (
        _snapshot_modules(),
        _state(model)[0],
        {k: dict(vars(c)) for k, c in configs.items()},
    )


@needs_experts_implementation
def test_nested_blocks_restore_every_attribute_after_an_exception(moe_model):
    before = _patched_state(moe_model)
    with pytest.raises(ZeroDivisionError):  # noqa: SIM117 (the blocks are what is tested)
        with export_patches(moe_model) as outer:
            inside = _patched_state(moe_model)
            with export_patches(moe_model), export_patches():
                1 / 0  # noqa: B018
    assert inside != before and outer.changed  # the patches did change something inside
    after = _patched_state(moe_model)
    changed = [k for k in before[0] if before[0][k] != after[0].get(k)]
    assert not changed, changed
    assert set(after[0]) == set(before[0])
    for name, attributes in before[0].items():  # the very objects, not equal copies
        for attribute, value in attributes.items():
            assert after[0][name][attribute] is value, f"{name}.{attribute}"
    assert after[1:] == before[1:]


@pytest.mark.models
def test_the_log_names_the_patches_that_changed_a_model():
    from exportcheck.patches import PATCH_FAMILY

    llama = _tiny_model("llama")
    with export_patches(llama) as log:
        _forward(llama)
    # a plain model needs no family patch; only generic ones may change something
    assert log.changed == ["cache_pytrees"]
    assert all(PATCH_FAMILY[n] == "generic" for n in log.changed)
    minimax = _tiny_model("minimax")
    with export_patches(minimax) as log:
        _forward(minimax)
    assert "minimax_lightning_decode" in log.changed
    assert not {"opt_position_ids", "rwkv_one_token_shift"} & set(log.changed)
