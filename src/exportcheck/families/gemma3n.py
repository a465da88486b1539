"""Gemma 3n: activation sparsity whose cutoff is an inverse error function of a constant."""

from __future__ import annotations

import statistics
import sys
from typing import Any

import torch

from ..patches import Patch
from . import Family, register


def _install_gemma3n_sparsity_constant(patcher: Any, model: Any) -> None:
    """Compute Gemma 3n's activation-sparsity cutoff multiplier before export, as a constant.

    Fixes: ``torch.onnx.export`` of gemma3n / gemma3n_text fails with
    ``DispatchError: No ONNX function found for <OpOverload(op='prims.erf_inv', ...)>``:
    Gemma3nTextMLP._gaussian_topk (transformers/models/gemma3n/modeling_gemma3n.py:967-968)
    computes ``Normal(0, 1).icdf(torch.tensor(activation_sparsity))`` inside forward, so the
    inverse error function of a config constant lands in the graph, and ONNX has no Erfinv.
    The multiplier is computed here, eagerly and with the same float32 torch code, for every
    sparsity value of the model's MLPs, and enters the graph as a float32 scalar: the same
    numbers.

    Remove when: the ONNX exporter translates erf_inv (or folds constants before
    translation), or transformers precomputes the multiplier.
    """
    module = sys.modules.get("transformers.models.gemma3n.modeling_gemma3n")
    cls = getattr(module, "Gemma3nTextMLP", None) if module is not None else None
    if cls is None:
        return

    def multiplier(p):
        return float(
            torch.distributions.normal.Normal(0, 1).icdf(torch.tensor(p, dtype=torch.float32))
        )

    table = {}
    for m in model.modules() if model is not None else ():
        p = getattr(m, "activation_sparsity", 0.0)
        if isinstance(m, cls) and p > 0.0:
            table[p] = multiplier(p)

    def _gaussian_topk(self, inputs):
        p = self.activation_sparsity
        # float32 value as a Python float; if unseen, float64 then rounded to float32
        value = table.get(p)
        if value is None:
            value = float(torch.tensor(statistics.NormalDist().inv_cdf(p), dtype=torch.float32))
        std_multiplier = torch.tensor(value, dtype=torch.float32).type(inputs.dtype)
        inputs_mean = torch.mean(inputs, dim=-1, keepdim=True)
        inputs_std = torch.std(inputs, dim=-1, keepdim=True, unbiased=False)
        cutoff_x = inputs_mean + inputs_std * std_multiplier
        return torch.nn.functional.relu(inputs - cutoff_x)

    patcher.replace(cls, "_gaussian_topk", _gaussian_topk)


GEMMA3N_SPARSITY_CONSTANT = Patch(
    name="gemma3n_sparsity_constant",
    fixes="DispatchError: No ONNX function found for <OpOverload(op='prims.erf_inv', ...)>",
    remove_when="the ONNX exporter translates erf_inv (or folds constants before translation), "
    "or transformers precomputes the multiplier",
    install=_install_gemma3n_sparsity_constant,
    runtimes=("onnx",),
    model_types=("gemma3n", "gemma3n_text"),
)


register(
    Family(
        name="gemma3n",
        model_types=("gemma3n", "gemma3n_text"),
        known_failures={
            "gemma3n": (
                "timm",
                "the vision tower is a timm model and timm is not a dependency of exportcheck",
            )
        },
        patches=(GEMMA3N_SPARSITY_CONSTANT,),
    )
)
