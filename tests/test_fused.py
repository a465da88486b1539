"""The ONNX graph fused for onnxruntime (runtime ``onnx_ort``): fusions applied, and the
fused graph checked like the plain one, generation included."""

import json

import onnx
import pytest

from exportcheck import validate
from exportcheck.cli import main
from exportcheck.runtimes import EXPORTERS
from exportcheck.runtimes.onnx_ort import FUSIONS_KEY


def test_the_fused_runtime_is_not_part_of_an_exporter_by_default():
    assert all("onnx_ort" not in runtimes for runtimes in EXPORTERS.values())


@pytest.mark.models
def test_a_llama_graph_fuses_and_stays_correct(tmp_path):
    report = validate("llama", runtimes=["exported_program", "onnx", "onnx_ort"], save_dir=tmp_path)
    assert report.ok, report.table()
    assert report.verdicts == {"exported_program": True, "onnx": True, "onnx_ort": True}
    fused = report.artifacts["model/onnx_ort"]
    # attention and (skip) RMS normalization rewritten as onnxruntime's contrib ops
    for fusion in ("skip_rms_normalization", "sdpa"):
        assert fused["fusions"].get(fusion, 0) > 0, fused["fusions"]
    for op in ("MultiHeadAttention", "SkipSimplifiedLayerNormalization"):
        assert fused["op_types"].get(op, 0) > 0, fused["op_types"]
        assert op not in report.artifacts["model/onnx"]["op_types"]
    assert fused["nodes"] < report.artifacts["model/onnx"]["nodes"]
    # every input set and the generation loop, as for the plain graph
    runs = [r for r in report.runs if r["runtime"] == "onnx_ort"]
    assert len(runs) == 7 and all(r["ok"] for r in runs)
    generated = next(s for s in report.stages if s["stage"] == "fused_generate")
    assert generated["ok"]
    saved = next(tmp_path.rglob("*.fused.onnx"))
    meta = {p.key: p.value for p in onnx.load(saved, load_external_data=False).metadata_props}
    assert json.loads(meta[FUSIONS_KEY]) == fused["fusions"]


def test_optimize_needs_the_onnx_exporter(capsys):
    with pytest.raises(SystemExit, match="--optimize ort fuses the ONNX graph"):
        main(["validate", "llama", "--exporter", "export", "--optimize", "ort"])
