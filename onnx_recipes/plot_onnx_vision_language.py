"""
A vision-language model in onnxruntime: vision encoder, token embedding, decoder step
=====================================================================================

A vision-language model such as Gemma 3 reads an image as tokens. Its processor writes a
run of image placeholder tokens into the prompt; its forward embeds the prompt, runs the
vision encoder and projector on the pixels, and writes one feature row over the
embedding of each placeholder before the language model runs. A runtime needs that as
three graphs and one merge: the **vision encoder** (pixels to feature rows), the **token
embedding** (ids to embeddings) and the **decoder step** on embeddings with its cache;
the merge is a masked assignment the driver does. This recipe exports the three graphs
of an untrained, tiny ``gemma3`` to ONNX, writes the generation loop with numpy arrays,
and checks that it produces the tokens of eager ``model.generate(..., do_sample=False)``
on two images it never saw.
"""

# %%
# The three graphs and their inputs
# ---------------------------------
#
# :func:`exportcheck.untrained_model` builds the model for the ``image-text-to-text``
# task. The notes say what the tiny config changed so that its sizes agree as a
# checkpoint's do, and which dimensions stay static: Gemma 3's processor resizes every
# image to the vision config's ``image_size``.

import torch

from exportcheck import string_type, untrained_model

m = untrained_model("gemma3", task="image-text-to-text")
model = m.model
for note in m.notes:
    print("note:", note)
for c in m.components:
    print(f"{c.name:15} {string_type(c.input_sets[0], with_shape=True)[:90]}")

# %%
# Conversion
# ----------
#
# Each graph is exported under ``torch.no_grad()`` inside
# :func:`exportcheck.export_patches` (the cache registered as a pytree). The decoder's
# cache flattens into the keys, then the values of every layer; the step returns the
# logits, then its cache in that order.

import copy
import os
import tempfile

from torch.utils import _pytree as pytree

from exportcheck import export_patches

step = m.components[2]
with export_patches(model):  # registers the cache as a pytree
    n_cache = len(pytree.tree_leaves(step.input_sets[0]["cache"]))
names = {
    "vision_encoder": (["pixel_values"], ["image_features"]),
    "embed_tokens": (["input_ids"], ["inputs_embeds"]),
    "decoder": (
        ["inputs_embeds", "attention_mask", *(f"past.{i}" for i in range(n_cache))],
        ["logits", *(f"present.{i}" for i in range(n_cache))],
    ),
}
workdir = tempfile.TemporaryDirectory(prefix="exportcheck-")  # removed at exit
paths = {}
for c in m.components:
    paths[c.name] = os.path.join(workdir.name, f"gemma3_{c.name}.onnx")
    inputs, outputs = names[c.name]
    with export_patches(model), torch.no_grad():
        program = torch.export.export(
            c.module, (), kwargs=copy.deepcopy(c.input_sets[0]), dynamic_shapes=c.dynamic_shapes
        )
        torch.onnx.export(
            program,
            (),
            paths[c.name],
            kwargs=copy.deepcopy(c.input_sets[0]),
            input_names=inputs,
            output_names=outputs,
            dynamo=True,
        )

import onnxruntime

sessions = {
    name: onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    for name, path in paths.items()
}
for name, session in sessions.items():
    first = session.get_inputs()[0]
    print(f"{name:15} {len(session.get_inputs())} inputs, {first.name} {first.shape}")

# %%
# Two images and a prompt the export never saw
# --------------------------------------------
#
# Each row of the prompt is three text tokens, the image's placeholders (as many as the
# vision encoder returns feature rows for one image, which is what Gemma 3's processor
# writes) and two text tokens. Random pixels stand for the processor's normalized image.

config = model.config
token = config.image_token_id
size = config.vision_config.image_size
generator = torch.Generator().manual_seed(4)
pixels = torch.randn((2, 3, size, size), generator=generator)
with torch.no_grad():
    per_image = m.components[0].module(pixel_values=pixels[:1]).shape[0]
