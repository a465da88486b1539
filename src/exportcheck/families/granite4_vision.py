"""Granite 4 Vision: a LLaVA-NeXT tiling whose image features are not merged once but
injected into several decoder layers (deepstack), each through a windowed Q-Former
downsampler."""

from __future__ import annotations

from . import Family, register

register(
    Family(
        name="granite4_vision",
        model_types=("granite4_vision",),
        config_fixes={
            "granite4_vision": (
                {
                    "deepstack_layer_map": [[1, 0], [2, 1]],
                    "spatial_target_layers": [2, 3, 4, 5],
                    "downsample_rate": "2/4",
                    "text_config.num_hidden_layers": 6,
                    "vision_config.image_size": 256,
                    "image_grid_pinpoints": [
                        [256, 512],
                        [512, 256],
                        [512, 512],
                        [768, 256],
                        [256, 768],
                    ],
                },
                "the config class leaves deepstack_layer_map and downsample_rate None (the "
                "checkpoints set them; their values are not here): the model builds one "
                "windowed Q-Former downsampler per [vision layer, text layer] pair of the "
                "map, and splits downsample_rate ('query side/window side') into its windows;"
                " the spatial downsamplers keep one patch of each 2 x 2 block, so the rate "
                "must be 1/2 ('1/4' and '3/8', the config docstring's examples, fail there): "
                "'2/4' here (windows of 4 x 4 patches, 2 x 2 queries each); the tiny config "
                "maps the two vision layers' outputs (hidden_states 1 and 2) into text layers"
                " 0 and 1, and the 4 spatial offset groups (layers 12, 15, 18 and 21 by "
                "default, which the tiny decoder does not have: a target layer it lacks is "
                "skipped silently) into layers 2 to 5, so six text layers, one injection each"
                " (two at one layer would overwrite each other); images of 256 pixels (8 x 8 "
                "patches of 32, where 224 leaves 7) so that windows of 4 patches tile them, "
                "and the class default's grids of tiles (1 x 2, 2 x 1, 2 x 2, 3 x 1, 1 x 3) "
                "in tiles of 256 pixels",
            )
        },
    )
)
