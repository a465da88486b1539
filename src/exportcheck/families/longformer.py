"""Longformer: sliding-window attention, and global attention chosen by the mask's values."""

from __future__ import annotations

from . import Family, register

_GLOBAL_ATTENTION = (
    r"Could not guard on data-dependent expression Eq\(u\d+, 1\)",
    "data-dependent control flow: LongformerEncoder.forward "
    "(transformers/models/longformer/modeling_longformer.py:1175) computes "
    "is_global_attn = is_index_global_attn.flatten().any().item(), whether any token of "
    "the batch has global attention (attention_mask == 2), and every layer branches on it "
    "(modeling_longformer.py:549, 591, 611); the global branch sizes its tensors by the "
    "largest number of global tokens of a row, also read from the data. torch.export "
    "cannot guard on the value (a plain mask has no global token, another mask has), and "
    "declaring shapes does not help: it is a value, not a shape. The config fix "
    "onnx_export=True removes the first such error, in _chunk",
)

register(
    Family(
        name="longformer",
        model_types=("longformer",),
        config_fixes={
            "longformer": (
                {"onnx_export": True},
                "LongformerSelfAttention._chunk (modeling_longformer.py:703) views its "
                "input with torch.div of the length, a tensor, which torch.export turns "
                "into a data-dependent size ('Could not guard on data-dependent expression "
                "Eq(u1, 1)'); onnx_export=True, the config's own switch for exports, "
                "chunks the same values with Python sizes",
            )
        },
        task_known_failures={
            "fill-mask": {"longformer": _GLOBAL_ATTENTION},
            "feature-extraction": {"longformer": _GLOBAL_ATTENTION},
        },
    )
)
