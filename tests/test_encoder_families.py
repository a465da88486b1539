"""Family fixes of the encoder tasks (fill-mask, feature-extraction): the model types they
make green validate on both runtimes, each task ledger entry still fails with its error,
and the mbart patch is still needed."""

import copy
import re

import pytest
import torch

from exportcheck import export_patches, untrained_model, validate
from exportcheck.dims import refine_dynamic_shapes
from exportcheck.families import TASK_CONFIG_FIXES, TASK_KNOWN_FAILURES
from exportcheck.patches import PATCHES
from exportcheck.tasks import TASKS, get_task

pytestmark = pytest.mark.models

#: (model type, task) made green by a config argument, a config fix, a task config fix or
#: a patch of its family
FIXED = [
    ("esm", "fill-mask"),  # config_arguments: vocabulary
    ("mobilebert", "fill-mask"),  # config_fixes: embedding and bottleneck widths
    ("squeezebert", "fill-mask"),  # config_fixes: embedding width
    ("squeezebert", "feature-extraction"),
    ("reformer", "fill-mask"),  # task_config_fixes: both ways, chunk lengths
    ("reformer", "feature-extraction"),
    ("t5gemma", "feature-extraction"),  # task_config_fixes: encoder-only config
    ("mbart", "fill-mask"),  # patch mbart_shift_squeeze
]


def _error(row):
    stage = next(s for s in row["stages"] if not s["ok"])
    return stage["stage"], f"{stage.get('error_type')}: {stage.get('error')}"


@pytest.mark.parametrize(("model_type", "task"), FIXED)
def test_the_fixed_encoders_validate_on_both_runtimes(model_type, task):
    report = validate(untrained_model(model_type, task=task), exporter="onnx")
    assert report.ok, report.table()
    row = report.to_dict()
    assert row["verdicts"] == {"exported_program": True, "onnx": True}
    assert row["model"]["distinct_shapes"] == 7
    assert [s["stage"] for s in row["stages"]][-1] == "ort_run"


@pytest.mark.parametrize(
    ("task", "model_type"),
    sorted((task, t) for task, entries in TASK_KNOWN_FAILURES.items() for t in entries),
)
def test_task_known_failures_still_fail_with_their_error(task, model_type):
    expected, _ = TASK_KNOWN_FAILURES[task][model_type]
    # from the model type, so that a failure to build is the report's first error too
    report = validate(model_type, task=task, exporter="onnx")
    assert not report.ok, f"{model_type} ({task}) passes: remove its task_known_failures entry"
    stage, error = _error(report.to_dict())
    assert re.search(expected, error), f"{model_type} ({task}) fails at {stage} with {error}"


def test_task_tables_name_registered_tasks_and_their_model_types_with_reasons():
    for table in (TASK_CONFIG_FIXES, TASK_KNOWN_FAILURES):
        for task, entries in table.items():
            assert task in TASKS, task
            types = get_task(task).model_types()
            for model_type, (value, reason) in entries.items():
                assert model_type in types, f"{model_type} has no {task} model"
                assert value and len(reason) > 20, f"{model_type} ({task}): say why"
    # tests/test_ledger.py: the entries are the failing rows of the committed sweeps


def test_task_config_fixes_stay_in_their_task():
    # reformer's causal LM keeps is_decoder=True and its text-generation chunk lengths
    causal = untrained_model("reformer")
    assert causal.task == "text-generation"
    assert causal.config.is_decoder is True
    assert causal.config.lsh_attn_chunk_length == 512
    assert not any("config:" in note for note in causal.notes)
    masked = untrained_model("reformer", task="fill-mask")
    assert masked.config.is_decoder is False
    assert masked.config.lsh_attn_chunk_length == masked.config.local_attn_chunk_length == 1024
    assert any(note.startswith("fill-mask config: ") for note in masked.notes), masked.notes
    # the fix is set on a copy: the config given to the task is left as it was
    config = copy.deepcopy(causal.config)
    get_task("feature-extraction").build(config)
    assert config.is_decoder is True and config.lsh_attn_chunk_length == 512


# --- mbart_shift_squeeze ------------------------------------------------------------


def _onnx_session(m, path, exclude=()):
    """The ONNX model of ``m`` (patches but ``exclude``) in an onnxruntime session."""
    import onnxruntime

    shapes = m.dynamic_shapes
    with export_patches(m.model, exclude=exclude, runtime="onnx"), torch.no_grad():
        for _ in range(3):  # narrower bounds as validate() takes them (seq_length >= 3)
            try:
                program = torch.export.export(
                    m.model, (), kwargs=copy.deepcopy(m.inputs), dynamic_shapes=shapes
                )
                break
            except Exception as e:
                refined = refine_dynamic_shapes(shapes, e)
                if refined is None:
                    raise
                shapes = refined[0]
        torch.onnx.export(program, (), str(path), kwargs=copy.deepcopy(m.inputs), dynamo=True)
    return onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def test_without_the_mbart_patch_onnxruntime_fails_on_a_batch_of_one(tmp_path):
    m = untrained_model("mbart", task="fill-mask")
    one = next(f for f in m.other_inputs if f["input_ids"].shape[0] == 1)
    feeds = {k: v.numpy() for k, v in one.items()}
    session = _onnx_session(m, tmp_path / "unpatched.onnx", exclude=("mbart_shift_squeeze",))
    with pytest.raises(Exception) as failure:
        session.run(None, feeds)
    fragments = [f.strip() for f in PATCHES["mbart_shift_squeeze"].fixes.split("...")]
    assert all(f in str(failure.value) for f in fragments), str(failure.value)
    # batches of several rows pass without it: only the batch of one loses an axis
    session.run(None, {k: v.numpy() for k, v in m.inputs.items()})


def test_the_mbart_patch_runs_once_when_nested_and_changes_no_number():
    m = untrained_model("mbart", task="fill-mask")
    with torch.no_grad():
        expected = [m.model(**copy.deepcopy(f)).logits for f in m.input_sets]
        with export_patches(m.model) as outer, export_patches(m.model) as inner:
            got = [m.model(**copy.deepcopy(f)).logits for f in m.input_sets]
    for a, b in zip(expected, got, strict=True):
        assert a.shape == b.shape and torch.equal(a, b)
    record = next(r for r in outer if r.name == "mbart_shift_squeeze")
    assert record.calls == len(m.input_sets), record
    nested = next(r for r in inner if r.name == "mbart_shift_squeeze")
    assert nested.replaced == [] and nested.calls == 0, nested
