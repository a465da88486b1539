"""image-classification: pixel values of dynamic batch (and resolution, where the model runs
at another one) in, class logits out, one graph; checked on sets of distinct shapes."""

import pytest
import torch

from exportcheck import depth, untrained_model, validate
from exportcheck.dims import BATCH_MAX
from exportcheck.families import TASK_KNOWN_FAILURES
from exportcheck.tasks import get_task
from exportcheck.tasks.image_classification import (
    PixelClassifier,
    check_pixel_values,
    image_layout,
)

pytestmark = pytest.mark.models

TASK = "image-classification"


def test_the_task_covers_the_image_classification_mapping():
    task = get_task(TASK)
    assert task.columns == ("distinct_shapes",)
    assert {"vit", "convnext", "resnet", "swin", "siglip"} <= set(task.model_types())
    assert "image" in task.status_intro


def test_vit_validates_on_both_runtimes_at_resolutions_the_export_did_not_see():
    m = untrained_model("vit", task=TASK)
    assert type(m.model).__name__ == "ViTForImageClassification" and m.cache_argument is None
    assert set(m.inputs) == {"pixel_values"} and m.inputs["pixel_values"].dtype == torch.float32
    # the tiny config's 224 is shrunk to 64; the position table is interpolated
    assert m.config.image_size == 64
    assert any("interpolate_pos_encoding=True" in note for note in m.notes)
    dims = m.dynamic_shapes["pixel_values"]
    assert dims[0].__name__ == "batch" and set(dims) == {0, 2, 3}
    report = validate(m, exporter="onnx")
    assert report.ok, report.table()
    row = report.to_dict()
    assert row["verdicts"] == {"exported_program": True, "onnx": True}
    assert depth(row) == {"distinct_shapes": True}
    labels = row["model"]["input_sets"]
    assert row["model"]["distinct_shapes"] == len(labels) == 7
    assert labels[0] == "batch=2 96x128"
    assert labels[-1] == f"batch={BATCH_MAX} 192x192 at bounds"
    sizes = [tuple(f["pixel_values"].shape) for f in m.input_sets]
    assert len({s[0] for s in sizes}) == 7, "every set has a batch size of its own"
    unseen = {s[2:] for s in sizes[1:]} - {sizes[0][2:]}
    assert len(unseen) >= 4, "the export is checked at resolutions it did not see"
    runs = [r for r in row["runs"] if r["runtime"] == "onnx"]
    assert len(runs) == 7 and all(r["ok"] for r in runs)
    with torch.no_grad():
        logits = m.components[0].module(**m.input_sets[2]).logits
    assert logits.shape == (sizes[2][0], m.config.num_labels)


def test_a_model_that_rejects_another_resolution_keeps_the_configs_and_says_why():
    m = untrained_model("pvt", task=TASK)  # fixed position embeddings, no interpolation
    assert set(m.dynamic_shapes["pixel_values"]) == {0}
    sizes = [tuple(f["pixel_values"].shape) for f in m.input_sets]
    assert {s[2:] for s in sizes} == {(64, 64)}
    assert len({s[0] for s in sizes}) == len(sizes) == 7
    assert [n for n in m.notes if n.startswith("static resolution 64x64: PvtForImage")]
    assert get_task(TASK).label(m, m.input_sets[-1]) == f"batch={BATCH_MAX} 64x64 at bounds"


@pytest.mark.parametrize(
    ("pixel_values", "message"),
    [
        (
            torch.zeros(3, 64, 64),
            r"ViTForImageClassification takes pixel_values of shape \(batch, 3, height, "
            r"width\), got 3x64x64: add a batch dimension \(x\[None\]\) for a single image",
        ),
        (torch.zeros(2, 1, 3, 64, 64), r"got 2x1x3x64x64: pass one image per row"),
        (torch.zeros(2, 64, 64, 3), r"got 2x64x64x3: channels come first: permute"),
        (torch.zeros(2, 1, 64, 64), r"got 2x1x64x64: the model takes 3 channels; convert"),
    ],
)
def test_pixel_values_of_the_wrong_layout_get_a_sentence_saying_what_is_expected(
    pixel_values, message
):
    m = untrained_model("vit", task=TASK)
    with pytest.raises(ValueError, match=message):
        check_pixel_values(m.model, pixel_values)
    # the exported module checks the same before the model sees the tensor
    with pytest.raises(ValueError, match=message):
        PixelClassifier(m.model, interpolate=True)(pixel_values)
    check_pixel_values(m.model, m.inputs["pixel_values"])  # the task's own inputs pass


def test_channels_and_image_size_are_read_from_a_vision_sub_config():
    m = untrained_model("siglip", task=TASK, **{"vision_config.num_channels": 1})
    layout = image_layout(m.model)
    assert (layout.channels, layout.height, layout.width) == (1, 64, 64)
    assert m.inputs["pixel_values"].shape[1] == 1


def test_a_model_type_without_an_image_classifier_says_which_tasks_it_has():
    with pytest.raises(
        ValueError,
        match=r"'llama' has no image-classification model in transformers "
        r"\(MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES\); it has: .*text-generation",
    ):
        untrained_model("llama", task=TASK)


def test_the_image_classification_ledger_is_short_and_names_its_model_types():
    ledger = TASK_KNOWN_FAILURES.get(TASK, {})
    types = get_task(TASK).model_types()
    assert set(ledger) <= set(types)
    assert len(ledger) <= 0.1 * len(types), sorted(ledger)


