"""Aria: a projector whose query count is looked up from the vision encoder's patch count."""

from __future__ import annotations

from . import Family, register

register(
    Family(
        name="aria",
        model_types=("aria",),
        config_fixes={
            "aria": (
                {
                    "projector_patch_to_query_dict": {49: 16},
                    "max_value_projector_patch_to_query_dict": 16,
                },
                "the projector cross-attends as many learned queries as "
                "projector_patch_to_query_dict gives the image's patch count, a table of the "
                "published resolutions (1225 patches -> 128 queries, 4900 -> 256); the tiny "
                "vision config (224 pixels, patches of 32) has 49 patches, which get 16 queries "
                "(the query table sized to match)",
            )
        },
    )
)
