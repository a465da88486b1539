"""XLM: a cache the causal-LM head never returns."""

from __future__ import annotations

from . import Family, register

register(
    Family(
        name="xlm",
        model_types=("xlm",),
        no_generation={
            "xlm": (
                "its generate appends the mask token to the ids at every step and predicts it (XLMWithLMHeadModel.prepare_inputs_for_generation, transformers/models/xlm/modeling_xlm.py:931): not a loop of the causal step exported here"
            ),
        },
        no_cache={
            "xlm": "XLMWithLMHeadModel returned none after a prefill: its output "
            "(MaskedLMOutput) has no cache field and XLMModel.forward "
            "(transformers/models/xlm/modeling_xlm.py:782) builds an EncoderDecoderCache "
            "of its own when given none, then drops it; given one, forward expects every "
            "token seen so far (it slices input_ids[:, -(slen - cache.get_seq_length()):], "
            ":809-811) and updates the cache in place, so an exported step would not "
            "return its new state; and with causal=False (the default config) new "
            "tokens attend both ways, so no decode step equals a full forward",
        },
    )
)
