"""Swin Transformers (swin, swinv2, donut-swin): windowed attention over stages that
double the width."""

from __future__ import annotations

from . import Family, register

_HEADS = (
    {"num_heads": [2, 4]},
    "the generic shrinking keeps the checkpoint's heads per stage (3 and 6) with a width "
    "of 64 then 128, which three heads do not divide: two then four heads of 32",
)

register(
    Family(
        name="swin",
        model_types=("swin", "swinv2", "donut-swin"),
        config_fixes={"swin": _HEADS, "swinv2": _HEADS, "donut-swin": _HEADS},
    )
)
