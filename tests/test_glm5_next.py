"""GLM-5 Next (image-text-to-text): the decoder step's sparse-attention indexer groups the
keys into pools of 16, whose count the export specialized to several."""

import copy

import pytest
import torch

from exportcheck import export_patches, untrained_model
from exportcheck.tasks import _audio_lm

pytestmark = pytest.mark.models

TASK = "image-text-to-text"


def _one_pool_step(m):
    """A decode step whose cached and new positions (1 + 3) fill less than one pool, with
    the cache eager builds for the first position, and eager's logits for it."""
    step = next(c for c in m.components if c.name == "decoder")
    embeds = torch.randn(
        (2, 4, m.config.text_config.hidden_size), generator=torch.Generator().manual_seed(2)
    )
    mask = torch.ones((2, 4), dtype=torch.long)
    with torch.no_grad():
        first = _audio_lm.text_lm(m.model)(
            inputs_embeds=embeds[:, :1], attention_mask=mask[:, :1], use_cache=True
        )
        full = _audio_lm.text_lm(m.model)(inputs_embeds=embeds, attention_mask=mask).logits
    feeds = {
        "inputs_embeds": embeds[:, 1:],
        "attention_mask": mask,
        "cache": _audio_lm._cache_of(first),
    }
    return step, feeds, full[:, 1:]


def test_the_decoder_step_takes_positions_that_fit_one_pool_only_with_the_patch():
    m = untrained_model("glm5_next", task=TASK)
    step, feeds, expected = _one_pool_step(m)

    def exported(exclude):
        with export_patches(step.module, exclude=exclude), torch.no_grad():
            return torch.export.export(
                step.module,
                (),
                copy.deepcopy(step.input_sets[0]),
                dynamic_shapes=step.dynamic_shapes,
            )

    # every input set has more than 16 positions: the traced one too
    assert all(s["attention_mask"].shape[1] > 16 for s in step.input_sets), [
        s["attention_mask"].shape for s in step.input_sets
    ]
    without, with_patch = exported(("glm5_next_pool_count",)), exported(())
    # the calls take the cache flattened as the export registered it
    with export_patches(step.module), torch.no_grad():
        with pytest.raises(Exception, match=r"// 16 != 1"):
            without.module()(**copy.deepcopy(feeds))
        got = with_patch.module()(**copy.deepcopy(feeds))["logits"]
    assert float((got - expected).abs().max()) < 1e-4
