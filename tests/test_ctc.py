"""automatic-speech-recognition-ctc: raw audio (or log-mel frames) of dynamic length in,
CTC logits out, one graph; checked on padded batches of distinct shapes."""

import copy

import pytest
import torch

from exportcheck import depth, export_patches, untrained_model, validate
from exportcheck.families import TASK_KNOWN_FAILURES
from exportcheck.patches import PATCHES
from exportcheck.tasks import get_task
from exportcheck.tasks.automatic_speech_recognition_ctc import audio_layout, check_audio_inputs

pytestmark = pytest.mark.models

TASK = "automatic-speech-recognition-ctc"


def test_the_task_covers_the_ctc_mapping():
    task = get_task(TASK)
    assert task.columns == ("distinct_shapes", "padded")
    assert {"wav2vec2", "hubert", "parakeet_ctc", "wav2vec2-bert"} <= set(task.model_types())
    # wav2vec2 has no causal LM or masked LM: CTC is its default task
    assert untrained_model("wav2vec2").task == TASK


def test_wav2vec2_validates_on_both_runtimes_with_padded_sets_of_distinct_shapes():
    m = untrained_model("wav2vec2", task=TASK)
    assert type(m.model).__name__ == "Wav2Vec2ForCTC" and m.cache_argument is None
    # group-norm feature encoder: the feature extractor gives no mask, the task neither
    assert set(m.inputs) == {"input_values"}
    assert any("no attention mask" in note for note in m.notes)
    names = {d.__name__ for d in m.dynamic_shapes["input_values"].values()}
    assert names == {"batch", "audio_length"}
    padded = m.input_sets[4]["input_values"]
    assert padded[0, -1] == 0 and padded[0, 0] != 0 and padded[1, -1] != 0
    report = validate(m, exporter="onnx")
    assert report.ok, report.table()
    row = report.to_dict()
    assert row["verdicts"] == {"exported_program": True, "onnx": True}
    assert depth(row) == {"distinct_shapes": True, "padded": True}
    labels = row["model"]["input_sets"]
    assert row["model"]["distinct_shapes"] == len(labels) == 7
    assert labels[0] == "batch=2 audio=4000"
    assert labels[4] == "batch=2 audio=6400 padded"
    assert labels[-1].endswith("at bounds") and labels[-1].startswith("batch=16 ")
    assert len(set(labels)) == len(labels)
    assert [s["stage"] for s in row["stages"]][-1] == "ort_run"
    runs = [r for r in row["runs"] if r["runtime"] == "onnx"]
    assert len(runs) == 7 and all(r["ok"] for r in runs)
    with torch.no_grad():
        logits = m.model(**m.inputs).logits
    # one row of vocabulary logits per output frame: 4000 samples are 12 frames
    assert logits.shape == (2, 12, m.config.vocab_size)


def test_a_layer_norm_wav2vec2_gets_a_mask_that_is_zero_on_the_padding():
    m = untrained_model("wav2vec2", task=TASK, feat_extract_norm="layer", do_stable_layer_norm=True)
    assert set(m.inputs) == {"input_values", "attention_mask"}
    mask, audio = m.input_sets[5]["attention_mask"], m.input_sets[5]["input_values"]
    assert mask[:, -1].tolist() == [0, 0, 1] and int(mask[1].sum()) == 4800 - 1600
    assert bool((audio[1, -1600:] == 0).all()) and bool((audio[1, :-1600] != 0).all())
    assert m.dynamic_shapes["attention_mask"][1] is m.dynamic_shapes["input_values"][1]
    # the mask matters: eager on the padded row differs with and without it
    with torch.no_grad():
        masked = m.model(**m.input_sets[5]).logits
        unmasked = m.model(input_values=audio).logits
    assert (masked[1] - unmasked[1]).abs().max() > 1e-4
    report = validate(m, exporter="export")
    assert report.ok, report.table()


def test_log_mel_models_take_frames_of_their_feature_extractors_width():
    m = untrained_model("parakeet_ctc", task=TASK)
    assert audio_layout(m.model).shape_text == "(batch, frames, 80)"
    assert m.inputs["input_features"].shape == (2, 40, 80)
    assert {d.__name__ for d in m.dynamic_shapes["input_features"].values()} == {
        "batch",
        "frames",
    }
    assert get_task(TASK).label(m, m.input_sets[4]) == "batch=2 frames=64 padded"
    # wav2vec2-bert: two stacked 80-bin frames (SeamlessM4TFeatureExtractor)
    bert = untrained_model("wav2vec2-bert", task=TASK)
    assert bert.inputs["input_features"].shape[-1] == 160


