"""Encoder-decoders whose encoder attends within blocks (LongT5, PEGASUS-X): the encoder
pads the sequence to whole blocks, and the export stays symbolic in the encoder length
(families/longt5.py, families/pegasus_x.py, families/_blocks.py)."""

import contextlib
import copy

import pytest
import torch

from exportcheck import export_patches, max_diff, untrained_model, validate

pytestmark = pytest.mark.models

TASK = "text2text-generation"
#: model type -> (its patch, a config with blocks of 4 tokens, so that the input sets
#: span several blocks: LongT5's block is local_radius + 1)
BLOCKS = {
    "longt5": ("longt5_local_blocks", {"local_radius": 3}),
    "pegasus_x": ("pegasus_x_block_padding", {"block_size": 4}),
}


def _check(report, patch):
    assert report.ok, report.table()
    assert report.verdicts == {"exported_program": True, "onnx": True}, report.table()
    assert patch in report.patches_applied["exported_program"], report.patches_applied
    bounds = [n for n in report.notes if n.startswith(("export suggested", "named dimensions"))]
    assert not bounds, bounds  # encoder_length kept its declared range


@pytest.mark.parametrize("model_type", sorted(BLOCKS))
def test_block_encoders_validate_on_both_runtimes(model_type):
    # the tiny configs keep the default blocks (LongT5 128 tokens, PEGASUS-X 512): the
    # encoder is traced on 12 tokens, one block, and runs up to 512 tokens
    report = validate(model_type, task=TASK, exporter="onnx")
    _check(report, BLOCKS[model_type][0])
    assert all(report.generation[r]["ok"] for r in ("eager", "exported", "ort"))


@pytest.mark.parametrize("model_type", sorted(BLOCKS))
def test_block_encoders_validate_over_several_blocks(model_type):
    # blocks of 4 tokens: traced on 3 blocks, the input sets run on 2 to 128
    patch, small_blocks = BLOCKS[model_type]
    m = untrained_model(model_type, task=TASK, **small_blocks)
    _check(validate(m, exporter="onnx"), patch)


def _exported_encoder(m):
    encoder = m.components[0]
    with export_patches(encoder.module), torch.no_grad():
        program = torch.export.export(
            encoder.module,
            (),
            kwargs=copy.deepcopy(encoder.input_sets[0]),
            dynamic_shapes=encoder.dynamic_shapes,
        )
    return encoder, program


@pytest.mark.parametrize("model_type", sorted(BLOCKS))
def test_an_encoder_traced_on_several_blocks_runs_on_one(model_type):
    """Exported on 12 tokens (3 blocks of 4), the encoder runs on lengths of one block,
    one block and a token, and a padded batch: equal to eager."""
    m = untrained_model(model_type, task=TASK, **BLOCKS[model_type][1])
    encoder, program = _exported_encoder(m)
    longest = encoder.input_sets[-1]
    for length in (1, 3, 4, 5, 13):
        feeds = {k: v[:2, :length].clone() for k, v in longest.items()}
        if length > 1:
            feeds["attention_mask"][1, -1:] = 0  # the second row padded
        with torch.no_grad():
            expected = encoder.module(**copy.deepcopy(feeds))
            got = program.module()(**copy.deepcopy(feeds))
        assert max_diff(expected, got)["abs"] <= 1e-5, (model_type, length)


@pytest.mark.parametrize(
    ("model_type", "config", "guard"),
    [
        # the default blocks of 128, traced on one
        ("longt5", {}, "2 <= L['input_ids'].size()[1] and L['input_ids'].size()[1] <= 128"),
        # traced on 3 blocks; the staggered layers view count + 1 blocks
        ("pegasus_x", {"block_size": 4}, "5 <= L['input_ids'].size()[1]"),
    ],
)
def test_without_size_oblivious_tracing_the_block_count_is_guarded(
    model_type, config, guard, monkeypatch
):
    """The third part of the patches: without the size-oblivious tracing of the blocked
    code, torch.export guards the block count of the traced input."""
    family = __import__(f"exportcheck.families.{model_type}", fromlist=["size_oblivious"])
    monkeypatch.setattr(family, "size_oblivious", contextlib.nullcontext)
    m = untrained_model(model_type, task=TASK, **config)
    with pytest.raises(Exception, match=r"Constraints violated \(encoder_length\)") as failure:
        _exported_encoder(m)
    assert guard in str(failure.value)
