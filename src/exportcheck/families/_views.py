"""The base of the family views that show a vision-language model as an image
encoder-decoder (BLIP, Mllama, IDEFICS), for the route of
:mod:`exportcheck.tasks._image_seq2seq`.

Such a model names no image placeholder token: its text side reads the image states
through cross-attention. A view wraps it as the route expects an encoder-decoder: the
model it is of (``viewed_model``: what a processor's inputs and another exporter are
given), the model whose ``generate`` the view's calls (``language_model``: the greedy
settings go to its generation config too), ``get_encoder()``, and a generation config
whose ``decoder_start_token_id`` is the decoder's first token. Each family adds its
``forward`` (a decoder call on the encoder's states) and ``generate``.

Not a family: the modules whose name starts with ``_`` are not registered.
"""

from __future__ import annotations

import copy
import functools
from typing import Any


@functools.cache
def view_base() -> type:
    """The views' base class (built on first use: torch is imported lazily)."""
    import torch

    class ImageEncoderDecoderView(torch.nn.Module):
        """``model`` seen as an image encoder-decoder whose encoder is ``encoder`` and
        whose decoder starts from the token ``start``."""

        def __init__(self, model: Any, encoder: Any, start: int) -> None:
            super().__init__()
            self.model = model
            self.config = model.config
            self.vision = encoder
            self.generation_config = copy.deepcopy(model.generation_config)
            self.generation_config.decoder_start_token_id = start

        @property
        def viewed_model(self) -> Any:
            """The model this view is of: what a processor's inputs and another exporter
            are given (``exportcheck peer``)."""
            return self.model

        @property
        def language_model(self) -> Any:
            """The model whose ``generate`` the view's ``generate`` calls (greedy settings
            go to its generation config too): the model itself, unless a family says."""
            return self.model

        def get_encoder(self) -> Any:
            return self.vision

    return ImageEncoderDecoderView
