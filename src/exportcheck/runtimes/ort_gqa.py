"""ort_gqa: attention over a growing cache rewritten as onnxruntime's
``GroupQueryAttention``, the mask kept, and the rotary embedding as ``RotaryEmbedding``.

onnxscript's fusions turn the attention of a decoder into ``MultiHeadAttention``. Either
the node takes the cache and the new keys apart, or its keys and values are the cache
concatenated with the new ones and, when there are fewer key/value heads than query
heads, repeated for every query head: each decode step then copies the whole cache once
more per repeat. ``GroupQueryAttention`` takes the cache and the new keys apart, appends
them itself and reads each cached key once for its group of query heads.

onnxscript's own fusion into it replaces the attention mask by lengths derived from the
positions of one row: a left-padded batch gives other values, a batch of several rows an
error (``tests/test_fused.py`` keeps the evidence). :func:`mha_to_gqa` keeps the graph's
additive mask as ``attention_bias`` instead, and takes every batch row's cache as full
(``seqlens_k = total - 1``, ``query_seqlens`` the new length): the mask, not the lengths,
says which keys count, so left-padded batches give what the plain graph gives. The
operator runs causal (onnxruntime takes several new tokens over a cache in a batch only
so), which the mask already is; the one difference is on query rows whose every key is
masked, a padded position of a prompt, where the plain graph averages over every key and
the operator over the earlier ones: values no later token reads.

onnxscript fuses the rotary embedding into ``RotaryEmbedding`` with cos/sin tables when
its frequencies are a product of matrices; the exported graph computes them as a
broadcast product, which :func:`rotary_frequencies_as_matmul` rewrites first, and
:func:`rotary_positions_per_row` gives the fused operator the per-row positions
onnxruntime asks for. :func:`rotary_into_gqa` then hands the rotation to
``GroupQueryAttention`` itself (``do_rotary``) where the graph's positions are provably
the ones the operator computes (the cache length plus each new token's index), and the
queries, keys and values packed as one input when one ``MatMul`` computes them
(:mod:`.ort_pack`).

On request (``fuse_for_ort(rotary_rows=N)``), :func:`rotary_tables_as_constants` stores
the cos/sin tables the operator reads for ``N`` positions, which the graph otherwise
computes at every call for every position up to the longest.

Every rewrite is structural: it applies to the nodes of the form it names and leaves
every other node as it was; the fused graph is then checked against eager like any other.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = [
    "gemm_inputs_as_matrices",
    "mha_to_gqa",
    "rotary_frequencies_as_matmul",
    "rotary_into_gqa",
    "rotary_positions_per_row",
    "rotary_tables_as_constants",
]


def _producer(value: Any, op_type: str) -> Any:
    node = value.producer() if value is not None else None
    if node is None or node.op_type != op_type or node.domain not in ("", "ai.onnx"):
        return None
    return node


def _cache_concat(value: Any, graph: Any) -> tuple[Any, int] | None:
    """``(concat node, repeats)`` when ``value`` is a cache (B, Hkv, P, Dh) concatenated
    with the new keys, then repeated ``H / Hkv`` times per head, given to the attention
    as (B, T, H*Dh) or as (B, H, T, Dh)."""
    reshape = _producer(value, "Reshape")
    transpose = _producer(reshape.inputs[0], "Transpose") if reshape else None
    if transpose is not None and list(transpose.attributes.get_ints("perm", [])) == [0, 2, 1, 3]:
        value = transpose.inputs[0]  # (B, H, T, Dh) flattened to (B, T, H*Dh)
    concat = _producer(value, "Concat")
    repeats = 1
    if concat is None:
        # repeat_kv: Reshape(Expand(Unsqueeze(x, [2]), (B, Hkv, n, T, Dh)), (B, H, T, Dh))
        merge = _producer(value, "Reshape")
        expand = _producer(merge.inputs[0], "Expand") if merge else None
        unsqueeze = _producer(expand.inputs[0], "Unsqueeze") if expand else None
        if unsqueeze is None:
            return None
        axes = unsqueeze.inputs[1].const_value if len(unsqueeze.inputs) > 1 else None
        if axes is None or axes.numpy().tolist() != [2]:
            return None
        shape = expand.outputs[0].shape
        if shape is None or len(shape) != 5 or not isinstance(shape[2], int):
            return None
        repeats = shape[2]
        concat = _producer(unsqueeze.inputs[0], "Concat")
    if concat is None or concat.attributes.get_int("axis", 0) not in (2, -2):
        return None
    if len(concat.inputs) != 2 or concat.inputs[0] not in graph.inputs:
        return None
    return concat, repeats


def mha_to_gqa(model: Any) -> int:
    """Rewrite the ``MultiHeadAttention`` nodes of ``model`` (an ``onnx_ir.Model``) that
    attend over a cache into ``GroupQueryAttention``; returns how many were rewritten.
    Heads whose size is not a multiple of 8 stay as they are: onnxruntime's operator
    refuses them at run time."""
    import onnx_ir as ir

    graph = model.graph
    rewritten = 0
    # the lengths, made once for the layers that share a mask and a cache length
    lengths: dict[tuple[int, str], tuple[Any, Any, Any]] = {}
    for node in list(graph):
        if node.op_type != "MultiHeadAttention" or node.domain != "com.microsoft":
            continue
        inputs = list(node.inputs) + [None] * (10 - len(node.inputs))
        query, key, value, bias, padding, mask, past_key, past_value = inputs[:8]
        if bias is not None or padding is not None or mask is None:
            continue
        if any(v is not None for v in inputs[8:]):
            continue
        heads = node.attributes.get_int("num_heads", 0)
        new_nodes: list = []
        add = _Adder(new_nodes, f"{node.name}_gqa")
        if past_key is not None and past_value is not None:
            # the cache handed to the operator already, new keys (B, S, H*Dh) apart
            if past_key not in graph.inputs or past_value not in graph.inputs:
                continue
            if len(node.outputs) != 3:
                continue
            kv_shape = past_key.shape
            if kv_shape is None or kv_shape[1] != heads:
                continue
            kv_heads, key_bsd, value_bsd = heads, key, value
            presents = list(node.outputs[1:])
        else:
            if len(node.outputs) != 1:
                continue
            # the cache concatenated with the new keys, repeated per query head or not
            found_k, found_v = _cache_concat(key, graph), _cache_concat(value, graph)
            if found_k is None or found_v is None:
                continue
            (concat_k, rep_k), (concat_v, rep_v) = found_k, found_v
            past_key, new_key = concat_k.inputs
            past_value, new_value = concat_v.inputs
            kv_shape = past_key.shape
            if rep_k != rep_v or kv_shape is None or not isinstance(kv_shape[1], int):
                continue
            kv_heads = kv_shape[1]
            if heads != kv_heads * rep_k:
                continue
            key_bsd = _as_bsd(new_key, kv_heads, add)
            value_bsd = _as_bsd(new_value, kv_heads, add)
            presents = [concat_k.outputs[0], concat_v.outputs[0]]
        if len(kv_shape) != 4 or not isinstance(kv_shape[3], int) or kv_shape[3] % 8:
            continue  # onnxruntime refuses it at run time: "head_size must be a multiple of 8"
        key_of_lengths = (id(mask), str(kv_shape[2]))
        if key_of_lengths not in lengths:
            # every row's cache is full: the mask, not seqlens_k, says which keys count
            past_len = add("Shape", [past_key], start=2, end=3)
            new_len = add("Shape", [query], start=1, end=2)
            total = add("Cast", [add("Add", [past_len, new_len])], to=ir.DataType.INT32)
            last = add("Sub", [total, add.const(np.array([1], dtype=np.int32))])
            batch = add("Shape", [query], start=0, end=1)
            lengths[key_of_lengths] = (
                add("Expand", [last, batch]),
                add("Squeeze", [total]),
                add("Expand", [add("Cast", [new_len], to=ir.DataType.INT32), batch]),
            )
        seqlens_k, total_scalar, query_seqlens = lengths[key_of_lengths]
        attrs: dict[str, Any] = {"num_heads": heads, "kv_num_heads": kv_heads, "causal": 1}
        scale = node.attributes.get("scale")
        if scale is not None:
            attrs["scale"] = scale.as_float()
        # inputs by position: 7-9 the rotary caches and positions, 11-15 sinks, cache
        # quantization scales and q/k norms, all absent
        gqa_inputs = [query, key_bsd, value_bsd, past_key, past_value, seqlens_k, total_scalar]
        gqa_inputs += [None, None, None, mask, None, None, None, None, None, query_seqlens]
        gqa = ir.node(
            "GroupQueryAttention",
            gqa_inputs,
            attributes=attrs,
            domain="com.microsoft",
            num_outputs=3,
            name=f"{node.name}_gqa",
        )
        new_nodes.append(gqa)
        graph.insert_before(node, new_nodes)
        out, present_key, present_value = gqa.outputs
        ir.convenience.replace_all_uses_with(node.outputs[0], out)
        # the graph's present cache is the operator's: same values, no second concat
        for old, new in zip(presents, (present_key, present_value), strict=True):
            name = old.name
            old.name = f"{name}_replaced"
            new.name, new.shape, new.type = name, old.shape, old.type
            if old.producer() is node:
                ir.convenience.replace_all_uses_with(old, new, replace_graph_outputs=True)
                continue
            # a concat the graph keeps computing when something else reads it (a mask
            # made from the values, say): only the graph's output moves to the operator
            for i, output in enumerate(graph.outputs):
                if output is old:
                    graph.outputs[i] = new
        graph.remove(node, safe=True)
        rewritten += 1
    if rewritten:
        _remove_unused(graph)
        graph.sort()
    return rewritten


def _const_int(value: Any) -> int | None:
    if value is None or value.const_value is None or value.const_value.size != 1:
        return None
    return int(value.const_value.numpy().ravel()[0])


def _cache_length_of(value: Any) -> Any:
    """The graph input whose axis 2 (a cache's length) ``value`` is, read through
    ``Squeeze``/``Cast`` of ``Shape(input, start=2, end=3)``; None otherwise."""
    for op in ("Cast", "Squeeze", "Reshape"):
        node = _producer(value, op)
        if node is not None:
            value = node.inputs[0]
    shape = _producer(value, "Shape")
    if shape is None:
        return None
    start, end = shape.attributes.get_int("start", 0), shape.attributes.get_int("end", -1)
    return shape.inputs[0] if (start, end) == (2, 3) else None


def _positions_follow_cache(positions: Any, past_key: Any, graph: Any) -> bool:
    """True when ``positions`` is provably ``cache length + arange(new tokens)`` in every
    row: ``(Expand of) Unsqueeze(Add(Range(0, n, 1), length of a cache))``, the cache a
    graph input whose length is the same dimension as ``past_key``'s. These are the
    positions ``GroupQueryAttention`` rotates with when every row's cache is full (its
    ``seqlens_k + 1 - new tokens``)."""
    expand = _producer(positions, "Expand")
    value = expand.inputs[0] if expand is not None else positions
    unsqueeze = _producer(value, "Unsqueeze")
    if unsqueeze is None:
        return False
    axes = unsqueeze.inputs[1].const_value if len(unsqueeze.inputs) > 1 else None
    if axes is None or [int(a) for a in axes.numpy().ravel()] != [0]:
        return False
    add = _producer(unsqueeze.inputs[0], "Add")
    if add is None:
        return False
    for arange, length in (add.inputs, reversed(add.inputs)):
        node = _producer(arange, "Range")
        if node is None or _const_int(node.inputs[0]) != 0 or _const_int(node.inputs[2]) != 1:
            continue
        cache = _cache_length_of(length)
        if cache is None or cache not in graph.inputs or cache.shape is None:
            continue
        if past_key.shape is not None and str(cache.shape[2]) == str(past_key.shape[2]):
            return True
    return False


def rotary_into_gqa(model: Any) -> int:
    """Hand the rotation of the queries and keys to ``GroupQueryAttention``
    (``do_rotary=1`` with the same cos/sin tables); returns how many operators rotate.

    Only where the heads' size is a multiple of 16 (onnxruntime refuses to rotate others),
    the two ``RotaryEmbedding`` nodes in front of the operator rotate with the same tables,
    full heads, and positions that are provably the cache length plus each
    new token's index (:func:`_positions_follow_cache`): the operator computes those
    itself from its lengths. Two nodes fewer per layer, and the rotation is applied on
    the way into the attention instead of in two passes over the queries and keys.
    """
    graph = model.graph
    count = 0
    for node in list(graph):
        if node.op_type != "GroupQueryAttention" or node.domain != "com.microsoft":
            continue
        inputs = list(node.inputs)
        if node.attributes.get_int("do_rotary", 0) or len(inputs) < 11:
            continue
        if any(inputs[i] is not None for i in (7, 8, 9)):
            continue
        head_size = inputs[3].shape[3] if inputs[3] is not None and inputs[3].shape else None
        if not isinstance(head_size, int) or head_size % 16:
            continue  # onnxruntime: "head_size shall be a multiple of 16" when it rotates
        rotaries = [inputs[0].producer(), inputs[1].producer() if inputs[1] else None]
        if any(
            r is None or r.op_type != "RotaryEmbedding" or r.domain != "com.microsoft"
            for r in rotaries
        ):
            continue
        q_rot, k_rot = rotaries
        readers = [u.node for r in rotaries for u in r.outputs[0].uses() if u.node is not node]
        if any(r.op_type != "Shape" for r in readers):
            continue  # something else reads the rotated values, not only their shape
        if list(q_rot.inputs[1:4]) != list(k_rot.inputs[1:4]):
            continue  # other positions or tables
        defaults = {"interleaved": 0, "rotary_embedding_dim": 0, "scale": 1.0}
        attributes = [
            {**defaults, **{k: a.value for k, a in r.attributes.items() if k != "num_heads"}}
            for r in rotaries
        ]
        first = attributes[0]
        if attributes[1] != first or first.get("rotary_embedding_dim", 0) != 0:
            continue
        if first.get("is_packed_batching", 0) or first.get("scale", 1.0) != 1.0:
            continue
        positions, cos, sin = q_rot.inputs[1:4]
        if not _positions_follow_cache(positions, inputs[3], graph):
            continue
        for reader in readers:  # the lengths read the shape, which rotating keeps
            rotated = reader.inputs[0]
            reader.replace_input_with(0, rotated.producer().inputs[0])
        node.replace_input_with(0, q_rot.inputs[0])
        node.replace_input_with(1, k_rot.inputs[0])
        node.replace_input_with(7, cos)
        node.replace_input_with(8, sin)
        import onnx_ir as ir

        node.attributes["do_rotary"] = ir.AttrInt64("do_rotary", 1)
        node.attributes["rotary_interleaved"] = ir.AttrInt64(
            "rotary_interleaved", int(first.get("interleaved", 0))
        )
        for r in rotaries:
            graph.remove(r, safe=True)
        _packed_into_gqa(node)
        count += 1
    if count:
        _remove_unused(graph)
    return count


def _packed_into_gqa(node: Any) -> bool:
    """Hand a rotating ``GroupQueryAttention`` its queries, keys and values packed as one
    input (B, S, (H + 2 Hkv) * Dh), as the ``MatMul`` that computes them gives them,
    when they are the three outputs of one ``Split`` of it that nothing else reads but
    for its shape: the split's copy is saved."""
    q, k, v = node.inputs[:3]
    split = _producer(q, "Split")
    if split is None or k is None or v is None or list(split.outputs) != [q, k, v]:
        return False
    if split.attributes.get_int("axis", 0) != -1:
        return False
    readers = [u.node for o in split.outputs for u in o.uses() if u.node is not node]
    if any(r.op_type != "Shape" or r.attributes.get_int("start", 0) > 1 for r in readers):
        return False  # batch and length are the packed value's; the last axis is not
    if any(r.attributes.get_int("end", 2) > 2 for r in readers):
        return False
    packed = split.inputs[0]
    for reader in readers:
        reader.replace_input_with(0, packed)
    node.replace_input_with(0, packed)
    node.replace_input_with(1, None)
    node.replace_input_with(2, None)
    return True