vocab = config.get_text_config().vocab_size
text = torch.randint(10, vocab, (2, 5), generator=generator)
text[text == token] = 11
input_ids = torch.cat([text[:, :3], torch.full((2, per_image), token), text[:, 3:]], 1)
attention_mask = torch.ones_like(input_ids)
print(f"pixel_values {tuple(pixels.shape)}, prompt {tuple(input_ids.shape)}: "
      f"{per_image} image tokens per row")  # fmt: skip

# %%
# The reference: eager greedy generation
# --------------------------------------
#
# A neutral generation config: no end-of-sequence stop, no logits processor.

from transformers import GenerationConfig

n_new = 8
model.generation_config = GenerationConfig(pad_token_id=0)
with torch.no_grad():
    generated = model.generate(
        input_ids=input_ids,
        attention_mask=attention_mask,
        pixel_values=pixels,
        max_new_tokens=n_new,
        do_sample=False,
    )
expected_tokens = generated[:, -n_new:]

# %%
# The generation loop in onnxruntime
# ----------------------------------
#
# The vision encoder once; the embeddings of the prompt with the image features written
# over the placeholders, in order (what ``masked_scatter`` does in the forward); the
# decoder step needs a cache of at least one position, so the prompt's first position
# runs in eager PyTorch and the rest goes through the decoder graph; then one step per
# token with the cache the step before returned.

import numpy as np


def generate_onnx(pixels, input_ids, max_new_tokens):
    ids = input_ids.numpy()
    (features,) = sessions["vision_encoder"].run(None, {"pixel_values": pixels.numpy()})
    (embeds,) = sessions["embed_tokens"].run(None, {"input_ids": ids})
    placeholders = ids == token
    if placeholders.sum() != features.shape[0]:
        raise ValueError(
            f"{placeholders.sum()} image tokens in the prompt, {features.shape[0]} features"
        )
    embeds[placeholders] = features  # row-major order: the rows' images in turn
    with export_patches(model), torch.no_grad():  # the cache flattens as a pytree
        first = model(inputs_embeds=torch.from_numpy(embeds[:, :1]), use_cache=True)
        cache = [t.numpy() for t in pytree.tree_leaves(first.cache)]
    mask = np.ones(ids.shape, dtype=np.int64)
    logits, *cache = sessions["decoder"].run(
        None, dict(zip(names["decoder"][0], [embeds[:, 1:], mask, *cache], strict=True))
    )
    tokens = []
    for t in range(max_new_tokens):
        next_ids = logits[:, -1].argmax(axis=-1, keepdims=True).astype(np.int64)
        tokens.append(next_ids)
        if t == max_new_tokens - 1:
            break
        (embeds,) = sessions["embed_tokens"].run(None, {"input_ids": next_ids})
        mask = np.ones((ids.shape[0], mask.shape[1] + 1), dtype=np.int64)
        logits, *cache = sessions["decoder"].run(
            None, dict(zip(names["decoder"][0], [embeds, mask, *cache], strict=True))
        )
        if t % 3 == 0:
            print(f"step {t + 1}: cache of {cache[0].shape[2]} positions")
    return np.concatenate(tokens, axis=1)


tokens = torch.from_numpy(generate_onnx(pixels, input_ids, n_new))

# %%
# Check against generate
# ----------------------
#
# Two images, a prompt of text and image tokens and caches of the prompt's length and
# more: none of these was traced. The tokens must be exactly those of eager generation;
# the two rows must differ (their images and text do) and hold more than two tokens in
# all, so that a loop stuck on one token cannot pass.

for row, (got, expected) in enumerate(zip(tokens, expected_tokens, strict=True)):
    print(f"image {row}: onnxruntime {got.tolist()}")
    print(f"         generate    {expected.tolist()}")
torch.testing.assert_close(tokens, expected_tokens, rtol=0, atol=0)
rows = tokens.tolist()
assert rows[0] != rows[1] and len(set(rows[0] + rows[1])) > 2, "a degenerate generation"
print(
    f"check passed: the Gemma 3 vision encoder, embedding and decoder step in onnxruntime "
    f"generate the same {tokens.shape[1]} tokens as eager generate for {tokens.shape[0]} "
    "unseen images"
)
