"""Funnel Transformer: blocks that pool the sequence, relative positions listed in Python."""

from __future__ import annotations

from . import Family, register

register(
    Family(
        name="funnel",
        model_types=("funnel",),
        config_fixes={
            "funnel": (
                {"block_sizes": [1, 1, 1]},
                "the default's three blocks of four layers (block_sizes, which the generic "
                "shrinking does not know): one layer each keeps the three blocks and the "
                "two poolings between them",
            )
        },
        task_known_failures={
            "fill-mask": {
                "funnel": (
                    r"Constraints violated \(seq_length\)",
                    "torch.export specializes the sequence length to the traced one: "
                    "FunnelAttentionStructure.get_position_embeds "
                    "(transformers/models/funnel/modeling_funnel.py:152, relative_shift "
                    "attention, the default) lists the positions of each block as Python "
                    "ints (pos = list(range(seq_len)), on purpose, so that the aranges are "
                    "static), so the graph holds for one length only and the input sets "
                    "have several. Computing the same positions from the symbolic length "
                    "(tried: equal values for every length from 3 to 129) gets past that, "
                    "but the pooling and upsampling between blocks then guard on the "
                    "length modulo 4 (reshape views, e.g. Eq(((s - 1)//4), 1) and "
                    "Eq(256*((s - 1)//4) + 192, 64*s - 64)), true for the traced length "
                    "only: no bounds make one graph valid for several lengths",
                )
            }
        },
    )
)