def _split_heads(value: Any, heads: int) -> Any:
    """``z`` when ``value`` is ``Transpose(Reshape(z, (B, S, heads, Dh)), (0, 2, 1, 3))``
    with ``z`` of shape (B, S, heads * Dh): the heads of ``z`` split and moved forward."""
    transpose = _producer(value, "Transpose")
    if transpose is None or list(transpose.attributes.get_ints("perm", [])) != [0, 2, 1, 3]:
        return None
    reshape = _producer(transpose.inputs[0], "Reshape")
    if reshape is None:
        return None
    source, split = reshape.inputs[0], reshape.outputs[0].shape
    whole = source.shape
    if whole is None or split is None or len(whole) != 3 or len(split) != 4:
        return None
    if split[2] != heads or not isinstance(split[3], int) or whole[2] != heads * split[3]:
        return None
    return source


def _as_bsd(value: Any, heads: int, add: _Adder) -> Any:
    """``value`` (B, heads, S, Dh) as the (B, S, heads * Dh) ``GroupQueryAttention`` takes.

    The projection split into heads just before is used as it was, and a rotary
    embedding applied after the split is applied to the projection instead (onnxruntime's
    ``RotaryEmbedding`` takes both layouts): no transpose back and forth.
    """
    import onnx_ir as ir

    source = _split_heads(value, heads)
    if source is not None:
        return source
    rotary = value.producer()
    if (
        rotary is not None
        and rotary.op_type == "RotaryEmbedding"
        and rotary.domain == "com.microsoft"
    ):
        source = _split_heads(rotary.inputs[0], heads)
        if source is not None:
            attrs = {a.name: a.value for a in rotary.attributes.values()}
            attrs["num_heads"] = heads
            node = ir.node(
                "RotaryEmbedding", [source, *rotary.inputs[1:]], attributes=attrs,
                domain="com.microsoft",
            )  # fmt: skip
            add.nodes.append(node)
            return node.outputs[0]
    to_bsd = add.const(np.array([0, 0, -1], dtype=np.int64))
    return add("Reshape", [add("Transpose", [value], perm=[0, 2, 1, 3]), to_bsd])


