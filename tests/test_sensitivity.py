"""The sensitivity audit: does each graph's main output depend on its primary inputs?"""

import json

import pytest
import torch

from exportcheck import untrained_model
from exportcheck.sensitivity import component_sensitivity, ignored, input_sensitivity, main
from exportcheck.tasks import Component


def test_every_graph_of_an_encoder_decoder_reads_its_inputs_but_cached_states():
    rows = input_sensitivity(untrained_model("t5", task="text2text-generation"))
    by = {(r.component, r.input): r for r in rows}
    assert set(by) == {
        ("encoder", "input_ids"),
        ("decoder_init", "decoder_input_ids"),
        ("decoder_init", "encoder_hidden_states"),
        ("decoder", "decoder_input_ids"),
        ("decoder", "encoder_hidden_states"),
    }
    assert all(by[k].read for k in by if k != ("decoder", "encoder_hidden_states"))
    # the decoder step reads cross-attention from its cache: the states do not move it,
    # and that is not counted as an ignored input
    cached = by[("decoder", "encoder_hidden_states")]
    assert cached.cached and cached.moved == 0.0
    assert ignored(rows) == []


class _IgnoresFeatures(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Embedding(50, 4)

    def forward(self, input_ids, input_features, attention_mask):
        # the features pass through a gate that is closed: the output cannot see them
        return {"logits": self.embed(input_ids) + 0.0 * input_features.sum()}


def test_an_input_the_output_does_not_read_is_reported_and_masks_are_left_alone():
    feeds = {
        "input_ids": torch.tensor([[5, 6, 7]]),
        "input_features": torch.randn(1, 3, 4),
        "attention_mask": torch.ones(1, 3, dtype=torch.int64),
    }
    component = Component("model", _IgnoresFeatures(), [feeds], {}, ["batch=1"])
    rows = component_sensitivity(component, vocab=50)
    assert [r.input for r in rows] == ["input_ids", "input_features"]
    assert [r.input for r in ignored(rows)] == ["input_features"]
    assert rows[0].read and rows[0].output == "logits"


def test_a_replacement_is_never_the_input_it_replaces():
    # the tasks draw their first input set from seed 0: a replacement drawn from the
    # same seed would be that very tensor, and every output would seem to ignore it
    (row,) = input_sensitivity(untrained_model("wav2vec2", task="automatic-speech-recognition-ctc"))
    assert row.input == "input_values" and row.read

    class Reads(torch.nn.Module):
        def forward(self, input_features):
            return {"logits": input_features * 2}

    drawn = torch.randn((1, 3, 4), generator=torch.Generator().manual_seed(0))
    component = Component("model", Reads(), [{"input_features": drawn}], {}, ["batch=1"])
    assert component_sensitivity(component, vocab=0)[0].read
    with pytest.raises(ValueError, match="equals it: pass another seed than 0"):
        component_sensitivity(component, vocab=0, seed=0)


def test_the_command_writes_one_line_per_type_and_refuses_an_empty_results_file(tmp_path):
    results = tmp_path / "results.jsonl"
    results.write_text(
        json.dumps({"source": "bert", "task": "fill-mask", "ok": True})
        + "\n"
        + json.dumps({"source": "albert", "task": "fill-mask", "ok": False})
        + "\n"
    )
    out = tmp_path / "sensitivity.jsonl"
    assert main(["--results", str(results), "--out", str(out)]) == 0
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    # the green rows only
    assert [line["source"] for line in lines] == ["bert"]
    assert lines[0]["ignored"] == []
    assert {m["input"] for m in lines[0]["moved"]} == {"input_ids"}
    from exportcheck.sensitivity import summary

    assert summary(str(out)).startswith(
        "fill-mask: 1 type audited; 0 with an input whose change moves the output by no "
        "more than the checks' tolerance (0.0001); the least read: bert's model input_ids "
        "moves its logits by"
    )
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(SystemExit):
        main(["--results", str(empty), "--out", str(out)])


def test_placeholder_ids_stay_where_they_are_and_no_other_token_becomes_one():
    from exportcheck.sensitivity import _replacement

    ids = torch.tensor([[7, 7, 7, 9, 10, 11, 12, 13] * 4])
    generator = torch.Generator().manual_seed(1)
    other = _replacement("input_ids", ids, 9, generator, frozenset({7}))
    assert torch.equal(other == 7, ids == 7)  # the image tokens, and only they
    assert not torch.equal(other, ids) and int(other.max()) < 9
    # masks and positions are no primary inputs
    assert _replacement("attention_mask", ids, 9, generator) is None
    assert _replacement("position_ids", ids, 9, generator) is None


def test_an_output_that_moves_within_the_tolerance_counts_as_ignored():
    from exportcheck.sensitivity import Moved

    assert not Moved("model", "input_ids", "logits", 1e-4, 1.0).read
    assert Moved("model", "input_ids", "logits", 2e-4, 1e6).read  # absolute, not relative


def test_flattened_patches_keep_their_row_and_column():
    from exportcheck.sensitivity import _replacement

    patches = torch.zeros((1, 4, 6))
    patches[0, :, 0] = torch.tensor([1.0, 1.0, 2.0, 2.0])
    patches[0, :, 1] = torch.tensor([1.0, 2.0, 1.0, 2.0])
    other = _replacement("flattened_patches", patches, 0, torch.Generator().manual_seed(1))
    assert torch.equal(other[..., :2], patches[..., :2])  # positions, looked up by index
    assert not torch.equal(other[..., 2:], patches[..., 2:])


def test_token_ids_stay_below_the_smallest_vocabulary():
    # FSMT's source vocabulary is larger than its target one: decoder ids drawn from the
    # source's range would index past the decoder's embedding
    rows = input_sensitivity(untrained_model("fsmt", task="text2text-generation"))
    decoder = [r for r in rows if r.component == "decoder" and r.input == "decoder_input_ids"]
    assert len(decoder) == 1 and decoder[0].read


def test_image_features_zero_by_design_leave_the_audit_to_the_deepstack_rows():
    import torch

    from exportcheck.sensitivity import _main_output

    deepstack = torch.ones((2, 3, 4))
    assert _main_output({"features": torch.zeros((3, 4)), "deepstack": deepstack})[0] == (
        "deepstack"
    )
    assert _main_output({"features": torch.ones((3, 4)), "deepstack": deepstack})[0] == ("features")
