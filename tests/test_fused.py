"""The ONNX graph fused for onnxruntime (runtime ``onnx_ort``): fusions applied, and the
fused graph checked like the plain one, generation included."""

import json

import onnx
import pytest

from exportcheck import validate
from exportcheck.cli import main
from exportcheck.runtimes import EXPORTERS
from exportcheck.runtimes.onnx_ort import FUSIONS_KEY


def test_the_fused_runtime_is_only_in_the_fused_exporter():
    # --exporter onnx checks the plain graph; --exporter fused (a sweep of the fused
    # graphs) the ExportedProgram and the fused conversion
    assert all("onnx_ort" not in rts for name, rts in EXPORTERS.items() if name != "fused")
    assert EXPORTERS["fused"] == ("exported_program", "onnx_ort")


@pytest.mark.models
def test_a_llama_graph_fuses_and_stays_correct(tmp_path):
    report = validate("llama", runtimes=["exported_program", "onnx", "onnx_ort"], save_dir=tmp_path)
    assert report.ok, report.table()
    assert report.verdicts == {"exported_program": True, "onnx": True, "onnx_ort": True}
    fused = report.artifacts["model/onnx_ort"]
    # attention and (skip) RMS normalization rewritten as onnxruntime's contrib ops
    for fusion in ("skip_rms_normalization", "sdpa", "cos_sin_cache", "group_query_attention"):
        assert fused["fusions"].get(fusion, 0) > 0, fused["fusions"]
    for op in ("GroupQueryAttention", "SkipSimplifiedLayerNormalization"):
        assert fused["op_types"].get(op, 0) > 0, fused["op_types"]
        assert op not in report.artifacts["model/onnx"]["op_types"]
    # the rotary embedding went on into the attention, which reads the queries, keys and
    # values as the one packed MatMul computes them (no Split)
    assert fused["fusions"]["rotary_in_group_query_attention"] == 2, fused["fusions"]
    assert fused["fusions"]["packed_matmul"] == 6, fused["fusions"]  # 2 layers: 2 + 1 each
    assert "RotaryEmbedding" not in fused["op_types"], fused["op_types"]
    # every attention over the cache went on to GroupQueryAttention
    assert "MultiHeadAttention" not in fused["op_types"], fused["op_types"]
    assert fused["nodes"] < report.artifacts["model/onnx"]["nodes"]
    # every input set and the generation loop, as for the plain graph
    runs = [r for r in report.runs if r["runtime"] == "onnx_ort"]
    assert len(runs) == 7 and all(r["ok"] for r in runs)
    generated = next(s for s in report.stages if s["stage"] == "fused_generate")
    assert generated["ok"]
    saved = next(tmp_path.rglob("*.fused.onnx"))
    proto = onnx.load(saved, load_external_data=False)
    meta = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(meta[FUSIONS_KEY]) == fused["fusions"]
    for node in (n for n in proto.graph.node if n.op_type == "GroupQueryAttention"):
        attributes = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        assert attributes["do_rotary"] == 1 and node.input[1] == node.input[2] == ""


@pytest.mark.models
def test_grouped_heads_read_the_cache_once_and_padded_batches_stay_correct(tmp_path):
    # 4 query heads over 2 key/value heads: the plain graph repeats the cache for every
    # query head, the fused one hands cache and new keys to GroupQueryAttention with the
    # mask as attention_bias
    from transformers import LlamaConfig

    config = LlamaConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=256,
    )
    report = validate(config, runtimes=["exported_program", "onnx", "onnx_ort"])
    assert report.ok, report.table()
    plain = report.artifacts["model/onnx"]["op_types"]
    fused = report.artifacts["model/onnx_ort"]
    assert plain.get("Expand", 0) >= 4, plain  # the repeated keys and values
    assert fused["op_types"].get("GroupQueryAttention") == 2, fused["op_types"]
    assert fused["fusions"]["group_query_attention"] == 2
    runs = [r for r in report.runs if r["runtime"] == "onnx_ort"]
    labels = [r["input_set"] for r in runs]
    # the left-padded set, and sets of several new tokens over a cache in a batch
    assert any("padded" in label for label in labels), labels
    assert all(r["ok"] for r in runs), runs
    assert next(s for s in report.stages if s["stage"] == "fused_generate")["ok"]