class _Adder:
    """Appends the nodes it makes to ``nodes``; ``add(op, inputs, **attributes)`` returns
    the new node's output."""

    def __init__(self, nodes: list, prefix: str) -> None:
        self.nodes, self.prefix = nodes, prefix

    def __call__(self, op: str, inputs: list, **attributes: Any) -> Any:
        import onnx_ir as ir

        node = ir.node(op, inputs, attributes=attributes or None)
        self.nodes.append(node)
        return node.outputs[0]

    def const(self, array: Any) -> Any:
        import onnx_ir as ir

        value = self("Constant", [], value=ir.tensor(array))
        value.name = f"{self.prefix}_const{len(self.nodes)}"
        return value


def _remove_unused(graph: Any) -> None:
    """Drop nodes whose outputs nothing reads any more (the repeats, the old concat),
    then the initializers nothing reads."""
    outputs = set(graph.outputs)
    changed = True
    while changed:
        changed = False
        for node in reversed(list(graph)):
            if any(o in outputs or o.uses() for o in node.outputs):
                continue
            graph.remove(node, safe=True)
            changed = True
    for name, value in list(graph.initializers.items()):
        if not value.uses() and value not in outputs and value not in graph.inputs:
            graph.initializers.pop(name)


def rotary_tables_as_constants(model: Any, rows: int) -> int:
    """Replace the cos/sin tables ``GroupQueryAttention`` rotates with, which the graph
    computes at every call, by constant tables of ``rows`` positions; returns how many
    pairs of tables were replaced.

    The graph computes them for positions ``0 .. n-1`` (``Range``) with ``n`` one more
    than the largest position of the call: each decode step takes the cosine and sine of
    ``n`` times ``head_dim / 2`` angles, a cost that grows with the cache. Where every
    other input of that computation is a constant, the same nodes are run once by
    onnxruntime on ``arange(rows)`` and their outputs stored, so the values are the ones
    the graph computed, position for position. The operator refuses a call whose total
    length exceeds ``rows`` (``cos_cache dimension 0 shall not be less than
    total_sequence_length``): ``rows`` is the longest sequence the graph then serves,
    ``max_position_embeddings`` for a model that declares it. Tables computed from
    anything else than the positions (a scaling that depends on the length) are left as
    they are.
    """
    import onnx
    import onnx_ir as ir
    import onnxruntime

    graph = model.graph
    replaced: dict[tuple[int, int], tuple[Any, Any]] = {}
    count = 0
    for node in list(graph):
        if node.op_type != "GroupQueryAttention" or node.domain != "com.microsoft":
            continue
        inputs = list(node.inputs)
        if len(inputs) < 9 or inputs[7] is None or inputs[8] is None:
            continue
        cos, sin = inputs[7], inputs[8]
        key = (id(cos), id(sin))
        if key not in replaced:
            found = _table_computation([cos, sin], graph)
            if found is None:
                continue
            positions, dtype, nodes = found
            proto = onnx.helper.make_model(
                onnx.helper.make_graph(
                    [ir.serde.serialize_node(n) for n in nodes],
                    "rotary_tables",
                    [onnx.helper.make_tensor_value_info(positions.name, dtype, [None])],
                    [onnx.helper.make_empty_tensor_value_info(v.name) for v in (cos, sin)],
                    [_named_tensor(v) for v in _constant_leaves(nodes)],
                ),
                opset_imports=[
                    onnx.helper.make_opsetid(domain, version)
                    for domain, version in model.opset_imports.items()
                ],
            )
            session = onnxruntime.InferenceSession(
                proto.SerializeToString(), providers=["CPUExecutionProvider"]
            )
            arange = np.arange(rows, dtype=onnx.helper.tensor_dtype_to_np_dtype(dtype))
            tables = session.run(None, {positions.name: arange})
            values = []
            for name, table in zip(("cos", "sin"), tables, strict=True):
                value = ir.Value(
                    name=f"rotary_{name}_table_{len(replaced)}",
                    const_value=ir.tensor(np.ascontiguousarray(table)),
                )
                value.shape, value.type = (
                    ir.Shape(table.shape),
                    ir.TensorType(ir.DataType.from_numpy(table.dtype)),
                )
                graph.register_initializer(value)
                values.append(value)
            replaced[key] = (values[0], values[1])
        node.replace_input_with(7, replaced[key][0])
        node.replace_input_with(8, replaced[key][1])
        count += 1
    if count:
        _remove_unused(graph)
    return len(replaced) if count else 0


