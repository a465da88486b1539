"""Feed nested inputs (caches included) to an onnxruntime session."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.utils._pytree as pytree

from .pytrees import cache_pytrees

__all__ = ["ort_feeds"]


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