def _gqa_llama_onnx(path):
    import copy

    import torch
    from transformers import LlamaConfig

    from exportcheck import export_patches, untrained_model

    config = LlamaConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=256,
    )
    m = untrained_model(config)
    with export_patches(m.model), torch.no_grad():
        ep = torch.export.export(
            m.model, (), kwargs=copy.deepcopy(m.inputs), dynamic_shapes=m.dynamic_shapes
        )
        torch.onnx.export(ep, (), path, kwargs=copy.deepcopy(m.inputs), dynamo=True)
    return m


@pytest.mark.models
def test_onnxscript_own_gqa_fusion_is_still_wrong_on_a_batch(tmp_path):
    # why fuse_for_ort leaves onnxscript's GroupQueryAttention fusion out: once the
    # rotary frequencies are in the form it reads, it fires and replaces the mask by
    # lengths taken from the positions of one row; a batch of two then fails. When this
    # test fails, onnxscript's fusion keeps the mask and can be used again.
    import numpy as np
    import onnx_ir
    import onnxruntime
    from onnxscript.rewriter.ort_fusions import optimize_for_ort

    from exportcheck import ort_feeds
    from exportcheck.runtimes.ort_gqa import rotary_frequencies_as_matmul

    plain = str(tmp_path / "plain.onnx")
    m = _gqa_llama_onnx(plain)
    model = onnx_ir.load(plain)
    assert rotary_frequencies_as_matmul(model) == 1
    model, counts = optimize_for_ort(model)
    assert counts["gqa"] == 2, counts
    onnx_ir.save(model, str(tmp_path / "theirs.onnx"))
    theirs = onnxruntime.InferenceSession(
        str(tmp_path / "theirs.onnx"), providers=["CPUExecutionProvider"]
    )
    batch = next(i for i in m.other_inputs if i["input_ids"].shape[0] > 1)
    with pytest.raises(Exception, match="seqlens_k must have batch_size"):
        theirs.run(None, ort_feeds(theirs, batch))

    # exportcheck's fusion on the same graph: the same operator, the mask kept
    from exportcheck.runtimes.onnx_ort import fuse_for_ort

    fusions = fuse_for_ort(plain, str(tmp_path / "ours.onnx"))
    assert fusions["group_query_attention"] == 2 and "gqa" not in fusions, fusions
    ours = onnxruntime.InferenceSession(
        str(tmp_path / "ours.onnx"), providers=["CPUExecutionProvider"]
    )
    reference = onnxruntime.InferenceSession(plain, providers=["CPUExecutionProvider"])
    for inputs in m.other_inputs:
        got = ours.run(None, ort_feeds(ours, inputs))
        expected = reference.run(None, ort_feeds(reference, inputs))
        assert max(float(np.abs(a - b).max()) for a, b in zip(got, expected, strict=True)) < 1e-5


def test_optimize_needs_the_onnx_exporter(capsys):
    with pytest.raises(SystemExit, match="--optimize ort fuses the ONNX graph"):
        main(["validate", "llama", "--exporter", "export", "--optimize", "ort"])