@pytest.mark.parametrize(
    ("model_type", "feeds", "message"),
    [
        (
            "wav2vec2",
            {"input_values": torch.zeros(2, 1, 4000)},
            r"Wav2Vec2ForCTC takes input_values of shape \(batch, audio_length\), got 2x1x4000: "
            r"pass one row of samples per clip",
        ),
        (
            "wav2vec2",
            {"input_values": torch.zeros(4000)},
            r"got 4000: add a batch dimension",
        ),
        (
            "wav2vec2",
            {"input_features": torch.zeros(2, 40, 80)},
            r"takes input_values .* got input_features, which it does not take",
        ),
        (
            "parakeet_ctc",
            {"input_features": torch.zeros(2, 40)},
            r"ParakeetForCTC takes input_features of shape \(batch, frames, 80\), got 2x40: "
            r"pass log-mel frames",
        ),
        (
            "parakeet_ctc",
            {"input_features": torch.zeros(2, 40, 128)},
            r"got 2x40x128: each frame must have 80 values",
        ),
        (
            "omniasr_ctc",
            {"input_values": torch.zeros(2, 4000)},
            r"takes input_values of shape \(batch, 1, audio_length\), got 2x4000: "
            r"add a batch dimension",
        ),
    ],
)
def test_inputs_of_the_wrong_rank_get_a_sentence_saying_what_is_expected(
    model_type, feeds, message
):
    m = untrained_model(model_type, task=TASK)
    with pytest.raises(ValueError, match=message):
        check_audio_inputs(m.model, feeds)
    check_audio_inputs(m.model, m.inputs)  # the task's own inputs pass


def test_a_model_type_without_a_ctc_head_says_which_tasks_it_has():
    with pytest.raises(
        ValueError,
        match=r"'bert' has no automatic-speech-recognition-ctc model in transformers "
        r"\(MODEL_FOR_CTC_MAPPING_NAMES\); it has: .*fill-mask",
    ):
        untrained_model("bert", task=TASK)


def test_the_ctc_ledger_is_empty_and_names_ctc_model_types():
    ledger = TASK_KNOWN_FAILURES.get(TASK, {})
    types = get_task(TASK).model_types()
    assert set(ledger) <= set(types)
    assert not ledger, f"every CTC model type exports: {sorted(ledger)}"


#: the CTC families' patches, with a model type each (and config overrides that take
#: the code path with a mask where the task's inputs have none)
PATCHED = [
    ("sew_parity_free_upsampling", "sew", {}),
    ("sew_parity_free_upsampling", "sew", {"feat_extract_norm": "layer"}),
    ("sew_parity_free_upsampling", "sew-d", {}),
    ("sew_parity_free_upsampling", "sew-d", {"feat_extract_norm": "layer"}),
    ("wavlm_plain_attention", "wavlm", {"feat_extract_norm": "layer"}),
    ("lasr_contiguous_subsampling", "lasr_ctc", {}),
    ("granite_speech5_block_attention", "granite_speech5_ctc", {}),
]


@pytest.mark.parametrize(("name", "model_type", "overrides"), PATCHED)
def test_the_ctc_patches_compute_what_eager_computes(name, model_type, overrides):
    m = untrained_model(model_type, task=TASK, **overrides)
    assert name in PATCHES and model_type in PATCHES[name].model_types
    for feeds in m.input_sets:
        with torch.no_grad():
            expected = m.model(**copy.deepcopy(feeds)).logits
            with export_patches(m.model) as log:
                got = m.model(**copy.deepcopy(feeds)).logits
        assert name in log.changed
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_without_its_patch_lasr_exports_a_program_that_fails_a_batch_of_one():
    """What test_patches_needed cannot show: the named dimensions fail the same way with
    and without the patch; validation relaxes them to Dim.AUTO, and then only the patched
    program runs a batch of one."""
    m = untrained_model("lasr_ctc", task=TASK)
    auto = {
        name: {axis: torch.export.Dim.AUTO(min=d.min, max=d.max) for axis, d in dims.items()}
        for name, dims in m.dynamic_shapes.items()
    }
    single = m.input_sets[1]
    assert single["input_features"].shape[0] == 1
    for exclude in (("lasr_contiguous_subsampling",), ()):
        with export_patches(m.model, exclude=exclude), torch.no_grad():
            program = torch.export.export(
                m.model, (), kwargs=copy.deepcopy(m.inputs), dynamic_shapes=auto
            )
            if exclude:
                with pytest.raises(
                    AssertionError, match=r"Guard failed: input_features.size\(\)\[0\]"
                ):
                    program.module()(**copy.deepcopy(single))
            else:
                got = program.module()(**copy.deepcopy(single)).logits
                expected = m.model(**copy.deepcopy(single)).logits
                torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
