"""Muse Spark and Muse Glimmer: a vision adapter between the tower and the projection."""

from __future__ import annotations

from typing import Any

import torch

from ..patches import Patch
from ..patches.core import passthrough
from . import Family, register

# onnxscript's rewriter (0.7.2) removes ``Add(x, c)`` as a no-op when
# ``math.isclose(c, 0, abs_tol=1e-8)``: an epsilon of 1e-8 or less is dropped.
_DROPPED_EPS = 1e-8


def _eps_as_tensor(eps: float, like: torch.Tensor) -> torch.Tensor:
    """``eps`` as a one-element tensor: the same sum, but not a scalar the rewriter
    compares with 0."""
    return torch.full((1,), eps, dtype=like.dtype, device=like.device)


def _rsqrt_norm(self, x):
    """``x * rsqrt(mean(x ** 2) + eps)`` (Centered and InputScaled RMS norms)."""
    if self.eps > _DROPPED_EPS:
        return passthrough(_rsqrt_norm.original, self, x)
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + _eps_as_tensor(self.eps, x))


def _pow_norm(self, hidden_states):
    """``x * pow(mean(x ** 2) + eps, -0.5)`` (the plain RMS norm, with or without scale)."""
    if self.eps > _DROPPED_EPS:
        return passthrough(_pow_norm.original, self, hidden_states)
    mean_squared = hidden_states.pow(2).mean(-1, keepdim=True) + _eps_as_tensor(
        self.eps, hidden_states
    )
    return hidden_states * torch.pow(mean_squared, -0.5)


def _install_muse_norm_eps_tensor(patcher: Any, model: Any) -> None:
    """Add the RMS norms' epsilon as a one-element tensor, so the ONNX graph keeps it.

    Fixes: muse_glimmer's decoder in onnxruntime 1.05e-4 from eager on the left-padded
    set and 2.3e-4 on the set at the bounds (``ort differs from eager beyond 0.0001``).
    The post-attention and post-feedforward norms divide by
    ``sqrt(mean(x ** 2) + post_norm_eps)`` with ``post_norm_eps = 1e-8``; onnxscript
    0.7.2's no-op rule ``add_0`` (``x + 0 -> x``) matches its constants with
    ``math.isclose(c, 0, abs_tol=1e-8)``, which float32 1e-8 satisfies, so the exported
    ONNX graph computes ``Reciprocal(Sqrt(mean))`` without the epsilon. With
    ``mean(x ** 2)`` near 3e-4 (the attention output of the tiny model) the scale is off
    by ``eps / (2 * mean)``, 1.6e-5 relative, which the residual stream and two layers
    carry to 2.3e-4 in the logits (and an all-zero row gives NaN instead of 0). A
    ``[1]``-shaped epsilon is the same float32 sum in eager (bit for bit), and the rule
    only matches a scalar constant.

    Remove when: onnxscript's no-op rules compare constants with 0 exactly.
    """
    for module, owners in (
        (
            "transformers.models.muse_glimmer.modeling_muse_glimmer",
            (("MuseGlimmerTextCenteredRMSNorm", _rsqrt_norm), ("MuseGlimmerRMSNorm", _pow_norm)),
        ),
        (
            "transformers.models.muse_spark.modeling_muse_spark",
            (
                ("MuseSparkTextCenteredRMSNorm", _rsqrt_norm),
                ("MuseSparkTextInputScaledRMSNorm", _rsqrt_norm),
                ("MuseSparkRMSNorm", _pow_norm),
            ),
        ),
    ):
        for owner, replacement in owners:
            patcher.replace_in(module, owner, "_norm", replacement)


MUSE_NORM_EPS_TENSOR = Patch(
    name="muse_norm_eps_tensor",
    fixes="ort differs from eager beyond 0.0001: the ONNX graph drops the norm's "
    "epsilon 1e-8 (onnxscript's add_0 rule matches 1e-8 as 0)",
    remove_when="onnxscript's no-op rules compare constants with 0 exactly",
    install=_install_muse_norm_eps_tensor,
    runtimes=("onnx",),
    model_types=("muse_spark", "muse_glimmer"),
)

_ADAPTER = (
    {"out_hidden_size": 256, "projector_hidden_size": 128},
    "the vision adapter reads the tower's merged rows, vision_config.hidden_size times "
    "merge_size ** 2 wide (published: 1536 x 4 = out_hidden_size 6144), and widens them "
    "to projector_hidden_size (4096); the shrinking leaves both top-level widths at the "
    "published values while the tiny tower is 64 wide: 64 x 4 = 256 in, 128 out",
)

register(
    Family(
        name="muse",
        model_types=("muse_spark", "muse_glimmer"),
        config_fixes={"muse_spark": _ADAPTER, "muse_glimmer": _ADAPTER},
        patches=(MUSE_NORM_EPS_TENSOR,),
    )
)
