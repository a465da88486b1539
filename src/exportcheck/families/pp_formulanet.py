"""PP-FormulaNet: an image encoder-decoder whose decoder reads the projector's output."""

from __future__ import annotations

from . import Family, register

register(
    Family(
        name="pp_formulanet",
        model_types=("pp_formulanet",),
        config_fixes={
            "pp_formulanet": (
                {"vision_config.decoder_hidden_size": 64},
                "the vision projector writes rows of vision_config.decoder_hidden_size, which "
                "the decoder cross-attends to with layers of its own width, so it must equal "
                "text_config.d_model, as in the checkpoints (512 and 512; the tiny decoder "
                "is 64 wide)",
            )
        },
    )
)