def _table_computation(outputs: list, graph: Any) -> tuple[Any, int, list] | None:
    """``(positions, their ONNX element type, nodes)`` when ``outputs`` are computed by
    ``nodes`` from the output of one ``Range(0, n, 1)`` (``positions``) and constants
    alone, else None."""
    nodes: dict[int, Any] = {}
    positions = None
    stack = list(outputs)
    while stack:
        value = stack.pop()
        if value is None or value.const_value is not None:
            continue
        producer = value.producer()
        if producer is None:
            return None  # a graph input reached other than through the positions
        if producer.op_type == "Range" and producer.domain in ("", "ai.onnx"):
            if _const_int(producer.inputs[0]) != 0 or _const_int(producer.inputs[2]) != 1:
                return None
            if positions is not None and positions is not value:
                return None
            positions = value
            continue
        if id(producer) not in nodes:
            nodes[id(producer)] = producer
            stack.extend(producer.inputs)
    if positions is None:
        return None
    start = positions.producer().inputs[0]  # a constant: its type is the positions'
    dtype = positions.dtype or start.const_value.dtype
    order = {id(n): i for i, n in enumerate(graph)}
    return positions, int(dtype), sorted(nodes.values(), key=lambda n: order.get(id(n), 0))


def _named_tensor(value: Any) -> Any:
    """The constant of ``value`` as a TensorProto under the value's name, its data inline
    (a side file of the model would not be found from a model built in memory)."""
    import onnx_ir as ir

    proto = ir.serde.serialize_tensor(ir.tensor(value.const_value.numpy()))
    proto.name = value.name
    return proto


