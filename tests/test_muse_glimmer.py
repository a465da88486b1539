"""Muse Glimmer (image-text-to-text): the post-attention and post-feedforward norms add
an epsilon of 1e-8, which onnxscript's ``x + 0 -> x`` rule removes from the ONNX graph.

The rule compares constants with 0 by ``math.isclose(c, 0, abs_tol=1e-8)``. Without the
epsilon, onnxruntime's decoder step ran 1.05e-4 (left-padded set) and 2.3e-4 (set at
the bounds) from eager; the patch ``muse_norm_eps_tensor`` adds it as a one-element tensor.
"""

import copy

import numpy as np
import pytest
import torch

from exportcheck.patches import PATCHES

NAME = "muse_norm_eps_tensor"


def _norms():
    from transformers.models.muse_glimmer import modeling_muse_glimmer as glimmer
    from transformers.models.muse_spark import modeling_muse_spark as spark

    return [
        glimmer.MuseGlimmerTextCenteredRMSNorm(64, eps=1e-8),
        glimmer.MuseGlimmerRMSNorm(eps=1e-8, with_scale=False),
        spark.MuseSparkTextCenteredRMSNorm(64, eps=1e-8),
        spark.MuseSparkTextInputScaledRMSNorm(64, eps=1e-8),
        spark.MuseSparkRMSNorm(64, eps=1e-8),
    ]


def _small_rows():
    # rows with a mean square near 3e-4, as the tiny decoder's attention output
    return 0.02 * torch.randn((2, 5, 64), generator=torch.Generator().manual_seed(0))


def test_the_patch_is_registered_for_both_muse_models():
    import exportcheck.families  # noqa: F401  (registers the families)

    patch = PATCHES[NAME]
    assert patch.runtimes == ("onnx",)
    assert set(patch.model_types) == {"muse_spark", "muse_glimmer"}


@pytest.mark.parametrize("index", range(5))
def test_the_patched_norm_is_eager_bit_for_bit(index):
    norm = _norms()[index]
    x = _small_rows()
    with torch.no_grad():
        expected = norm(x)
        with PATCHES[NAME].apply() as record:
            got = norm(x)
    assert record.calls > 0, record
    assert torch.equal(expected, got)


def test_a_larger_epsilon_runs_the_original():
    from transformers.models.muse_glimmer import modeling_muse_glimmer as glimmer

    norm = glimmer.MuseGlimmerTextCenteredRMSNorm(64, eps=1e-5)
    with torch.no_grad(), PATCHES[NAME].apply() as record:
        norm(_small_rows())
    assert record.calls == 0 and not record.changed, record


def _onnx_diff(norm, x, patched, path):
    import onnxruntime

    program_kwargs = {"dynamo": True, "optimize": True}
    with torch.no_grad():
        expected = norm(x).numpy()
        if patched:
            with PATCHES[NAME].apply():
                torch.onnx.export(norm, (x,), str(path), **program_kwargs)
        else:
            torch.onnx.export(norm, (x,), str(path), **program_kwargs)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    return float(np.abs(got.astype(np.float64) - expected).max())


def test_without_the_patch_the_onnx_graph_drops_the_epsilon(tmp_path):
    from transformers.models.muse_glimmer import modeling_muse_glimmer as glimmer

    norm = glimmer.MuseGlimmerTextCenteredRMSNorm(64, eps=1e-8).eval()
    x = _small_rows()
    without = _onnx_diff(norm, copy.deepcopy(x), False, tmp_path / "without.onnx")
    with_patch = _onnx_diff(norm, copy.deepcopy(x), True, tmp_path / "with.onnx")
    # without the epsilon, the scale is off by eps / (2 * mean(x ** 2)), about 1.6e-5
    # relative at a mean square of 3e-4: 4.9e-5 on outputs up to ~3 (4.8e-7 with it)
    assert without > 1e-5, without
    assert with_patch < 1e-6, with_patch


@pytest.mark.models
def test_muse_glimmer_decoder_matches_eager_in_onnxruntime():
    from exportcheck import validate

    report = validate("muse_glimmer", task="image-text-to-text", exporter="onnx")
    assert report.runs and all(r["ok"] for r in report.runs), report.table()
    decoder = [r for r in report.runs if r["component"] == "decoder" and r["runner"] == "ort"]
    # 1.3e-6 to 4.5e-6 with the patch (5e-5 to 2.3e-4 without)
    assert decoder and max(r["abs"] for r in decoder) < 2e-5, report.table()
