"""Kyutai speech-to-text: audio codec tokens summed into the text stream.

``KyutaiSpeechToTextForConditionalGeneration`` (transformers/models/
kyutai_speech_to_text/modeling_kyutai_speech_to_text.py) reads one text token and one
frame of audio codes at every position. Its ``generate`` encodes the waveform with the
Mimi codec into ``num_codebooks`` codes per frame (``prepare_inputs_for_generation``,
:808-855: the whole clip in one window unless the generation config sets
``audio_window_size``), gives position 0 the audio BOS code in every codebook and
position ``p`` the codes of frame ``p - 1``, and stacks them beside the text id
(``input_ids`` of shape ``(batch, length, 1 + num_codebooks)``). The embedding
(``KyutaiSpeechToTextEmbeddings``, :529-552) offsets codebook ``k``'s codes by
``vocab_size + k * codebook_vocab_size`` in one table and sums the embeddings of the
text id and of every code. The model has no audio placeholder: the text stream runs
alongside the audio, one frame a token, and ``generate`` stops where the audio ends
(``max_new_tokens`` at most the clip's frames, :900-920).

The sum splits into the text id's embedding and the sum of the codes' embeddings, so
the model is exported as the audio LMs with added audio of
:mod:`exportcheck.tasks._audio_lm` are: the audio encoder graph is the codec's
streaming encoder on the whole clip (a fresh padding cache, as ``generate`` prepares it)
with the code embeddings summed per frame and the BOS frame first, so that its frame
``i`` is what position ``i`` adds; ``embed_tokens`` embeds the text id alone; the
decoder step is the model's forward on input embeddings. Eager ``generate`` is the
reference of the generation stage.
"""

from __future__ import annotations

from typing import Any

from ..patches.core import Patch
from . import Family, register

#: the tiny config's text vocabulary (the generic shrinking's) and the default model's
#: codebooks: the padding id of the shared embedding table is its last row
VOCAB = 1024
CODEBOOKS = 32
CODEBOOK_VOCAB = 2049


class FirstWindowPadding:
    """The padding cache of the codec's causal convolutions as ``generate`` hands it to
    the codec on its first window: empty, so that every convolution is padded on the left
    with its initial state (zeros, or its first sample under ``replicate``) as wide as
    its effective kernel less its stride, and nothing on the right.

    The codec's own cache (``KyutaiSpeechToTextConv1dPaddingCache``,
    modeling_kyutai_speech_to_text.py:435-526) reads each width from the convolution's
    ``padding_total`` buffer, a tensor, and branches on its value: a data-dependent
    branch under ``torch.export``. The widths here come from the ``nn.Conv1d`` each
    convolution wraps (kernel size, dilation, stride: Python ints), so the graph holds
    none. Only the first window is served: this cache keeps nothing."""

    def __init__(self, codec: Any) -> None:
        self.widths: dict[int, tuple[int, str]] = {}
        for module in codec.encoder.modules():
            conv = getattr(module, "conv", None)
            index = getattr(module, "layer_idx", None)
            if index is None or not getattr(module, "causal", False) or conv is None:
                continue
            kernel = (conv.kernel_size[0] - 1) * conv.dilation[0] + 1
            self.widths[index] = (kernel - conv.stride[0], module.pad_mode)

    def update(self, hidden_states: Any, layer_idx: int) -> Any:
        """The left padding of layer ``layer_idx``'s input on the first window."""
        width, mode = self.widths[layer_idx]
        if mode == "replicate":
            return hidden_states[..., :1].expand(-1, -1, width)
        return hidden_states.new_zeros((*hidden_states.shape[:2], width))


def audio_frames(self: Any, input_values: Any, **kwargs: Any) -> Any:
    """What each position adds to its text token's embedding: the BOS frame, then the
    sum of the code embeddings of every frame of the clip ``(batch, 1 + frames, hidden)``,
    as ``BaseModelOutputWithPooling.pooler_output`` (the form ``get_audio_features``
    returns). The codec runs as ``generate`` runs it on its first window, its causal
    convolutions padded on the left only (:class:`FirstWindowPadding`); the padding mask
    is not read, as ``generate`` does not read it."""
    import torch
    from transformers.modeling_outputs import BaseModelOutputWithPooling

    codec = self.codec_model
    codes = codec.encode(input_values, padding_cache=FirstWindowPadding(codec)).audio_codes
    codes = codes.transpose(1, 2)  # (batch, frames, codebooks)
    # new_full, not full_like: the transposed codes' strides would put a guard on the
    # batch and length in the graph
    bos = codes.new_full((codes.shape[0], 1, codes.shape[2]), self.config.audio_bos_token_id)
    codes = torch.cat([bos, codes], 1)
    embeddings = self.model.embed_tokens
    table = embeddings.embed_tokens
    offset = codes + embeddings.audio_tokens_offsets[1:]
    ids = torch.where(codes == table.padding_idx, codes, offset)
    return BaseModelOutputWithPooling(pooler_output=table(ids).sum(2))


