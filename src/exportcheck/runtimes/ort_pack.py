"""ort_pack: the projections that read one input packed into one ``MatMul``.

A decoder layer computes its queries, keys and values from the same normalized hidden
states with three ``MatMul`` nodes of constant weights, and its MLP's gate and up
projections with two more. At a decode step each is a product of one row by a matrix,
bound by reading the matrix: one ``MatMul`` over the weights concatenated along their
columns reads the same bytes in one call instead of three, with one dispatch and one
split of its output. Each output column is the same dot product as before.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["pack_shared_matmuls"]


def _constant_matrix(value: Any) -> Any:
    """The float32 matrix an initializer ``value`` holds, or None."""
    if value is None or value.const_value is None or not value.is_initializer():
        return None
    if value.shape is None or len(value.shape) != 2 or value.dtype is None:
        return None
    import onnx_ir as ir

    return value if value.dtype == ir.DataType.FLOAT else None


def pack_shared_matmuls(model: Any) -> int:
    """Replace the ``MatMul`` nodes that multiply one input by constant matrices of the
    same number of rows with one ``MatMul`` by the matrices side by side, then a ``Split``
    of its last axis; returns how many nodes were packed into others.

    Weights that other nodes also read are left alone (they would be stored twice).
    """
    import onnx_ir as ir

    graph = model.graph
    groups: dict[int, list[Any]] = {}
    for node in graph:
        if node.op_type != "MatMul" or node.domain not in ("", "ai.onnx"):
            continue
        x, w = node.inputs
        weight = _constant_matrix(w)
        if x is None or weight is None or len(w.uses()) != 1:
            continue
        groups.setdefault(id(x), []).append(node)
    packed = 0
    for nodes in groups.values():
        rows = {n.inputs[1].shape[0] for n in nodes}
        if len(nodes) < 2 or len(rows) != 1:
            continue
        x = nodes[0].inputs[0]
        weights = [n.inputs[1] for n in nodes]
        widths = [int(w.shape[1]) for w in weights]
        joined = np.concatenate([w.const_value.numpy() for w in weights], axis=1)
        name = f"{weights[0].name}_packed"
        packed_weight = ir.Value(name=name, const_value=ir.tensor(joined, name=name))
        packed_weight.shape, packed_weight.type = ir.Shape(joined.shape), weights[0].type
        graph.register_initializer(packed_weight)
        matmul = ir.node("MatMul", [x, packed_weight], name=f"{nodes[0].name}_packed")
        sizes = ir.Value(
            name=f"{name}_sizes",
            const_value=ir.tensor(np.array(widths, dtype=np.int64), name=f"{name}_sizes"),
        )
        sizes.shape, sizes.type = ir.Shape([len(widths)]), ir.TensorType(ir.DataType.INT64)
        graph.register_initializer(sizes)
        split = ir.node(
            "Split",
            [matmul.outputs[0], sizes],
            attributes={"axis": -1},
            num_outputs=len(nodes),
            name=f"{nodes[0].name}_split",
        )
        # before the first reader of any of the outputs: every node reading x comes
        # after x is computed, and the packed nodes take the place of the first one
        first = min(nodes, key=lambda n: list(graph).index(n))
        graph.insert_before(first, [matmul, split])
        for node, out in zip(nodes, split.outputs, strict=True):
            old = node.outputs[0]
            # the name goes with the value: a graph output keeps its name
            out.name, old.name = old.name, f"{old.name}_unpacked"
            out.shape, out.type = old.shape, old.type
            ir.convenience.replace_all_uses_with(old, out, replace_graph_outputs=True)
            graph.remove(node, safe=True)
        for weight in weights:
            graph.initializers.pop(weight.name)
        packed += len(nodes) - 1
    return packed
