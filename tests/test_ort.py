"""ort_feeds: nested inputs to onnxruntime feeds."""

import pytest
import torch

from exportcheck import make_dynamic_cache, ort_feeds


def _inputs():
    cache = make_dynamic_cache(
        [(torch.zeros(2, 1, 3, 4), torch.ones(2, 1, 3, 4))] * 2,
    )
    return dict(input_ids=torch.ones((2, 1), dtype=torch.int64), cache=cache, use_cache=True)


def test_feeds_follow_the_flattening_order_and_drop_non_tensors():
    names = ["input_ids", "k0", "k1", "v0", "v1"]
    feeds = ort_feeds(names, _inputs())
    assert list(feeds) == names
    assert feeds["input_ids"].dtype.name == "int64"
    assert feeds["k1"].shape == (2, 1, 3, 4) and feeds["k1"].max() == 0
    assert feeds["v0"].min() == 1


def test_a_session_of_an_exported_model(tmp_path):
    import onnxruntime

    class Add(torch.nn.Module):
        def forward(self, x, pair):
            return x + pair[0] * pair[1]

    inputs = (torch.rand(2, 3), [torch.rand(2, 3), torch.rand(2, 3)])
    path = tmp_path / "add.onnx"
    torch.onnx.export(Add(), inputs, path, dynamo=True)
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    (got,) = session.run(None, ort_feeds(session, inputs))
    torch.testing.assert_close(torch.from_numpy(got), Add()(*inputs))


@pytest.mark.parametrize(
    ("session", "inputs", "error", "message"),
    [
        ("input_ids", {}, TypeError, "expected an onnxruntime.InferenceSession or a list"),
        ([1, 2], {}, TypeError, "got list"),
        (
            ["input_ids", "k0"],
            _inputs(),
            ValueError,
            "the ONNX model has 2 inputs \\(input_ids, k0\\) but the inputs flatten into 5",
        ),
    ],
)
def test_bad_inputs(session, inputs, error, message):
    with pytest.raises(error, match=message):
        ort_feeds(session, inputs)