def _constant_leaves(nodes: list) -> list:
    """The constant inputs of ``nodes`` (initializers, outputs of ``Constant`` nodes the
    walk stopped at), once each."""
    seen: dict[int, Any] = {}
    for node in nodes:
        for value in node.inputs:
            if value is not None and value.const_value is not None:
                seen.setdefault(id(value), value)
    return list(seen.values())


def rotary_frequencies_as_matmul(model: Any) -> int:
    """Rewrite rotary frequencies computed as a broadcast product into the product of
    matrices onnxscript's cos/sin-cache fusion recognises; returns how many.

    The exported graph computes them as ``Mul(Cast(Unsqueeze(positions)), inv_freq)``
    with ``positions`` (S,) or (B, S) unsqueezed to (.., S, 1) and ``inv_freq`` a constant
    (E,); the fusion reads ``Transpose(MatMul(inv_freq (1, E, 1), positions (.., 1, S)))``.
    Both give the same (.., S, E) values: each is one product per position and frequency.
    """
    import onnx_ir as ir

    graph = model.graph
    count = 0
    for node in list(graph):
        if node.op_type != "Mul" or node.domain not in ("", "ai.onnx") or len(node.inputs) != 2:
            continue
        for positions, freqs in (node.inputs, reversed(node.inputs)):
            if freqs is None or freqs.const_value is None or positions is None:
                continue
            table = freqs.const_value.numpy()
            if table.ndim != 1 or table.dtype != np.float32:
                continue
            cast = _producer(positions, "Cast")
            unsqueeze = _producer(cast.inputs[0], "Unsqueeze") if cast else None
            if unsqueeze is None or cast.attributes.get_int("to", 0) != ir.DataType.FLOAT:
                continue
            source = unsqueeze.inputs[0]
            axes = unsqueeze.inputs[1].const_value if len(unsqueeze.inputs) > 1 else None
            rank = len(source.shape) if source.shape is not None else None
            if axes is None or rank not in (1, 2):
                continue
            # (S,) -> (1, S, 1) or (B, S) -> (B, S, 1): the positions along the middle axis
            expected = [0, 2] if rank == 1 else [2]
            if sorted(int(a) % (rank + len(expected)) for a in axes.numpy().ravel()) != expected:
                continue
            new_nodes: list = []
            add = _Adder(new_nodes, f"{node.name}_rotary")
            rows = add.const(np.array([0, 1] if rank == 1 else [1], dtype=np.int64))
            as_row = add("Cast", [add("Unsqueeze", [source, rows])], to=ir.DataType.FLOAT)
            column = add.const(table.reshape(1, -1, 1))
            angles = add("Transpose", [add("MatMul", [column, as_row])], perm=[0, 2, 1])
            graph.insert_before(node, new_nodes)
            angles.shape, angles.type = node.outputs[0].shape, node.outputs[0].type
            ir.convenience.replace_all_uses_with(node.outputs[0], angles)
            count += 1
            break
    if count:
        _remove_unused(graph)
    return count


