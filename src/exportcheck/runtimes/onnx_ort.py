"""onnx_ort: the ONNX graph rewritten with onnxruntime's fused operators, then run with
onnxruntime on CPU.

The fusions are onnxscript's for onnxruntime (:func:`onnxscript.rewriter.ort_fusions.
optimize_for_ort`): attention into ``MultiHeadAttention`` or ``GroupQueryAttention``,
rotary embeddings into ``RotaryEmbedding``, ``SkipLayerNormalization``,
``SkipSimplifiedLayerNormalization``, ``BiasGelu``, ...; then attention over a cache into
``GroupQueryAttention`` with the graph's mask kept (:func:`.ort_gqa.mha_to_gqa`); then
the projections that read one input packed into one ``MatMul``
(:func:`.ort_pack.pack_shared_matmuls`), and the rotary embedding moved into
``GroupQueryAttention`` with the packed queries, keys and values
(:func:`.ort_gqa.rotary_into_gqa`). The fused graph is validated like
the plain one: every input set against eager, and the generation loop. It is not part of
``--exporter onnx``; ``validate(runtimes=...)`` or ``exportcheck validate --optimize ort``
adds it beside the plain graph, so a row shows both.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from typing import Any

from . import EXPORTERS, register
from .onnx import OnnxRuntime, onnx_summary
from .ort_gqa import (
    gemm_inputs_as_matrices,
    mha_to_gqa,
    rotary_frequencies_as_matmul,
    rotary_into_gqa,
    rotary_positions_per_row,
    rotary_tables_as_constants,
)
from .ort_pack import pack_shared_matmuls

__all__ = ["FUSIONS_KEY", "OnnxFusedRuntime", "fuse_for_ort"]

#: the metadata key of a fused model that records how many of each fusion were applied
FUSIONS_KEY = "exportcheck.ort_fusions"


def fuse_for_ort(source: str, target: str, rotary_rows: int | None = None) -> dict[str, int]:
    """Rewrite the ONNX model at ``source`` with onnxruntime's fused operators and save it
    at ``target``; returns the number of each fusion applied (also stored in the model's
    metadata under :data:`FUSIONS_KEY`).

    ``rotary_rows``: store the rotary cos/sin tables ``GroupQueryAttention`` reads as
    constants of that many positions instead of computing them at every call
    (:func:`.ort_gqa.rotary_tables_as_constants`); the graph then refuses longer
    sequences. ``None`` (the default, and what validation checks) keeps them computed.
    """
    import onnx_ir
    from onnxscript.rewriter.ort_fusions import optimize_for_ort

    model = onnx_ir.load(source)
    # weights the source keeps in a side file go to one beside the target: saved as is,
    # the target would point at a file that is not in its folder
    external = any(
        isinstance(v.const_value, onnx_ir.ExternalTensor) for v in model.graph.initializers.values()
    )
    rewritten = rotary_frequencies_as_matmul(model)
    with _without_onnxscript_gqa():
        model, counts = optimize_for_ort(model)
    rotary_positions_per_row(model)
    counts["group_query_attention"] = mha_to_gqa(model)
    counts["rotary_frequencies_as_matmul"] = rewritten
    counts["packed_matmul"] = pack_shared_matmuls(model)
    counts["rotary_in_group_query_attention"] = rotary_into_gqa(model)
    if rotary_rows is not None:
        counts["rotary_tables_as_constants"] = rotary_tables_as_constants(model, rotary_rows)
    gemm_inputs_as_matrices(model)  # a repair, not a fusion: not counted
    applied = {name: int(n) for name, n in sorted(counts.items()) if n}
    model.metadata_props[FUSIONS_KEY] = json.dumps(applied)
    data = os.path.basename(target) + ".data" if external else None
    onnx_ir.save(model, target, external_data=data)
    return applied


@contextlib.contextmanager
def _without_onnxscript_gqa() -> Iterator[None]:
    """onnxscript's fusion into ``GroupQueryAttention`` left out for the call.

    It replaces the attention mask by lengths derived from the positions of the first
    row (onnxscript 0.7.2): a padded batch, or any batch of more than one row, gives
    other values or an error. :func:`.ort_gqa.mha_to_gqa` makes the same operator from
    the ``MultiHeadAttention`` the other fusions leave, with the mask kept.
    """
    from onnxscript.rewriter.ort_fusions import _core

    if not hasattr(_core, "fuse_gqa"):
        raise RuntimeError(
            "onnxscript.rewriter.ort_fusions._core has no fuse_gqa: this onnxscript is "
            "not the one exportcheck's constraints pin (constraints/ci.txt); install it."
        )
    original = _core.fuse_gqa
    _core.fuse_gqa = lambda model, **kwargs: 0
    try:
        yield
    finally:
        _core.fuse_gqa = original


class OnnxFusedRuntime(OnnxRuntime):
    """The ONNX conversion, fused for onnxruntime, in an onnxruntime CPU session."""

    name = "onnx_ort"
    runner = "fused"
    title = "onnxruntime, fused"
    patched_as = "onnx"
    stages = (
        ("fuse", "ONNX conversion fused for onnxruntime", ("convert",)),
        ("fused_session", "onnxruntime session of the fused graph", ("load",)),
        ("fused_run", "fused graph correct on every input set", ("run",)),
    )

    def convert(self, program: Any, component: Any, folder: str) -> Any:
        # converted again, not read from the plain runtime's file: a folder given with
        # --save may hold one from an earlier run
        with tempfile.TemporaryDirectory(prefix="exportcheck-") as tmp:
            plain = super().convert(program, component, tmp)
            fused = os.path.join(folder, f"{component.name}.fused.onnx")
            fuse_for_ort(plain, fused)
        return fused

    def details(self, artifact: Any) -> dict[str, Any]:
        import onnx

        summary = onnx_summary(artifact)
        proto = onnx.load(artifact, load_external_data=False)
        meta = {p.key: p.value for p in proto.metadata_props}
        summary["fusions"] = json.loads(meta.get(FUSIONS_KEY, "{}"))
        return summary

    def describe(self, details: dict[str, Any]) -> str:
        fusions = details.get("fusions") or {}
        applied = ", ".join(f"{k}:{v}" for k, v in fusions.items()) or "no fusion applied"
        return f"{super().describe(details)}; fusions {applied}"


register(OnnxFusedRuntime())

# ``--exporter fused`` (a sweep of the fused graph alone): the ExportedProgram, then its
# fused ONNX conversion; the plain one is what ``--exporter onnx`` validates
EXPORTERS["fused"] = ("exported_program", "onnx_ort")
