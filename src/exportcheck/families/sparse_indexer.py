"""Sparse-attention models with an indexer: a top-k small enough to select after shrinking."""

from __future__ import annotations

from . import Family, register

register(
    Family(
        name="sparse_indexer",
        model_types=(
            "axk2",
            "deepseek_v32",
            "glm_moe_dsa",
            "hy_v4",
            "dots3_note",
            "dots3_note_text",
        ),
        config_fixes={
            "axk2": (
                {"index_topk": 16},
                "an index top-k of 2048 keeps every token: 16 makes the sparse indexer select",
            ),
            "deepseek_v32": (
                {"index_topk": 16},
                "an index top-k of 2048 keeps every token: 16 makes the sparse indexer select",
            ),
            "glm_moe_dsa": (
                {"index_topk": 16},
                "an index top-k of 2048 keeps every token: 16 makes the sparse indexer select",
            ),
            "hy_v4": (
                {"index_topk": 16},
                "an index top-k of 2048 keeps every token: 16 makes the sparse indexer select",
            ),
            "dots3_note": (
                {"text_config.index_topk": 16},
                "an index top-k of 2048 keeps every token: 16 makes the sparse indexer select",
            ),
            "dots3_note_text": (
                {"index_topk": 16},
                "an index top-k of 2048 keeps every token: 16 makes the sparse indexer select",
            ),
        },
    )
)
