"""PaliGemma: a SigLIP tower and a Gemma prefix LM (image tokens and prompt attend
bidirectionally, generated tokens causally; see
:func:`exportcheck.tasks.image_text_to_text.prefix_lm`)."""

from __future__ import annotations

from . import Family, register

register(
    Family(
        name="paligemma",
        model_types=("paligemma",),
        config_fixes={
            "paligemma": (
                {"projection_dim": 64, "vision_config.image_size": 98},
                "projection_dim is the width of the projected image features, which the "
                "forward writes over the text embeddings: the published configs tie it to "
                "the text hidden size (2048), at the top level where the generic tie rule "
                "does not look, so it follows the tiny hidden size 64 (left at 2048, the "
                "forward refuses the merge: 'Image features and image tokens do not "
                "match'); image_size 98 (7 x 7 patches of 14, 49 image tokens): a prefix "
                "LM prefills its whole prefix, image tokens and prompt, in one decoder "
                "call, which must fit the tiny bound of 64 new positions (8 x 8 image "
                "tokens and the generation prompt's 5 text tokens do not)",
            ),
        },
    )
)
