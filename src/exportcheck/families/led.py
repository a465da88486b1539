"""LED: a Longformer encoder, global attention chosen by the mask's values."""

from __future__ import annotations

from typing import Any

import torch

from ..patches import Patch
from ..patches.core import passthrough
from . import Family, register
from .longformer import local_attention_only, window_padding

MODULE = "transformers.models.led.modeling_led"

led_local_attention = local_attention_only("led_local_attention")


def _install_led_local_attention(patcher: Any, model: Any) -> None:
    """Export LED's encoder for masks without global attention, and check they have none.

    Fixes: torch.export of led's encoder (text2text-generation): ``Could not guard on
    data-dependent expression Eq(u0, 1) ... Caused by: (transformers/models/led/
    modeling_led.py:192 in forward)``: LEDEncoder.forward (modeling_led.py:1446) computes
    ``is_global_attn = is_index_global_attn.flatten().any().item()``, whether any token
    of the batch has global attention (attention_mask == 2, or global_attention_mask ==
    1), and LEDEncoderSelfAttention.forward branches on it (:192, 234, 254). The value is
    data, not a shape: torch.export cannot guard on it.

    The replacement of LEDEncoderSelfAttention.forward is Longformer's
    (``longformer_local_attention`` in families/longformer.py, whose docstring says more):
    while exporting it runs the local branch, the code eager runs for a mask of 0s and 1s,
    so the numbers are eager's; outside an export the original runs. It records
    ``torch._assert_async``: the ExportedProgram raises ``RuntimeError: exported without
    global attention: no token of the attention mask may be 2, ...`` on a mask holding a
    2. The ONNX exporter drops assertion nodes, so there the attention output of a row
    holding a global token is filled with NaN instead (a no-op for the other rows).
    ``output_attentions=True`` still fails to export (the encoder reads the value before
    its first layer, :1456). The decoder has no global attention and is not changed.

    Remove when: LED's encoder computes global attention without data-dependent control
    flow, or torch.export can trace both branches.
    """
    patcher.replace_in(MODULE, "LEDEncoderSelfAttention", "forward", led_local_attention)


LED_LOCAL_ATTENTION = Patch(
    name="led_local_attention",
    fixes="Could not guard on data-dependent expression ... modeling_led.py:192 in forward",
    remove_when="LED's encoder computes global attention without data-dependent control "
    "flow, or torch.export traces both branches",
    install=_install_led_local_attention,
    model_types=("led",),
)


def led_encoder_forward(
    self, input_ids=None, attention_mask=None, global_attention_mask=None,
    inputs_embeds=None, output_attentions=None, output_hidden_states=None,
    return_dict=None, **kwargs,
):  # fmt: skip
    """LEDEncoder.forward while exporting from ids: the inputs padded to a multiple of the
    attention window before the original runs (which then pads nothing), its outputs
    cut back to the tokens given with ``index_select`` after."""
    if not torch.compiler.is_exporting() or input_ids is None or inputs_embeds is not None:
        return passthrough(
            led_encoder_forward.original, self, input_ids=input_ids,
            attention_mask=attention_mask, global_attention_mask=global_attention_mask,
            inputs_embeds=inputs_embeds, output_attentions=output_attentions,
            output_hidden_states=output_hidden_states, return_dict=return_dict, **kwargs,
        )  # fmt: skip
    tokens = input_ids.shape[1]
    padding = window_padding(tokens, self.config)
    pad = torch.nn.functional.pad
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    if global_attention_mask is not None:
        global_attention_mask = pad(global_attention_mask, (0, padding), value=0)
    outputs = led_encoder_forward.original(
        self, input_ids=pad(input_ids, (0, padding), value=self.config.pad_token_id),
        attention_mask=pad(attention_mask, (0, padding), value=0),
        global_attention_mask=global_attention_mask, output_attentions=output_attentions,
        output_hidden_states=output_hidden_states, return_dict=True, **kwargs,
    )  # fmt: skip
    keep = torch.arange(tokens, device=input_ids.device)

    def cut(states: Any, dim: int) -> Any:
        return None if states is None else tuple(t.index_select(dim, keep) for t in states)

    outputs = type(outputs)(
        last_hidden_state=outputs.last_hidden_state.index_select(1, keep),
        hidden_states=cut(outputs.hidden_states, 1),
        attentions=cut(outputs.attentions, 2),
        global_attentions=outputs.global_attentions,
    )
    use_dict = return_dict if return_dict is not None else self.config.return_dict
    return outputs if use_dict else outputs.to_tuple()


def _install_led_window_padding(patcher: Any, model: Any) -> None:
    """Pad LED's encoder inputs to the attention window in a form torch.export bounds.

    Fixes: torch.export of led's encoder with a dynamic number of tokens: ``Constraints
    violated (encoder_length)! ... satisfy the generated guard ((512 +
    (-1)*(L['input_ids'].size()[1] % 512)) % 512) > 0``: LEDEncoder._pad_to_window_size
    (transformers/models/led/modeling_led.py:1326) counts the padding to a multiple of
    the window with ``(window - seq_len % window) % window``, whose range the solver
    cannot bound through the modulo, and LEDEncoder.forward cuts it off only ``if
    padding_len > 0`` (:1493), a branch that also depends on the length (the tasks
    declare LED's encoder up to 512 tokens, and 512 needs no padding).

    While exporting from ids, the replacement of LEDEncoder.forward pads input_ids (with
    pad_token_id), attention_mask (with 0) and global_attention_mask (with 0) by
    ``window_padding`` tokens (families/longformer.py: the same count as a floor division
    of a positive sum, which the solver bounds) before calling the original, whose own
    padding is then 0 for every length (the solver simplifies ``(512*k) % 512``), and cuts
    the states and attentions back to the given tokens with ``index_select`` (a slice
    would guard again on whether anything was padded). The original pads the same ids
    and mask with the same values before embedding them, and removes the same positions:
    the same numbers. With inputs_embeds, or outside an export, the original runs.

    Remove when: torch.export's solver bounds ``x % c`` by the range of ``x``, or
    transformers pads and unpads LED's encoder without a modulo and a branch.
    """
    patcher.replace_in(MODULE, "LEDEncoder", "forward", led_encoder_forward)


LED_WINDOW_PADDING = Patch(
    name="led_window_padding",
    fixes="Constraints violated (encoder_length)! ... satisfy the generated guard ((512 + "
    "(-1)*(L['input_ids'].size()[1] % 512)) % 512) > 0",
    remove_when="torch.export's solver bounds x % c by the range of x, or transformers pads "
    "and unpads LED's encoder without a modulo and a branch",
    install=_install_led_window_padding,
    model_types=("led",),
)

register(
    Family(
        name="led",
        model_types=("led",),
        config_fixes={
            "led": (
                {"onnx_export": True},
                "LEDEncoderSelfAttention._chunk (modeling_led.py:346) views its input with "
                "torch.div of the length, a tensor, whose value torch.export reads as a "
                "data-dependent size: 'Could not guard on data-dependent expression "
                "2*u4 - 1 < 0' in the einsum of the chunks (:407). onnx_export=True, the "
                "switch Longformer's config declares and LED's code reads "
                "(getattr(config, 'onnx_export', False), :400), chunks the same values "
                "with unfold, as for longformer",
            )
        },
        patches=(LED_LOCAL_ATTENTION, LED_WINDOW_PADDING),
    )
)
