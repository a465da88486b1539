"""Florence-2: a BART encoder-decoder whose encoder reads the prompt's embeddings with a
DaViT tower's image features written over its image tokens."""

from __future__ import annotations

from . import Family, register

register(
    Family(
        name="florence2",
        model_types=("florence2",),
        config_fixes={
            "florence2": (
                {"vision_config.projection_dim": 64, "vision_config.image_size": 64},
                "the projector writes rows of vision_config.projection_dim over the token "
                "embeddings, so it must equal text_config.d_model, as in the checkpoints "
                "(768 and 768; the tiny text model is 64 wide); and the vision config names "
                "no image size, the processor's resize (768 x 768, 577 image tokens): the "
                "tiny model's images are 64 x 64, 2 x 2 patches after the tower's 32-fold "
                "downsampling, 5 image tokens with the pooled one",
            )
        },
    )
)
