"""
An encoder-decoder in onnxruntime: T5 as three graphs and a greedy loop
=======================================================================

An encoder-decoder such as T5 is not one graph for a runtime: the encoder runs once per
input, then the decoder runs once per generated token. The first decoder step has no
cache and computes the cross-attention keys and values from the encoder's states; every
later step takes the ``EncoderDecoderCache`` the step before returned (self-attention
growing by one token, cross-attention fixed at the encoder's length). This recipe
exports the three graphs of an untrained ``t5`` to ONNX, writes the greedy loop with
plain numpy arrays, and checks that it generates the tokens of eager
``model.generate(..., do_sample=False)``.
"""

# %%
# The three graphs and their inputs
# ---------------------------------
#
# :func:`exportcheck.untrained_model` builds the model for the ``text2text-generation``
# task: three components, each a module with input sets and named dynamic shapes.
# Untrained with its default initialisation, T5 predicts token 0 whatever its input, and
# a loop that repeats one token proves little; a larger ``initializer_factor`` makes the
# tokens depend on the input.

import torch

from exportcheck import string_type, untrained_model

m = untrained_model("t5", initializer_factor=5.0)
model = m.model
for c in m.components:
    print(f"{c.name:13} {string_type(c.input_sets[0], with_shape=True)[:110]}")
step = m.components[2]
print("decoder dynamic shapes:", string_type(step.dynamic_shapes)[:200], "...")

# %%
# Conversion
# ----------
#
# Each graph is exported under ``torch.no_grad()``, as for inference: traced with
# gradients on, T5's attention fails in the ONNX decompositions ("Cannot view a tensor
# ... as a tensor with shape"). :func:`exportcheck.export_patches` registers the
# caches as pytrees and applies the known export fixes. The cache flattens into the
# self-attention keys and values of every layer, then the cross-attention ones. Each
# decoder graph
# returns the logits, then its cache in that order, so output ``1 + i`` is input
# ``3 + i`` of the next step.

import copy
import os
import tempfile

import torch.utils._pytree as pytree

from exportcheck import cache_pytrees, export_patches

layers = model.config.num_decoder_layers
cache_names = [
    f"{part}.{kind}.{i}"
    for part in ("self", "cross")
    for kind in ("key", "value")
    for i in range(layers)
]
names = {
    "encoder": (["input_ids", "attention_mask"], ["encoder_hidden_states"]),
    "decoder_init": (
        ["decoder_input_ids", "encoder_hidden_states", "attention_mask"],
        ["logits", *(f"present.{n}" for n in cache_names)],
    ),
    "decoder": (
        ["decoder_input_ids", "encoder_hidden_states", "attention_mask"]
        + [f"past.{n}" for n in cache_names],
        ["logits", *(f"present.{n}" for n in cache_names)],
    ),
}
with cache_pytrees():
    leaves = len(pytree.tree_leaves(step.input_sets[0]["cache"]))
assert leaves == len(cache_names), (leaves, cache_names)

workdir = tempfile.TemporaryDirectory(prefix="exportcheck-")  # removed at exit
paths = {}
for c in m.components:
    paths[c.name] = os.path.join(workdir.name, f"t5_{c.name}.onnx")
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
    shapes = {i.name: i.shape for i in session.get_inputs()[:3]}
    print(f"{name:13} {len(session.get_inputs())} inputs {shapes}")

# %%
# The reference: eager greedy generation
# --------------------------------------
#
# Two inputs of 11 tokens, the second padded by 3 as a tokenizer pads a batch.
# A neutral generation config: no end-of-sequence stop, no logits processor.

from transformers import GenerationConfig

n_new = 12
generator = torch.Generator().manual_seed(5)
input_ids = torch.randint(2, model.config.vocab_size, (2, 11), generator=generator)
attention_mask = torch.ones_like(input_ids)
attention_mask[1, -3:] = 0
input_ids[1, -3:] = model.config.pad_token_id
start = model.config.pad_token_id  # T5 starts decoding with its padding token
model.generation_config = GenerationConfig(decoder_start_token_id=start, pad_token_id=0)
with torch.no_grad():
    generated = model.generate(
        input_ids=input_ids,
        attention_mask=attention_mask,
        max_new_tokens=n_new,
        do_sample=False,
    )
expected_tokens = generated[:, 1:]  # after the start token
print("generate returned", tuple(generated.shape))

# %%
# The loop in onnxruntime
# -----------------------
#
# The encoder once; the first step on the start token; then one step per token, with
# the cache the step before returned. Nothing runs in PyTorch.

import numpy as np


def greedy_onnxruntime(input_ids, attention_mask, max_new_tokens):
    mask = attention_mask.numpy()
    (states,) = sessions["encoder"].run(
        None, {"input_ids": input_ids.numpy(), "attention_mask": mask}
    )
    next_ids = np.full((input_ids.shape[0], 1), start, dtype=np.int64)
    feeds = {"decoder_input_ids": next_ids, "encoder_hidden_states": states, "attention_mask": mask}
    logits, *cache = sessions["decoder_init"].run(None, feeds)
    tokens = []
    for t in range(max_new_tokens):
        next_ids = logits[:, -1].argmax(axis=-1, keepdims=True).astype(np.int64)
        tokens.append(next_ids)
        if t == max_new_tokens - 1:
            break
        feeds = {
            "decoder_input_ids": next_ids,
            "encoder_hidden_states": states,
            "attention_mask": mask,
            **{f"past.{n}": array for n, array in zip(cache_names, cache, strict=True)},
        }
        # the step's graph may not use every input (cross-attention comes from the cache)
        wanted = {i.name for i in sessions["decoder"].get_inputs()}
        logits, *cache = sessions["decoder"].run(
            None, {k: v for k, v in feeds.items() if k in wanted}
        )
        if t % 4 == 0:
            print(
                f"step {t + 1:2}: self-attention cache {cache[0].shape[2]}, cross {cache[2 * layers].shape[2]}"
            )
    return np.concatenate(tokens, axis=1)


tokens = torch.from_numpy(greedy_onnxruntime(input_ids, attention_mask, n_new))

# %%
# Check against generate
# ----------------------
#
# Every call ran on shapes the export did not see (encoder length 11, one new token,
# caches of 1 to 11 tokens). The tokens must be exactly those of eager generation.

for row, (got, expected) in enumerate(zip(tokens, expected_tokens, strict=True)):
    print(f"input {row}: onnxruntime {got.tolist()}")
    print(f"         generate    {expected.tolist()}")
torch.testing.assert_close(tokens, expected_tokens, rtol=0, atol=0)
assert all(len(set(row)) > 2 for row in tokens.tolist()), "a degenerate generation"
print(
    f"check passed: encoder + decoder steps in onnxruntime generate the same {tokens.shape[1]} "
    f"tokens as eager generate for {tokens.shape[0]} inputs, one of them padded"
)