@pytest.mark.models
def test_siglip2_needs_its_patch_to_convert_to_onnx(monkeypatch):
    """siglip2_scalar_checks: without it the ONNX conversion fails (aten._is_all_true has
    no ONNX function); with it both runtimes are green."""
    from exportcheck.patches import PATCHES

    with_patch = validate(untrained_model("siglip2", task="image-classification"), exporter="onnx")
    assert with_patch.ok, with_patch.table()
    monkeypatch.delitem(PATCHES, "siglip2_scalar_checks")
    without = validate(untrained_model("siglip2", task="image-classification"), exporter="onnx")
    assert not without.ok and without.failed_stage == "onnx", without.table()
    assert without.verdicts == {"exported_program": True, "onnx": False}
    assert without.verdicts == {"exported_program": True, "onnx": False}


@pytest.mark.models
def test_a_vision_language_classifier_reads_a_prompt_and_needs_its_patch_for_onnx(monkeypatch):
    """ShieldGemma 2 classifies an image against a prompt whose image tokens get the
    image's features: the sets hold prompts around those tokens (one left-padded);
    gemma3_scalar_checks: without it the ONNX conversion fails (aten._is_all_true)."""
    from exportcheck.patches import PATCHES

    m = untrained_model("shieldgemma2", task="image-classification")
    token, count = m.config.image_token_index, m.config.mm_tokens_per_image
    for feeds in m.input_sets:
        assert set(feeds) == {"pixel_values", "input_ids", "attention_mask"}
        assert ((feeds["input_ids"] == token).sum(1) == count).all()
    assert sum(bool((f["attention_mask"] == 0).any()) for f in m.input_sets) == 1
    with_patch = validate(m, exporter="onnx")
    assert with_patch.ok, with_patch.table()
    monkeypatch.delitem(PATCHES, "gemma3_scalar_checks")
    without = validate(
        untrained_model("shieldgemma2", task="image-classification"), exporter="onnx"
    )
    assert not without.ok and without.failed_stage == "onnx", without.table()
    assert without.verdicts == {"exported_program": True, "onnx": False}


def test_a_classifier_whose_activations_vanish_is_rescaled_and_says_so():
    from exportcheck.tasks.image_classification import IMAGES_MATTER, _logit_change

    m = untrained_model("mobilenet_v1", task=TASK)
    note = next(n for n in m.notes if "untrained weights rescaled" in n)
    assert "moved by 3.8e-30" in note  # as initialised by the config, the image did not count
    layout = image_layout(m.model, m.config)
    assert _logit_change(m.model, layout, torch.Generator().manual_seed(1)) >= IMAGES_MATTER
    # a model whose logits depend on the image keeps its initialisation
    assert not any("rescaled" in n for n in untrained_model("resnet", task=TASK).notes)


def test_a_rescaled_residual_stack_gets_its_heads_scaled_down_to_logits_near_one():
    m = untrained_model("swiftformer", task=TASK)
    note = next(n for n in m.notes if "untrained weights rescaled" in n)
    assert "the classifier heads divided by" in note
    with torch.no_grad():
        logits = m.model(**m.inputs).logits
    assert 0.1 < float(logits.abs().max()) < 10


@pytest.mark.parametrize("model_type", ["efficientnet", "pp_lcnet"])
def test_gated_classifiers_get_batch_norm_statistics_measured_on_random_images(model_type):
    from exportcheck.tasks.image_classification import IMAGES_MATTER, _logit_change

    m = untrained_model(model_type, task=TASK)
    note = next(n for n in m.notes if "untrained weights rescaled" in n)
    assert "statistics measured on random images" in note, note
    layout = image_layout(m.model, m.config)
    assert _logit_change(m.model, layout, torch.Generator().manual_seed(1)) >= IMAGES_MATTER
    # the measured statistics are kept, and the model is left in inference mode
    norms = [x for x in m.model.modules() if isinstance(x, torch.nn.BatchNorm2d)]
    assert norms and not any(x.training for x in norms)
    assert any(float((x.running_var - 1).abs().max()) > 0.1 for x in norms)
    # at the largest resolution the checks use, the logits stay near 1: float rounding
    # alone would move logits of 1e3 beyond the tolerance
    with torch.no_grad():
        out = m.model(**m.other_inputs[-1])
    logits = getattr(out, "logits", None)
    assert float((out[0] if logits is None else logits).abs().max()) < 10


def test_a_classifier_whose_logits_ignore_the_image_is_refused():
    from types import SimpleNamespace

    from exportcheck.tasks.image_classification import _make_images_matter

    class Flat(torch.nn.Module):
        config = SimpleNamespace(num_labels=3)

        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 3)
            self.norm = torch.nn.BatchNorm2d(4)
            self.head = torch.nn.Linear(4, 3)

        def forward(self, pixel_values):
            features = self.norm(self.conv(pixel_values)).mean((2, 3))
            return SimpleNamespace(logits=self.head(features * 0))

    layout = SimpleNamespace(channels=3, height=32, width=32, step=1)
    with pytest.raises(ValueError, match=r"untrained logits move by 0 between two images"):
        _make_images_matter(Flat().eval(), layout, torch.Generator().manual_seed(0))