def test_a_model_with_external_weights_fuses_into_another_folder(tmp_path):
    # a large model keeps its weights beside the .onnx file; the fused copy must carry
    # its own, not point at a file of the source's folder
    import numpy as np
    import onnxruntime
    from onnx import TensorProto, helper, numpy_helper

    from exportcheck.runtimes.onnx_ort import fuse_for_ort

    weight = np.arange(64 * 64, dtype=np.float32).reshape(64, 64) / 4096
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64])],
        [numpy_helper.from_array(weight, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    (tmp_path / "src").mkdir()
    (tmp_path / "dst").mkdir()
    source = str(tmp_path / "src" / "model.onnx")
    onnx.save(model, source, save_as_external_data=True, location="model.onnx.data")
    target = str(tmp_path / "dst" / "model.onnx")
    fuse_for_ort(source, target)
    assert (tmp_path / "dst" / "model.onnx.data").exists()
    (tmp_path / "src" / "model.onnx.data").unlink()  # the fused copy must not need it
    session = onnxruntime.InferenceSession(target, providers=["CPUExecutionProvider"])
    x = np.ones((1, 64), dtype=np.float32)
    np.testing.assert_allclose(session.run(None, {"x": x})[0], x @ weight, rtol=1e-6)


@pytest.mark.models
def test_a_mask_made_from_the_cached_values_keeps_its_concat():
    # doge computes its attention mask from the value states, cache included: the
    # concatenated cache stays for the mask, and only the graph's present output moves
    # to GroupQueryAttention (moving every use made a cycle)
    report = validate("doge", runtimes=["exported_program", "onnx", "onnx_ort"])
    assert report.ok, report.table()
    fused = report.artifacts["model/onnx_ort"]
    assert fused["fusions"]["group_query_attention"] == 2, fused["fusions"]


@pytest.mark.models
def test_a_gemm_after_the_fused_attention_reads_matrices_again():
    # GPT-2's projections are addmm, exported as Gemm over the flattened rows; the fused
    # attention's output replaces the flattening, and onnxruntime refused the graph
    # ("Input 0 expected to have rank 2 but has rank 3") until the rows are flattened again
    report = validate("gpt2", runtimes=["exported_program", "onnx", "onnx_ort"])
    assert report.ok, report.table()
    fused = report.artifacts["model/onnx_ort"]
    assert fused["op_types"].get("Gemm", 0) > 0 and "GroupQueryAttention" in fused["op_types"]


def test_projections_reading_one_input_are_packed_into_one_matmul():
    # three projections of x (as a layer's queries, keys and values) become one MatMul
    # by the weights side by side and a Split; a weight another node also reads, or a
    # projection of another input, is left alone
    import numpy as np
    import onnx_ir
    import onnxruntime
    from onnx import TensorProto, helper, numpy_helper

    from exportcheck.runtimes.ort_pack import pack_shared_matmuls

    rng = np.random.default_rng(0)
    weights = {
        "wq": rng.standard_normal((8, 8)),
        "wk": rng.standard_normal((8, 4)),
        "wv": rng.standard_normal((8, 4)),
        "wo": rng.standard_normal((8, 8)),
        "shared": rng.standard_normal((8, 8)),
    }
    nodes = [
        helper.make_node("MatMul", ["x", "wq"], ["q"]),
        helper.make_node("MatMul", ["x", "wk"], ["k"]),
        helper.make_node("MatMul", ["x", "wv"], ["v"]),
        helper.make_node("MatMul", ["x", "shared"], ["s"]),
        helper.make_node("MatMul", ["q", "shared"], ["s2"]),
        helper.make_node("MatMul", ["q", "wo"], ["o"]),
        helper.make_node("Concat", ["k", "v"], ["kv"], axis=-1),
    ]
    outputs = ["o", "kv", "s", "s2", "k"]  # a projection can be a graph output too
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 8])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in outputs],
        [numpy_helper.from_array(w.astype(np.float32), n) for n, w in weights.items()],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model = onnx_ir.from_proto(proto)
    assert pack_shared_matmuls(model) == 2  # q, k and v: two nodes fewer
    ops = [n.op_type for n in model.graph]
    assert ops.count("MatMul") == 4 and ops.count("Split") == 1, ops
    packed = onnx_ir.to_proto(model)
    x = {"x": rng.standard_normal((2, 3, 8)).astype(np.float32)}
    run = [
        onnxruntime.InferenceSession(p.SerializeToString(), providers=["CPUExecutionProvider"])
        for p in (proto, packed)
    ]
    for before, after in zip(run[0].run(None, x), run[1].run(None, x), strict=True):
        np.testing.assert_allclose(after, before, rtol=1e-5, atol=1e-5)
    assert {i.name for i in packed.graph.initializer} >= {"shared", "wo"}
    assert not {"wq", "wk", "wv"} & {i.name for i in packed.graph.initializer}
    assert [o.name for o in packed.graph.output] == outputs