def rotary_positions_per_row(model: Any) -> int:
    """Give each ``RotaryEmbedding`` node positions of shape (B, S); returns how many.

    onnxscript's cos/sin-cache fusion passes positions computed once for the batch as
    (1, S), and onnxruntime's operator refuses them for a batch of more than one row.
    They are broadcast to the batch of the rotated input, the same positions in every row.
    """
    import onnx_ir as ir

    graph = model.graph
    count = 0
    expanded: dict[int, Any] = {}  # made once for the nodes that share positions
    for node in list(graph):
        if node.op_type != "RotaryEmbedding" or node.domain != "com.microsoft":
            continue
        x, positions = node.inputs[0], node.inputs[1]
        shape = positions.shape if positions is not None else None
        if shape is None or len(shape) != 2 or shape[0] != 1:
            continue
        if id(positions) in expanded:
            node.replace_input_with(1, expanded[id(positions)])
            count += 1
            continue
        new_nodes: list = []
        add = _Adder(new_nodes, f"{node.name}_positions")
        rows = add("Shape", [x], start=0, end=1)
        size = add("Concat", [rows, add("Shape", [positions], start=1, end=2)], axis=0)
        per_row = add("Expand", [positions, size])
        graph.insert_before(node, new_nodes)
        per_row.shape = ir.Shape([x.shape[0] if x.shape is not None else None, shape[1]])
        per_row.type = positions.type
        expanded[id(positions)] = per_row
        node.replace_input_with(1, per_row)
        count += 1
    return count


