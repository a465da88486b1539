"""transformers caches: builders from tensors (:mod:`.builders`) and pytree nodes (:mod:`.pytrees`).

A cache built here is filled by assigning tensors to its layers, never through
``update()``: ``update()`` lazily allocates ``torch.tensor([])`` which becomes a
lifted constant when it happens under ``torch.export`` (see
:mod:`exportcheck.caches.pytrees`). Builders of the cache classes of one model family
live in that family's file (:func:`exportcheck.make_minimax_cache`).
"""

from .builders import (
    fill_layer,
    make_dynamic_cache,
    make_encoder_decoder_cache,
    make_static_cache,
)
from .pytrees import (
    cache_dynamic_shapes,
    cache_pytrees,
    register_derived_counter,
    register_length_slot,
    register_token_axis_slot,
    registered_cache_classes,
)

__all__ = [
    "cache_dynamic_shapes",
    "cache_pytrees",
    "fill_layer",
    "make_dynamic_cache",
    "make_encoder_decoder_cache",
    "make_static_cache",
    "register_derived_counter",
    "register_length_slot",
    "register_token_axis_slot",
    "registered_cache_classes",
]