def test_rotary_stays_outside_the_attention_unless_its_positions_follow_the_cache():
    # GroupQueryAttention rotates with positions it computes from the cache length; the
    # graph's own positions go in only when they are provably those: cache length plus
    # arange(new tokens). Positions given as an input (or computed otherwise) are not.
    import onnx_ir
    from onnx import TensorProto, helper

    from exportcheck.runtimes.ort_gqa import _positions_follow_cache

    def graph(start: int):
        nodes = [
            helper.make_node("Shape", ["ids"], ["n_shape"], start=1, end=2),
            helper.make_node("Squeeze", ["n_shape"], ["n"]),
            helper.make_node("Range", ["start", "n", "one"], ["arange"]),
            helper.make_node("Shape", ["past"], ["past_shape"], start=2, end=3),
            helper.make_node("Squeeze", ["past_shape"], ["past_len"]),
            helper.make_node("Add", ["arange", "past_len"], ["pos"]),
            helper.make_node("Unsqueeze", ["pos", "zero"], ["positions"]),
        ]
        inits = [
            helper.make_tensor("start", TensorProto.INT64, [], [start]),
            helper.make_tensor("one", TensorProto.INT64, [], [1]),
            helper.make_tensor("zero", TensorProto.INT64, [1], [0]),
        ]
        inputs = [
            helper.make_tensor_value_info("ids", TensorProto.INT64, ["b", "s"]),
            helper.make_tensor_value_info("past", TensorProto.FLOAT, ["b", 2, "p", 8]),
            helper.make_tensor_value_info("given", TensorProto.INT64, [1, "s"]),
        ]
        outputs = [helper.make_tensor_value_info("positions", TensorProto.INT64, None)]
        proto = helper.make_model(helper.make_graph(nodes, "g", inputs, outputs, inits))
        model = onnx_ir.from_proto(proto)
        values = {v.name: v for v in model.graph.inputs}
        return model.graph, values, model.graph.outputs[0]

    g, values, positions = graph(start=0)
    assert _positions_follow_cache(positions, values["past"], g)
    assert not _positions_follow_cache(values["given"], values["past"], g)
    g, values, positions = graph(start=1)  # one past the cache length: not GQA's
    assert not _positions_follow_cache(positions, values["past"], g)


@pytest.mark.models
def test_rotary_tables_as_constants_give_the_computed_values_up_to_their_rows(tmp_path):
    # fuse_for_ort(rotary_rows=N) stores the cos/sin tables GroupQueryAttention reads,
    # which the graph otherwise computes at each call for every position up to the
    # longest: the same values position for position, and a clear refusal beyond N
    import numpy as np
    import onnxruntime

    from exportcheck import ort_feeds
    from exportcheck.runtimes.onnx_ort import fuse_for_ort

    plain = str(tmp_path / "plain.onnx")
    m = _gqa_llama_onnx(plain)
    computed, stored = str(tmp_path / "computed.onnx"), str(tmp_path / "stored.onnx")
    assert "rotary_tables_as_constants" not in fuse_for_ort(plain, computed)
    assert fuse_for_ort(plain, stored, rotary_rows=32)["rotary_tables_as_constants"] == 1
    ops = {n.op_type for n in onnx.load(stored).graph.node}
    assert {"Cos", "Sin"} <= {n.op_type for n in onnx.load(computed).graph.node}
    assert not {"Cos", "Sin"} & ops, ops
    a, b = (
        onnxruntime.InferenceSession(p, providers=["CPUExecutionProvider"])
        for p in (computed, stored)
    )
    within = beyond = 0
    for inputs in [m.inputs, *m.other_inputs]:
        total = inputs["attention_mask"].shape[1]
        if total <= 32:
            got, expected = b.run(None, ort_feeds(b, inputs)), a.run(None, ort_feeds(a, inputs))
            for x, y in zip(got, expected, strict=True):
                np.testing.assert_array_equal(x, y)
            within += 1
        else:
            with pytest.raises(Exception, match="cos_cache dimension 0 shall not be less"):
                b.run(None, ort_feeds(b, inputs))
            beyond += 1
    assert within and beyond, (within, beyond)


