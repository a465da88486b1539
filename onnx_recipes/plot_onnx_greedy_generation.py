"""
Greedy generation in onnxruntime: a decode loop around an ONNX step
===================================================================

An ONNX model of an LLM computes one forward step; generating text means running it
in a loop and feeding the cache it returns back as inputs. This recipe converts a
decode step of the untrained ``arnir0/Tiny-LLM`` to ONNX, writes the greedy loop in
onnxruntime with plain numpy arrays, and checks that it generates exactly the 20
tokens of eager ``model.generate(..., do_sample=False)``.
"""

# %%
# The model and its decode step
# -----------------------------
#
# :func:`exportcheck.untrained_model` gives the model, inputs of one decode step
# (2 sequences, 3 new tokens, 30 cached) and dynamic batch, sequence and cache length.

import torch

from exportcheck import string_type, untrained_model

tiny = untrained_model("arnir0/Tiny-LLM")
model, config = tiny.model, tiny.config
n_layers = config.num_hidden_layers
print("export inputs:", string_type(tiny.inputs, with_shape=True))
print("dynamic shapes:", string_type(tiny.dynamic_shapes))

# %%
# Conversion
# ----------
#
# :func:`exportcheck.export_patches` registers the cache as a pytree and applies the
# known export fixes. The flattened inputs are the ids, the mask, then the keys and
# the values of every layer; the outputs are the logits, then the cache in that
# same order, so output ``1 + i`` becomes input ``2 + i`` at the next step.

import copy
import os
import tempfile

from exportcheck import export_patches

input_names = [
    "input_ids",
    "attention_mask",
    *[f"past_key_values.{i}.key" for i in range(n_layers)],
    *[f"past_key_values.{i}.value" for i in range(n_layers)],
]
output_names = [
    "logits",
    *[f"present.{i}.key" for i in range(n_layers)],
    *[f"present.{i}.value" for i in range(n_layers)],
]

workdir = tempfile.TemporaryDirectory(prefix="exportcheck-")  # removed at exit
onnx_path = os.path.join(workdir.name, "tiny_llm_step.onnx")
with export_patches(model):
    torch.onnx.export(
        model,
        (),
        onnx_path,
        kwargs=copy.deepcopy(tiny.inputs),
        dynamic_shapes=tiny.dynamic_shapes,
        input_names=input_names,
        output_names=output_names,
        dynamo=True,
    )

import onnxruntime

session = onnxruntime.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
for kind, values in (("input ", session.get_inputs()), ("output", session.get_outputs())):
    for v in values:
        print(f"{kind} {v.name:26} {v.type:16} {v.shape}")

# %%
# The reference: eager greedy generation
# --------------------------------------
#
# Two prompts of 8 random tokens, 20 new tokens each, without sampling.

n_new = 20
generator = torch.Generator().manual_seed(1)
prompt = torch.randint(0, config.vocab_size, (2, 8), generator=generator)
with torch.no_grad():
    generated = model.generate(
        prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=n_new, do_sample=False
    )
expected_tokens = generated[:, prompt.shape[1] :]
print("generate returned", tuple(generated.shape), "-> new tokens", tuple(expected_tokens.shape))

# %%
# The loop in onnxruntime
# -----------------------
#
# The exported step needs a cache of at least one token, so the prefill of the
# prompt without its last token runs in eager PyTorch (a second, cache-free ONNX
# model could do it). Every step then runs in onnxruntime only: one new token, the
# argmax of the last logits, the returned cache fed back by position.

import numpy as np
import torch.utils._pytree as pytree


def greedy_onnxruntime(session, prompt, max_new_tokens):
    batch = prompt.shape[0]
    with torch.no_grad(), export_patches(model):
        prefill = model(input_ids=prompt[:, :-1], attention_mask=torch.ones_like(prompt[:, :-1]))
        cache = [t.numpy() for t in pytree.tree_leaves(prefill.cache)]
    next_ids = prompt[:, -1:].numpy()
    new_tokens = []
    for step in range(max_new_tokens):
        cache_length = cache[0].shape[2]
        mask = np.ones((batch, cache_length + 1), dtype=np.int64)
        feeds = dict(zip(input_names, [next_ids, mask, *cache], strict=True))
        logits, *cache = session.run(None, feeds)
        next_ids = logits[:, -1].argmax(axis=-1, keepdims=True).astype(np.int64)
        new_tokens.append(next_ids)
        if step % 5 == 0:
            print(f"step {step:2}: cache in {cache_length:2} tokens, out {cache[0].shape[2]}")
    return np.concatenate(new_tokens, axis=1)


tokens = torch.from_numpy(greedy_onnxruntime(session, prompt, n_new))
print("onnxruntime loop tokens:", tuple(tokens.shape))

# %%
# Check against generate
# ----------------------
#
# Every step ran on shapes the export did not see (batch 2, one new token, cache of
# 7 to 26 tokens). The tokens must be exactly those of eager greedy generation.

for row, (got, expected) in enumerate(zip(tokens, expected_tokens, strict=True)):
    print(f"prompt {row}: onnxruntime {got.tolist()}")
    print(f"             generate {expected.tolist()}")
torch.testing.assert_close(tokens, expected_tokens, rtol=0, atol=0)
print(
    f"check passed: the onnxruntime decode loop generates the same {tokens.shape[1]} tokens "
    f"as eager greedy generate for {tokens.shape[0]} prompts"
)

# %%
# One ONNX decode step, run in onnxruntime in a loop that feeds its cache outputs
# back as inputs, generates exactly the tokens of eager greedy generation.
