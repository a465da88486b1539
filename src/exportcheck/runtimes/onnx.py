"""onnx: ``torch.onnx.export`` of the ExportedProgram, run with onnxruntime on CPU.

:func:`ort_feeds` feeds nested inputs (caches included) to an onnxruntime session.
"""

from __future__ import annotations

import collections
import copy
import os
from collections.abc import Sequence
from typing import Any

import torch
import torch.utils._pytree as pytree

from ..caches.pytrees import cache_pytrees
from . import Runtime, register

__all__ = ["OnnxRuntime", "ort_feeds"]


def _input_names(session: Any) -> list[str]:
    if hasattr(session, "get_inputs"):
        return [i.name for i in session.get_inputs()]
    names_given = isinstance(session, Sequence) and not isinstance(session, str)
    if names_given and all(isinstance(n, str) for n in session):
        return list(session)
    raise TypeError(
        "ort_feeds: expected an onnxruntime.InferenceSession or a list of input names, "
        f"got {type(session).__name__}."
    )


def ort_feeds(session: Any, inputs: Any) -> dict[str, Any]:
    """The ``{name: numpy array}`` dictionary ``session.run`` takes for ``inputs``.

    :param session: an ``onnxruntime.InferenceSession`` (or the list of its input names)
        of a model exported from the same structure of inputs
    :param inputs: what the PyTorch model was called with: a dict of keyword arguments,
        a tuple of positional ones, nested lists, transformers caches

    The inputs are flattened as ``torch.onnx.export`` flattened them (caches through
    :func:`exportcheck.cache_pytrees`, in the order of their key paths); values that are
    not tensors (``use_cache=True``) are not graph inputs and are dropped. Tensors are
    detached and moved to the CPU.

    >>> import torch
    >>> from exportcheck import make_dynamic_cache, ort_feeds
    >>> cache = make_dynamic_cache([(torch.zeros(1, 1, 3, 4), torch.ones(1, 1, 3, 4))])
    >>> feeds = ort_feeds(["input_ids", "key_0", "value_0"], dict(input_ids=torch.ones(1, 1), cache=cache))
    >>> {k: v.shape for k, v in feeds.items()}
    {'input_ids': (1, 1), 'key_0': (1, 1, 3, 4), 'value_0': (1, 1, 3, 4)}
    """
    names = _input_names(session)
    with cache_pytrees():
        leaves = pytree.tree_leaves(inputs)
    tensors = [t for t in leaves if isinstance(t, torch.Tensor)]
    if len(tensors) != len(names):
        raise ValueError(
            f"ort_feeds: the ONNX model has {len(names)} inputs ({', '.join(names[:6])}"
            f"{', ...' if len(names) > 6 else ''}) but the inputs flatten into "
            f"{len(tensors)} tensors; pass the inputs the model was exported with, "
            "with the same number of cache layers."
        )
    return {n: t.detach().cpu().numpy() for n, t in zip(names, tensors, strict=True)}


def onnx_summary(path: str) -> dict[str, Any]:
    """Node count, operator histogram, size on disk, input and output names of an ONNX file."""
    import onnx

    proto = onnx.load(path, load_external_data=False)
    ops = collections.Counter(node.op_type for node in proto.graph.node)
    folder = os.path.dirname(path)
    stem = os.path.basename(path)
    size = sum(
        os.path.getsize(os.path.join(folder, f)) for f in os.listdir(folder) if f.startswith(stem)
    )
    return {
        "nodes": len(proto.graph.node),
        "op_types": dict(ops.most_common()),
        "bytes": size,
        "inputs": [i.name for i in proto.graph.input],
        "outputs": [o.name for o in proto.graph.output],
    }


class OnnxRuntime(Runtime):
    """``torch.onnx.export(program, dynamo=True)``, then an onnxruntime CPU session."""

    name = "onnx"
    runner = "ort"
    title = "onnxruntime"
    stages = (
        ("onnx", "ONNX conversion", ("convert",)),
        ("ort_session", "onnxruntime session", ("load",)),
        ("ort_run", "onnxruntime correct on every input set", ("run",)),
    )

    def convert(self, program: Any, component: Any, folder: str) -> Any:
        path = os.path.join(folder, f"{component.name}.onnx")
        torch.onnx.export(
            program, (), path, kwargs=copy.deepcopy(component.input_sets[0]), dynamo=True
        )
        return path

    def load(self, artifact: Any) -> Any:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3
        return onnxruntime.InferenceSession(artifact, options, providers=["CPUExecutionProvider"])

    def run(self, loaded: Any, feeds: dict[str, Any]) -> Any:
        return loaded.run(None, ort_feeds(loaded, feeds))

    def step(self, loaded: Any, feeds: dict[str, Any], program: Any) -> Any:
        """onnxruntime's flat outputs rebuilt into the structure the ExportedProgram
        returns (``call_spec.out_spec``), caches included."""
        import numpy as np

        flat = self.run(loaded, feeds)
        spec = program.call_spec.out_spec
        with cache_pytrees():
            if spec.num_leaves != len(flat):
                raise ValueError(
                    f"onnxruntime returned {len(flat)} outputs but the exported program "
                    f"returns {spec.num_leaves} leaves: cannot rebuild its outputs."
                )
            tensors = [torch.from_numpy(np.asarray(a)) for a in flat]
            return pytree.tree_unflatten(tensors, spec)

    def details(self, artifact: Any) -> dict[str, Any]:
        return onnx_summary(artifact)

    def describe(self, details: dict[str, Any]) -> str:
        top = ", ".join(f"{k}:{v}" for k, v in list(details["op_types"].items())[:6])
        return f"{details['nodes']} nodes, {details['bytes'] / 2**20:.1f} MiB, {top}"


register(OnnxRuntime(), exporter="onnx")
