"""Longformer: sliding-window attention, and global attention chosen by the mask's values."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ..patches import Patch
from ..patches.core import passthrough
from . import Family, register

MODULE = "transformers.models.longformer.modeling_longformer"

#: the error the ExportedProgram raises on a mask holding a global token
NO_GLOBAL_TOKEN = (
    "exported without global attention: no token of the attention mask may be 2, and "
    "global_attention_mask must be all 0"
)


def local_attention_only(name: str) -> Callable[..., Any]:
    """A replacement of a Longformer self-attention ``forward`` (Longformer's, LED's
    encoder's) that, while exporting, asserts that no token has global attention and
    runs the local branch only; otherwise it runs the original.

    Each call makes a new function: a patch finds the function it replaced in the
    ``original`` attribute of its replacement, so two patches cannot share one."""

    def forward(
        self, hidden_states, attention_mask=None, is_index_masked=None,
        is_index_global_attn=None, is_global_attn=None, output_attentions=False,
    ):  # fmt: skip
        if not (torch.compiler.is_exporting() and isinstance(is_global_attn, torch.SymBool)):
            return passthrough(
                forward.original, self, hidden_states, attention_mask=attention_mask,
                is_index_masked=is_index_masked, is_index_global_attn=is_index_global_attn,
                is_global_attn=is_global_attn, output_attentions=output_attentions,
            )  # fmt: skip
        # is_global_attn is the unbacked bool the encoder read from the mask with
        # .item(); the local branch is taken statically, and the ExportedProgram checks
        # at run time that it is the right one (aten._assert_async.msg: raises with
        # this message; torch._check would say "Runtime assertion failed for
        # expression Ne(u0, 1)", its message being dropped by a non-strict export)
        has_global = is_index_global_attn.any(dim=1)
        torch._assert_async(~has_global.any(), NO_GLOBAL_TOKEN)
        outputs = forward.original(
            self, hidden_states, attention_mask=attention_mask,
            is_index_masked=is_index_masked, is_index_global_attn=is_index_global_attn,
            is_global_attn=False, output_attentions=output_attentions,
        )  # fmt: skip
        # ONNX drops runtime assertions: a row with a global token comes out NaN there
        # rather than computed as if its global tokens were padding
        return (outputs[0].masked_fill(has_global[:, None, None], float("nan")), *outputs[1:])

    forward.__name__ = forward.__qualname__ = name
    return forward


longformer_local_attention = local_attention_only("longformer_local_attention")


def _install_longformer_local_attention(patcher: Any, model: Any) -> None:
    """Export Longformer for masks without global attention, and check they have none.

    Fixes: torch.export of longformer (fill-mask, feature-extraction): ``Could not guard
    on data-dependent expression Eq(u0, 1) ... Caused by: (transformers/models/
    longformer/modeling_longformer.py:549 in forward)``: LongformerEncoder.forward
    (modeling_longformer.py:1175) computes ``is_global_attn =
    is_index_global_attn.flatten().any().item()``, whether any token of the batch has
    global attention (attention_mask == 2, or global_attention_mask == 1), and
    LongformerSelfAttention.forward branches on it (:549, 591, 611); the global branch
    also sizes its tensors by the number of global tokens of a row. The value is data,
    not a shape: torch.export cannot guard on it.

    While exporting, the replacement of LongformerSelfAttention.forward calls the
    original with ``is_global_attn=False``: the local branch, the code eager runs for a
    mask of 0s and 1s (what the tasks feed and a tokenizer gives), so the numbers are
    eager's. Outside an export the original runs unchanged.

    The restriction is checked where it can be. The replacement records
    ``torch._assert_async(no row has a global token, message)`` (an
    ``aten._assert_async.msg`` node): the ExportedProgram raises ``RuntimeError: exported
    without global attention: no token of the attention mask may be 2, ...`` on a mask
    holding a 2 (``torch._check`` on the unbacked value would raise only ``Runtime
    assertion failed for expression Ne(u0, 1)``: a non-strict export drops its message).
    The ONNX exporter removes every assertion node (``remove_assertion_nodes`` in
    torch/onnx/_internal/exporter/_fx_passes.py), so the ONNX model cannot raise; it
    would compute a global token as a padded one. To fail visibly instead, the attention
    output of every row holding a global token is filled with NaN (``masked_fill``, a
    no-op for the other rows: the same numbers): onnxruntime returns NaN for those rows.
    ``output_attentions=True`` still fails to export: the encoder reads the value before
    its first layer (modeling_longformer.py:1179).

    Remove when: Longformer computes global attention without data-dependent control flow
    (a mask of no global token going through the same code), or torch.export can trace
    both branches (``torch.cond`` with outputs of data-dependent size).
    """
    patcher.replace_in(MODULE, "LongformerSelfAttention", "forward", longformer_local_attention)


LONGFORMER_LOCAL_ATTENTION = Patch(
    name="longformer_local_attention",
    fixes="Could not guard on data-dependent expression ... modeling_longformer.py:549 in forward",
    remove_when="Longformer computes global attention without data-dependent control flow, "
    "or torch.export traces both branches",
    install=_install_longformer_local_attention,
    model_types=("longformer",),
)


def window_padding(tokens: Any, config: Any) -> Any:
    """How many tokens pad ``tokens`` to a multiple of the attention window:
    ``ceil(tokens / window) * window - tokens``, the value of transformers'
    ``(window - tokens % window) % window``, written with a floor division whose range
    torch.export can bound (a modulo's range it cannot)."""
    window = config.attention_window
    window = window if isinstance(window, int) else max(window)
    if window % 2 != 0:
        raise ValueError(f"`attention_window` should be an even value. Given {window}")
    return (tokens + window - 1) // window * window - tokens


def longformer_pad_to_window(
    self, input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds, pad_token_id
):
    """LongformerModel._pad_to_window_size while exporting: the padding counted by
    :func:`window_padding` and always applied (a padding of 0 tokens changes nothing)."""
    if not torch.compiler.is_exporting():
        return passthrough(
            longformer_pad_to_window.original, self, input_ids, attention_mask,
            token_type_ids, position_ids, inputs_embeds, pad_token_id,
        )  # fmt: skip
    pad = torch.nn.functional.pad
    reference = input_ids if input_ids is not None else inputs_embeds
    padding = window_padding(reference.shape[1], self.config)
    if input_ids is not None:
        input_ids = pad(input_ids, (0, padding), value=pad_token_id)
    if position_ids is not None:
        position_ids = pad(position_ids, (0, padding), value=pad_token_id)
    if inputs_embeds is not None:
        ids = inputs_embeds.new_full(
            (inputs_embeds.shape[0], padding), self.config.pad_token_id, dtype=torch.long
        )
        inputs_embeds = torch.cat([inputs_embeds, self.embeddings(ids)], dim=-2)
    attention_mask = pad(attention_mask, (0, padding), value=0)
    token_type_ids = pad(token_type_ids, (0, padding), value=0)
    return padding, input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds


def _install_longformer_window_padding(patcher: Any, model: Any) -> None:
    """Count Longformer's padding to the attention window in a form torch.export bounds.

    Fixes: torch.export of longformer with a dynamic number of tokens: ``Constraints
    violated (seq_length)! ... satisfy the generated guard ((L['input_ids'].size()[1] +
    ((512 + (-1)*(L['input_ids'].size()[1] % 512)) % 512)) % 512) == 0``:
    LongformerModel._pad_to_window_size (transformers/models/longformer/
    modeling_longformer.py:1344) pads the tokens to a multiple of the window with
    ``(window - seq_len % window) % window``; the attention then guards on the padded
    length, which the solver cannot bound through the modulo (every guard holds for
    1 <= seq_length <= 510: the padded length is 512) and it ends by specializing
    seq_length. While exporting, the replacement counts the same padding as
    ``(seq_len + window - 1) // window * window - seq_len`` (:func:`window_padding`; a
    floor division of a positive sum, whose range the solver knows: written as
    ``-(-seq_len // window)`` instead, the export passes but guards batch != 1 in the
    query projection's reshape) and pads the same tensors with the same values; it pads
    even by 0 tokens instead of branching on ``padding_len > 0``: the same tensors.
    Outside an export the original runs. The encoder cuts the padding off with a slice
    to the input's length, which the solver decides while the declared lengths stay below
    a multiple of the window (the tasks declare 510 tokens for a table of 512 positions).

    Remove when: torch.export's solver bounds ``x % c`` by the range of ``x``, or
    transformers counts the padding without a modulo.
    """
    patcher.replace_in(MODULE, "LongformerModel", "_pad_to_window_size", longformer_pad_to_window)


LONGFORMER_WINDOW_PADDING = Patch(
    name="longformer_window_padding",
    fixes="Constraints violated (seq_length)! ... satisfy the generated guard "
    "((L['input_ids'].size()[1] + ((512 + (-1)*(L['input_ids'].size()[1] % 512)) % 512)) "
    "% 512) == 0",
    remove_when="torch.export's solver bounds x % c by the range of x, or transformers "
    "counts the padding without a modulo",
    install=_install_longformer_window_padding,
    model_types=("longformer",),
)


register(
    Family(
        name="longformer",
        model_types=("longformer",),
        config_fixes={
            "longformer": (
                {"onnx_export": True},
                "LongformerSelfAttention._chunk (modeling_longformer.py:703) views its "
                "input with torch.div of the length, a tensor, whose value torch.export "
                "reads as a data-dependent size: 'Could not guard on data-dependent "
                "expression 2*u4 - 1 < 0' in the einsum of the chunks (:764; 'Eq(u1, 1)' "
                "before the patches above); onnx_export=True, the config's own switch for "
                "exports, chunks the same values with unfold",
            )
        },
        patches=(LONGFORMER_LOCAL_ATTENTION, LONGFORMER_WINDOW_PADDING),
    )
)