def gemm_inputs_as_matrices(model: Any) -> int:
    """Give ``Gemm`` nodes the matrix their first input was before the fusions; returns
    how many.

    onnxscript's attention fusion replaces the attention's output of (B, S, H*Dh) rows
    and the ``Reshape`` that flattens it for a ``Gemm`` (GPT-2's projections are
    ``addmm``) by the fused operator's (B, S, H*Dh) output, which ``Gemm`` refuses: its
    first input must have rank 2. The rows are flattened again, (B*S, H*Dh), what the
    ``Gemm`` read in the plain graph.
    """
    graph = model.graph
    count = 0
    for node in list(graph):
        if node.op_type != "Gemm" or node.domain not in ("", "ai.onnx"):
            continue
        a, b = node.inputs[0], node.inputs[1]
        producer = a.producer()
        fused = producer is not None and producer.domain == "com.microsoft"
        if not (fused or (a.shape is not None and len(a.shape) != 2)):
            continue
        if node.attributes.get_int("transA", 0) or b.shape is None or len(b.shape) != 2:
            continue
        inner = b.shape[1] if node.attributes.get_int("transB", 0) else b.shape[0]
        if not isinstance(inner, int):
            continue
        new_nodes: list = []
        add = _Adder(new_nodes, f"{node.name}_rows")
        rows = add("Reshape", [a, add.const(np.array([-1, inner], dtype=np.int64))])
        graph.insert_before(node, new_nodes)
        node.replace_input_with(0, rows)
        count += 1
    return count
