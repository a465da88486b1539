"""PP-FormulaNet: an image encoder-decoder whose decoder reads the projector's output."""

from __future__ import annotations

from . import Family, register

register(
    Family(
        name="pp_formulanet",
        model_types=("pp_formulanet",),
        config_fixes={
            "pp_formulanet": (
                {"vision_config.decoder_hidden_size": 64, "vision_config.initializer_range": 0.02},
                "the vision projector writes rows of vision_config.decoder_hidden_size, which "
                "the decoder cross-attends to with layers of its own width, so it must equal "
                "text_config.d_model, as in the checkpoints (512 and 512; the tiny decoder "
                "is 64 wide); and the vision config initializes its weights with a standard "
                "deviation of 1e-10, so that the untrained encoder's states are about 1e-20 "
                "and its projector returns zeros for every image: the untrained tower gets "
                "the 0.02 of the text side, so that images reach the decoder",
            )
        },
    )
)
