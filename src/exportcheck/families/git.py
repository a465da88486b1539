"""GIT: a text decoder whose cache may start with image tokens that no mask covers."""

from __future__ import annotations

from typing import Any

from ..patches import Patch
from ..patches.core import passthrough
from . import Family, register

MODULE = "transformers.models.git.modeling_git"


def git_model_forward(
    self,
    input_ids=None,
    attention_mask=None,
    position_ids=None,
    pixel_values=None,
    inputs_embeds=None,
    cache=None,
    use_cache=None,
    interpolate_pos_encoding=False,
    **kwargs,
):
    """GitModel.forward, widening a cached step's mask only over the cached positions it
    does not cover."""
    given = {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "position_ids": position_ids,
        "pixel_values": pixel_values,
        "inputs_embeds": inputs_embeds,
        "cache": cache,
        "use_cache": use_cache,
        "interpolate_pos_encoding": interpolate_pos_encoding,
        **kwargs,
    }
    cached = cache.get_seq_length() if cache is not None else 0
    tokens = input_ids if input_ids is not None else inputs_embeds
    empty = isinstance(cached, int) and cached == 0  # symbolic while exporting
    if pixel_values is not None or attention_mask is None or attention_mask.ndim != 2:
        return passthrough(git_model_forward.original, self, **given)
    if tokens is None or empty:
        return passthrough(git_model_forward.original, self, **given)
    # The original widens the mask by every image patch token; the widening it needs is
    # what the mask lacks: the image tokens a prefill with pixel values left in the cache,
    # none after a text-only prompt whose mask covers the cache.
    attention = self.encoder.layer[0].attention.self
    saved = attention.image_patch_tokens
    attention.image_patch_tokens = cached + tokens.shape[1] - attention_mask.shape[1]
    try:
        return git_model_forward.original(self, **given)
    finally:
        attention.image_patch_tokens = saved


def _install_git_cached_mask(patcher: Any, model: Any) -> None:
    """Widen a cached step's 2D mask only over the cached image tokens it does not cover.

    Fixes: eager's decode step of a left-padded text prompt differs from a full forward
    over prompt + new tokens (1.9e-3 on the logits). On a cached step without
    ``pixel_values``, GitModel.forward (transformers/models/git/modeling_git.py:840-848)
    puts ``image_patch_tokens`` ones (197 for the tiny config) in front of the mask,
    assuming the cache starts with image tokens. After a text-only prompt the mask, as
    ``generate`` passes it, already covers every cached token: the widened mask is
    longer than the keys, the mask builder reads its first columns, all ones, and the
    padded row attends to its padding. The replacement sets the widening, for the call,
    to the cached positions the mask lacks: the image tokens after a prefill with pixel
    values (the same number as before), none after a text-only one. Unpadded masks give
    the same numbers as before, since the first columns were ones either way.

    Since eager is wrong without it, :func:`exportcheck.validate` computes its eager
    reference with it (``corrects_eager``).

    Remove when: GitModel.forward widens a cached step's mask by the columns it lacks.
    """
    patcher.replace_in(MODULE, "GitModel", "forward", git_model_forward)


GIT_CACHED_MASK = Patch(
    name="git_cached_mask",
    fixes="a left-padded row's decode step attends to its padding: the mask widened by "
    "every image patch token after a text-only prompt",
    remove_when="GitModel.forward widens a cached step's mask by the columns it lacks",
    install=_install_git_cached_mask,
    model_types=("git",),
    corrects_eager=True,
)

register(Family(name="git", model_types=("git",), patches=(GIT_CACHED_MASK,)))
