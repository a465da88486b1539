"""Muse Spark and Muse Glimmer: a vision adapter between the tower and the projection."""

from __future__ import annotations

from . import Family, register

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
    )
)
