"""Causal LMs whose state is not a transformers Cache: checked with it, or on the ledger.

A model type checked with its state has a cache argument on record, its decode step
equals a full forward over prompt + new tokens, and both runtimes match eager. A model
type whose decode step cannot be checked says why in its family's ``no_cache`` entry,
and validate records that reason in the row's notes (whether the stateless check is
green is the sweep's business, not this file's).
"""

import pytest

from exportcheck import validate
from exportcheck.families import NO_CACHE

WITH_STATE = ["xlstm"]
#: model type -> a fragment of the error its ledger entry quotes
LEDGER = {
    "recurrent_gemma": "returned none after a prefill",
    "xlm": "returned none after a prefill",
    "cpmant": "The size of tensor a (62) must match the size of tensor b (35)",
    "reformer": "Constraints violated (L['attention_mask'].size()[1], cache_length)",
    "xlnet": "L['mems'][0].size()[0] = 30 is not equal to L['input_ids'].size()[0] = 2",
}


def _stage(report, name):
    return next((s for s in report.stages if s["stage"] == name), None)


@pytest.mark.models
@pytest.mark.parametrize("model_type", WITH_STATE)
def test_checked_with_its_state(model_type):
    report = validate(model_type, exporter="onnx")
    assert report.ok, report.table()
    assert report.verdicts == {"exported_program": True, "onnx": True}, report.table()
    assert report.model["cache_argument"] is not None, report.table()
    consistent = _stage(report, "eager_consistent")
    assert consistent is not None and consistent["ok"], report.table()
    assert not any(n.startswith("no cache") for n in report.model["notes"]), report.model


@pytest.mark.parametrize(("model_type", "error"), sorted(LEDGER.items()))
def test_the_ledger_quotes_the_error(model_type, error):
    assert error in NO_CACHE[model_type]


@pytest.mark.models
@pytest.mark.parametrize("model_type", sorted(LEDGER))
def test_checked_without_state_says_why(model_type):
    report = validate(model_type, exporter="onnx")
    assert report.model["cache_argument"] is None, report.table()
    assert f"no cache: {NO_CACHE[model_type]}" in report.model["notes"], report.model
