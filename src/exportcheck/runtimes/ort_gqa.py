"""ort_gqa: attention over a growing cache rewritten as onnxruntime's
``GroupQueryAttention``, the mask kept.

onnxscript's fusions turn the attention of a decoder into ``MultiHeadAttention``. Its
keys and values are the cache concatenated with the new ones and, when there are fewer
key/value heads than query heads, repeated for every query head: each decode step copies
the whole cache once more per repeat. ``GroupQueryAttention`` takes the cache and the new
keys apart, appends them itself and reads each cached key once for its group of query
heads.

onnxscript's own fusion into it drops the attention mask (it derives the sequence lengths
from the positions, which holds for a batch without padding only) and needs a rotary
embedding it can fuse. :func:`mha_to_gqa` keeps the graph's additive mask as
``attention_bias`` instead, and takes every batch row's cache as full
(``seqlens_k = total - 1``, ``query_seqlens`` the new length): the mask, not the lengths,
says which keys count, so left-padded batches give what the plain graph gives. The
operator runs causal (onnxruntime takes several new tokens over a cache in a batch only
so), which the mask already is; the one difference is on query rows whose every key is
masked, a padded position of a prompt, where the plain graph averages over every key and
the operator over the earlier ones: values no later token reads. The rotary embedding
stays where it is, applied before.

The rewrite is structural. It applies to a ``MultiHeadAttention`` node whose key and
value are ``Concat(past, new, axis=2)`` of a graph input, repeated or not, with only a
mask besides; it leaves every other node as it was.
"""

from __future__ import annotations

from typing import Any

__all__ = ["mha_to_gqa"]


def _producer(value: Any, op_type: str) -> Any:
    node = value.producer() if value is not None else None
    if node is None or node.op_type != op_type or node.domain not in ("", "ai.onnx"):
        return None
    return node


def _cache_concat(value: Any, graph: Any) -> tuple[Any, int] | None:
    """``(concat node, repeats)`` when ``value`` (B, T, H*Dh) is a cache of (B, Hkv, T, Dh)
    concatenated with the new keys, then repeated ``H / Hkv`` times per head."""
    reshape = _producer(value, "Reshape")
    transpose = _producer(reshape.inputs[0], "Transpose") if reshape else None
    if transpose is None or list(transpose.attributes.get_ints("perm", [])) != [0, 2, 1, 3]:
        return None
    source = transpose.inputs[0]
    concat = _producer(source, "Concat")
    repeats = 1
    if concat is None:
        # repeat_kv: Reshape(Expand(Unsqueeze(x, [2]), (B, Hkv, n, T, Dh)), (B, H, T, Dh))
        merge = _producer(source, "Reshape")
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
    attend over a cache into ``GroupQueryAttention``; returns how many were rewritten."""
    import numpy as np
    import onnx_ir as ir

    graph = model.graph
    rewritten = 0
    for node in list(graph):
        if node.op_type != "MultiHeadAttention" or node.domain != "com.microsoft":
            continue
        inputs = list(node.inputs) + [None] * (10 - len(node.inputs))
        query, key, value, bias, padding, mask = inputs[:6]
        if bias is not None or padding is not None or any(v is not None for v in inputs[6:]):
            continue
        if mask is None or len(node.outputs) != 1:
            continue
        found_k, found_v = _cache_concat(key, graph), _cache_concat(value, graph)
        if found_k is None or found_v is None:
            continue
        (concat_k, rep_k), (concat_v, rep_v) = found_k, found_v
        past_key, new_key = concat_k.inputs
        past_value, new_value = concat_v.inputs
        heads = node.attributes.get_int("num_heads", 0)
        kv_shape = past_key.shape
        if rep_k != rep_v or kv_shape is None or not isinstance(kv_shape[1], int):
            continue
        kv_heads = kv_shape[1]
        if heads != kv_heads * rep_k:
            continue

        new_nodes: list = []
        add = _Adder(new_nodes, f"{node.name}_gqa")
        to_bsd = add.const(np.array([0, 0, -1], dtype=np.int64))
        key_bsd = add("Reshape", [add("Transpose", [new_key], perm=[0, 2, 1, 3]), to_bsd])
        value_bsd = add("Reshape", [add("Transpose", [new_value], perm=[0, 2, 1, 3]), to_bsd])
        # every row's cache is full: the mask, not seqlens_k, says which keys count
        past_len = add("Shape", [past_key], start=2, end=3)
        new_len = add("Shape", [query], start=1, end=2)
        total = add("Cast", [add("Add", [past_len, new_len])], to=ir.DataType.INT32)
        last = add("Sub", [total, add.const(np.array([1], dtype=np.int32))])
        batch = add("Shape", [query], start=0, end=1)
        seqlens_k = add("Expand", [last, batch])
        total_scalar = add("Squeeze", [total])
        query_seqlens = add("Expand", [add("Cast", [new_len], to=ir.DataType.INT32), batch])
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
        for old, new in ((concat_k.outputs[0], present_key), (concat_v.outputs[0], present_value)):
            name = old.name
            old.name = f"{name}_replaced"
            new.name, new.shape, new.type = name, old.shape, old.type
            ir.convenience.replace_all_uses_with(old, new, replace_graph_outputs=True)
        graph.remove(node, safe=True)
        rewritten += 1
    if rewritten:
        _remove_unused(graph)
        graph.sort()
    return rewritten


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
    """Drop nodes whose outputs nothing reads any more (the repeats, the old concat)."""
    outputs = set(graph.outputs)
    changed = True
    while changed:
        changed = False
        for node in reversed(list(graph)):
            if any(o in outputs or o.uses() for o in node.outputs):
                continue
            graph.remove(node, safe=True)
            changed = True
