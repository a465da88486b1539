"""Block attention that torch.export keeps symbolic in the sequence length.

Encoders with local attention (LongT5, PEGASUS-X) pad the sequence to a multiple of a
block, split it into blocks, attend within and around them, and drop the padding. Three
things in that code make ``torch.export`` guard on the length, so that a dynamic length
fails with ``Constraints violated``:

* ``if length % block != 0: pad`` and a padding of ``-length % block``: the branch guards
  the remainder, and the padded length ``length + (-length % block)`` is not provably a
  multiple of ``block`` when it is split into ``(count, block)``. :func:`split_blocks`
  pads up to ``count * block`` with ``count = ceil(length / block)``, which is a multiple
  by construction;
* ``hidden[:, :length]``, dropping the padding: the slice guards ``length <= count *
  block``, which the solver cannot prove. :func:`first` takes the rows by index;
* a block count of 1 (any input shorter than a block, such as the traced one) or more:
  reshapes and broadcasts ask whether a size is 1, and the answer becomes a guard that
  holds for one side only. :func:`size_oblivious` lets torch.export reason about the
  count as any size while it traces the blocked code.

Not a family: the modules whose name starts with ``_`` are not registered.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

__all__ = ["first", "size_oblivious", "split_blocks"]


def split_blocks(x: Any, block: int, dim: int) -> Any:
    """``x`` padded with zeros along ``dim`` to a whole number of blocks and split into
    ``(count, block)``: what ``-length % block`` zeros and a reshape give, written so that
    the padded length is ``count * block`` for a symbolic length too.

    >>> split_blocks(torch.arange(5)[None], 2, 1).tolist()
    [[[0, 1], [2, 3], [4, 0]]]
    """
    length = x.shape[dim]
    count = (length + block - 1) // block
    # F.pad lists (before, after) pairs from the last dimension backwards
    pad = [0, 0] * (x.dim() - dim - 1) + [0, count * block - length]
    x = torch.nn.functional.pad(x, pad)
    return x.reshape(*x.shape[:dim], count, block, *x.shape[dim + 1 :])


def first(x: Any, length: Any, dim: int) -> Any:
    """The first ``length`` entries of ``x`` along ``dim`` (``x[:, :length]``), taken by
    index so that torch.export does not guard ``length`` against the size of ``x``.

    >>> first(torch.arange(6)[None], 4, 1).tolist()
    [[0, 1, 2, 3]]
    """
    return x.index_select(dim, torch.arange(length, device=x.device))


@contextlib.contextmanager
def size_oblivious() -> Iterator[None]:
    """While torch.export traces: reason about sizes without asking whether they are 0 or 1
    (``torch.fx.experimental._config.backed_size_oblivious``), so that a block count of 1
    in the traced input does not become a guard; outside an export, nothing."""
    if not torch.compiler.is_exporting():
        yield
        return
    import torch.fx.experimental._config as fx_config

    with fx_config.patch(backed_size_oblivious=True):
        yield
