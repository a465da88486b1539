"""Llama 4 (image-text-to-text): its tiny config's vision widths fitted to one another, its
forward's output repaired (``llama4_image_outputs``), its vision tower's complex rotary
table kept complex by the build, and the image features taken after the projector the
forward applies to what get_image_features returns. Each test checks against the model's
own forward, on images and prompts the validation's sets do not hold."""

import pytest
import torch

from exportcheck import untrained_model
from exportcheck.patches import eager_fixes

pytestmark = pytest.mark.models

TASK = "image-text-to-text"


@pytest.fixture(scope="module")
def llama4():
    return untrained_model("llama4", task=TASK)


def _parts(m):
    return {c.name: c.module for c in m.components}


def _pixels(images, seed):
    return torch.randn((images, 3, 112, 112), generator=torch.Generator().manual_seed(seed))


def test_the_forward_fails_without_its_repair(llama4):
    # transformers 5.24's forward reads a field its language model's output lacks (when
    # this fails, transformers fixed it: drop the patch)
    ids = torch.tensor([[5, 6, 7]])
    with torch.no_grad():
        with pytest.raises(AttributeError, match="image_outputs"):
            llama4.model(input_ids=ids)
        with eager_fixes(llama4.model) as names:
            repaired = llama4.model(input_ids=ids).logits
        text = llama4.model.language_model(input_ids=ids).logits
    assert names == ["llama4_image_outputs"]
    assert torch.equal(repaired, text)  # the logits are the language model's own


def test_the_rotary_table_stays_complex(llama4):
    # the build casts with float(), not to(float32), which drops the imaginary part
    rotary = llama4.model.vision_model.rotary_embedding
    assert rotary.freqs_ci.is_complex()
    torch.testing.assert_close(rotary.freqs_ci, rotary._compute_freqs_ci(rotary.config))
    assert float(rotary.freqs_ci.imag.abs().max()) > 0.5


def test_the_split_equals_the_forward_on_unseen_images(llama4):
    parts, config = _parts(llama4), llama4.config
    pixels = _pixels(3, 11)
    with torch.no_grad():
        features = parts["vision_encoder"](pixel_values=pixels)
    per_image = features.shape[0] // 3
    assert features.shape == (3 * per_image, config.text_config.hidden_size)
    ids = torch.randint(1, 900, (1, 3 * per_image + 7), generator=torch.Generator().manual_seed(12))
    ids[0, 2 : 2 + 3 * per_image] = config.image_token_id
    with torch.no_grad(), eager_fixes(llama4.model):
        want = llama4.model(input_ids=ids, pixel_values=pixels).logits
        embeds = parts["embed_tokens"](input_ids=ids)
        embeds[ids == config.image_token_id] = features
        without = llama4.model(input_ids=ids).logits
        got = llama4.model.language_model(inputs_embeds=embeds).logits
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    # the image is read: without its features the logits move far beyond the tolerance
    assert float((without - want).abs().max()) > 1e-3


def test_the_encoder_ends_with_the_projector(llama4):
    model = llama4.model
    pixels = _pixels(1, 13)
    with torch.no_grad():
        adapter = model.get_image_features(pixel_values=pixels).last_hidden_state
        features = _parts(llama4)["vision_encoder"](pixel_values=pixels)
    # get_image_features stops at the vision adapter, whose rows are wider than the text
    assert adapter.shape[-1] == model.config.vision_config.projector_output_dim
    assert adapter.shape[-1] != model.config.text_config.hidden_size
    torch.testing.assert_close(
        features, model.multi_modal_projector(adapter.reshape(-1, adapter.shape[-1]))
    )