def test_rotary_tables_are_stored_only_when_computed_from_positions_and_constants():
    # the tables' frequencies in a Constant node (the walk stops at its output and hands
    # it to the evaluation as an initializer); a factor the graph takes as an input keeps
    # the tables computed
    import numpy as np
    import onnx_ir
    import onnxruntime
    from onnx import TensorProto, helper, numpy_helper

    from exportcheck.runtimes.ort_gqa import rotary_tables_as_constants

    def model(factor_input: bool):
        freqs = (0.5 ** np.arange(8, dtype=np.float32))[None]  # head size 16
        nodes = [
            helper.make_node("Range", ["zero", "n", "one"], ["positions"]),
            helper.make_node("Cast", ["positions"], ["fpos"], to=TensorProto.FLOAT),
            helper.make_node("Unsqueeze", ["fpos", "axis"], ["column"]),
            helper.make_node(
                "Constant", [], ["freqs"], value=numpy_helper.from_array(freqs, "freqs")
            ),
            helper.make_node("Mul", ["column", "freqs"], ["angles0"]),
            helper.make_node(
                "Mul" if factor_input else "Identity",
                ["angles0", "factor"] if factor_input else ["angles0"],
                ["angles"],
            ),
            helper.make_node("Cos", ["angles"], ["cos"]),
            helper.make_node("Sin", ["angles"], ["sin"]),
            helper.make_node(
                "GroupQueryAttention",
                ["q", "k", "v", "past_k", "past_v", "seqlens_k", "total", "cos", "sin"],
                ["out", "present_k", "present_v"],
                domain="com.microsoft",
                num_heads=2,
                kv_num_heads=1,
                do_rotary=1,
            ),
        ]
        inputs = [
            helper.make_tensor_value_info("q", TensorProto.FLOAT, [1, 1, 32]),
            helper.make_tensor_value_info("k", TensorProto.FLOAT, [1, 1, 16]),
            helper.make_tensor_value_info("v", TensorProto.FLOAT, [1, 1, 16]),
            helper.make_tensor_value_info("past_k", TensorProto.FLOAT, [1, 1, "p", 16]),
            helper.make_tensor_value_info("past_v", TensorProto.FLOAT, [1, 1, "p", 16]),
            helper.make_tensor_value_info("seqlens_k", TensorProto.INT32, [1]),
            helper.make_tensor_value_info("total", TensorProto.INT32, []),
            helper.make_tensor_value_info("n", TensorProto.INT64, []),
        ]
        if factor_input:
            inputs.append(helper.make_tensor_value_info("factor", TensorProto.FLOAT, []))
        inits = [
            helper.make_tensor("zero", TensorProto.INT64, [], [0]),
            helper.make_tensor("one", TensorProto.INT64, [], [1]),
            helper.make_tensor("axis", TensorProto.INT64, [1], [1]),
        ]
        outputs = [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)]
        opsets = [helper.make_opsetid("", 18), helper.make_opsetid("com.microsoft", 1)]
        graph = helper.make_graph(nodes, "g", inputs, outputs, inits)
        return helper.make_model(graph, opset_imports=opsets)

    rng = np.random.default_rng(0)
    past = 5
    feeds = {
        "q": rng.standard_normal((1, 1, 32)).astype(np.float32),
        "k": rng.standard_normal((1, 1, 16)).astype(np.float32),
        "v": rng.standard_normal((1, 1, 16)).astype(np.float32),
        "past_k": rng.standard_normal((1, 1, past, 16)).astype(np.float32),
        "past_v": rng.standard_normal((1, 1, past, 16)).astype(np.float32),
        "seqlens_k": np.array([past], dtype=np.int32),
        "total": np.array(past + 1, dtype=np.int32),
        "n": np.array(past + 1, dtype=np.int64),
    }
    computed = model(factor_input=False)
    rewritten = onnx_ir.from_proto(computed)
    assert rotary_tables_as_constants(rewritten, 16) == 1
    stored = onnx_ir.to_proto(rewritten)
    assert [n.op_type for n in stored.graph.node] == ["GroupQueryAttention"]
    run = [
        onnxruntime.InferenceSession(p.SerializeToString(), providers=["CPUExecutionProvider"])
        for p in (computed, stored)
    ]
    expected = run[0].run(None, feeds)[0]
    got = run[1].run(None, feeds)[0]
    np.testing.assert_array_equal(got, expected)

    scaled = onnx_ir.from_proto(model(factor_input=True))
    assert rotary_tables_as_constants(scaled, 16) == 0
    assert {"Cos", "Sin"} <= {n.op_type for n in scaled.graph}


@pytest.mark.models
@pytest.mark.parametrize(
    "hidden, attention, rotates",
    [(32, True, False), (48, False, False)],
    ids=["heads_of_8", "heads_of_12"],
)
def test_heads_onnxruntime_cannot_attend_or_rotate_stay_as_they_are(hidden, attention, rotates):
    # GroupQueryAttention refuses heads whose size is not a multiple of 8, and rotating
    # heads whose size is not a multiple of 16 (run-time errors): the fusions leave those
    # graphs as they were, and the fused graph stays correct
    from transformers import LlamaConfig

    config = LlamaConfig(
        hidden_size=hidden,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=256,
    )
    report = validate(config, runtimes=["exported_program", "onnx_ort"])
    assert report.ok, report.table()
    fused = report.artifacts["model/onnx_ort"]
    assert ("GroupQueryAttention" in fused["op_types"]) is attention, fused["op_types"]
    assert bool(fused["fusions"].get("rotary_in_group_query_attention")) is rotates
    runs = [r for r in report.runs if r["runtime"] == "onnx_ort"]
    assert runs and all(r["ok"] for r in runs), runs
