"""DeepSeek-VL hybrid: each image through a low- and a high-resolution encoder."""

from __future__ import annotations

from . import Family, register

register(
    Family(
        name="deepseek_vl_hybrid",
        model_types=("deepseek_vl_hybrid",),
        config_fixes={
            "deepseek_vl_hybrid": (
                {
                    "high_res_vision_config.image_size": 256,
                    "high_res_vision_config.global_attn_indexes": [1],
                },
                "the high-resolution encoder reads the hidden states of the layers "
                "global_attn_indexes names ([2, 5, 8, 11], of a 12-layer tower), which the "
                "2-layer tiny tower lacks: its last layer; and its 1024-pixel images (the "
                "low-resolution tower's are shrunk to 128) become 256 pixels, 16 x 16 "
                "patches, so that the sweep stays fast",
            )
        },
    )
)