def text_embeddings(model: Any) -> Any:
    """The embedding of the text id alone (its offset is 0 in the shared table)."""
    return model.model.embed_tokens.embed_tokens


def _quantize_by_matmul(self: Any, hidden_states: Any) -> Any:
    """The nearest centroid of every row, with the distances computed by matrix product."""
    import torch

    dists = torch.cdist(
        hidden_states[None].float(),
        self.embed[None].float(),
        p=2,
        compute_mode="use_mm_for_euclid_dist",
    )[0]
    return dists.argmin(dim=-1)


def _install_codebook_matmul(patcher: Any, model: Any) -> None:
    """Name the codec's distance computation instead of letting ``cdist`` choose it.

    Fixes: the exported audio encoder refuses every input of 25 frames or fewer, batch
    included (``Guard failed: input_values.size()[0] * (input_values.size()[2] // 1920)
    > 25``: one row of under 2 s, which the feature extractor's 1 s of silence pads to
    fewer). ``MimiEuclideanCodebook.quantize`` (transformers/models/mimi/
    modeling_mimi.py:945-950) calls ``torch.cdist`` with its default compute mode, which
    takes the matrix-product form when either side has more than 25 rows. The codebook
    always has more (2048 centroids), so eager always takes it, but the condition tests
    the input's rows first, and ``torch.export`` records that test as a guard on the
    traced shape. Asking for the matrix-product form computes the same thing and
    records no guard.

    Remove when: ``torch.cdist`` tests the constant side first, or Mimi names its mode.
    """
    patcher.replace_in(
        "transformers.models.mimi.modeling_mimi",
        "MimiEuclideanCodebook",
        "quantize",
        _quantize_by_matmul,
    )


CODEBOOK_MATMUL = Patch(
    name="mimi_codebook_matmul",
    fixes="Guard failed: ... > 25",
    remove_when="torch.cdist tests the constant side first, or Mimi names its compute mode",
    install=_install_codebook_matmul,
    runtimes=("exported_program",),
    model_types=("kyutai_speech_to_text",),
)


register(
    Family(
        name="kyutai_speech_to_text",
        model_types=("kyutai_speech_to_text",),
        config_fixes={
            "kyutai_speech_to_text": (
                {
                    "vocab_size": VOCAB,
                    "audio_pad_token_id": VOCAB + CODEBOOKS * CODEBOOK_VOCAB,
                    "codec_config.upsample_groups": 64,
                },
                "audio_pad_token_id is the last row of the shared table of text and codebook "
                "embeddings (vocab_size + num_codebooks * codebook_vocab_size: 69569 for "
                "the default's 4001 text tokens), so it follows the tiny text vocabulary; "
                "the codec's upsampling is a grouped convolution with one group per "
                "channel (upsample_groups = hidden_size, 512 by default), so it follows "
                "the tiny codec's 64 channels",
            ),
        },
        patches=(CODEBOOK_MATMUL,),
        input_layouts={
            "kyutai_speech_to_text": (
                {
                    "added_audio": True,
                    "audio_features": audio_frames,
                    "text_embeddings": text_embeddings,
                },
                "no placeholder token: position p reads the text id and the Mimi codes of "
                "audio frame p - 1 (the audio BOS code at position 0), their embeddings "
                "summed (KyutaiSpeechToTextEmbeddings, modeling_kyutai_speech_to_text.py:"
                "529-552; prepare_inputs_for_generation, :802-855); the audio encoder graph "
                "is the codec's streaming encoder on the whole clip, as generate encodes its "
                "first window, with each frame's code embeddings summed and the BOS frame "
                "first; embed_tokens embeds the text id alone. The padding mask is not read, "
                "as generate does not read it (every row's padding is encoded as audio). "
                "Not covered: a generation config with an audio_window_size shorter than "
                "the clip, which encodes the clip window by window with the codec's caches",
            ),
        },
    )
)
