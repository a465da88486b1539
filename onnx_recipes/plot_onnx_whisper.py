"""
Whisper in onnxruntime: an audio encoder, a decoder with its cache, a transcription loop
========================================================================================

Speech recognition with Whisper is three graphs for a runtime: the audio encoder runs
once on the log-mel features of a clip, the first decoder step computes the
cross-attention keys and values from the encoder's states, and every later step takes
the ``EncoderDecoderCache`` the step before returned. Whisper's encoder accepts one
length only: its feature extractor pads every clip with silence to 30 seconds (3000
frames), so the frames stay static while the batch, the tokens and the cache are
dynamic. This recipe exports the three graphs of an untrained ``whisper`` to ONNX,
writes the transcription loop with numpy arrays, and checks that it produces the tokens
of eager ``model.generate(..., do_sample=False)`` on clips it never saw.
"""

# %%
# The three graphs and their inputs
# ---------------------------------
#
# :func:`exportcheck.untrained_model` builds the model for the
# ``automatic-speech-recognition`` task; the encoder's inputs come from
# ``WhisperFeatureExtractor`` applied to random waveforms. Untrained weights of the
# default scale make every step predict the same token, so a larger ``init_std``
# makes the tokens depend on the audio.

import torch

from exportcheck import string_type, untrained_model

m = untrained_model("whisper", task="automatic-speech-recognition", init_std=0.5)
model = m.model
for note in m.notes:
    print("note:", note)
for c in m.components:
    print(f"{c.name:13} {string_type(c.input_sets[0], with_shape=True)[:100]}")
print("encoder dynamic shapes:", string_type(m.components[0].dynamic_shapes))

# %%
# Conversion
# ----------
#
# Each graph is exported under ``torch.no_grad()`` inside
# :func:`exportcheck.export_patches` (the caches registered as pytrees). The cache
# flattens into the self-attention keys and values of every layer, then the
# cross-attention ones; each decoder graph returns the logits, then its cache in that
# order.

import copy
import os
import tempfile

from exportcheck import export_patches

layers = model.config.decoder_layers
cache_names = [
    f"{part}.{kind}.{i}"
    for part in ("self", "cross")
    for kind in ("key", "value")
    for i in range(layers)
]
present = ["logits", *(f"present.{n}" for n in cache_names)]
names = {
    "encoder": (["input_features"], ["encoder_hidden_states"]),
    "decoder_init": (["decoder_input_ids", "encoder_hidden_states"], present),
    "decoder": (
        ["decoder_input_ids", "encoder_hidden_states", *(f"past.{n}" for n in cache_names)],
        present,
    ),
}

workdir = tempfile.TemporaryDirectory(prefix="exportcheck-")  # removed at exit
paths = {}
for c in m.components:
    paths[c.name] = os.path.join(workdir.name, f"whisper_{c.name}.onnx")
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
    shapes = {i.name: i.shape for i in session.get_inputs()[:2]}
    print(f"{name:13} {len(session.get_inputs())} inputs {shapes}")

# %%
# Two clips the export never saw
# ------------------------------
#
# Three seconds and one and a half seconds of random audio at 16 kHz, through the
# feature extractor as a user would call it: both padded with silence to 3000 frames.

from transformers import GenerationConfig, WhisperFeatureExtractor

generator = torch.Generator().manual_seed(7)
clips = [0.1 * torch.randn(n, generator=generator).numpy() for n in (48000, 24000)]
extractor = WhisperFeatureExtractor(feature_size=model.config.num_mel_bins)
features = extractor(clips, sampling_rate=16000, return_tensors="pt").input_features
print("input_features", tuple(features.shape))

# %%
# The reference: eager greedy generation
# --------------------------------------
#
# A neutral generation config: the decoder starts with its start token, no
# end-of-sequence stop, no forced language or task tokens, no logits processor.

n_new = 10
start = model.config.decoder_start_token_id
model.generation_config = GenerationConfig(decoder_start_token_id=start, pad_token_id=0)
with torch.no_grad():
    generated = model.generate(features, max_new_tokens=n_new, do_sample=False)
expected_tokens = generated[:, -n_new:]
print("generate returned", tuple(generated.shape))

# %%
# The transcription loop in onnxruntime
# -------------------------------------
#
# The encoder once; the first step on the start token; then one step per token with
# the cache the step before returned. Nothing runs in PyTorch.

import numpy as np


def transcribe(features, max_new_tokens):
    (states,) = sessions["encoder"].run(None, {"input_features": features.numpy()})
    ids = np.full((features.shape[0], 1), start, dtype=np.int64)
    logits, *cache = sessions["decoder_init"].run(
        None, {"decoder_input_ids": ids, "encoder_hidden_states": states}
    )
    wanted = {i.name for i in sessions["decoder"].get_inputs()}
    tokens = []
    for t in range(max_new_tokens):
        ids = logits[:, -1].argmax(axis=-1, keepdims=True).astype(np.int64)
        tokens.append(ids)
        if t == max_new_tokens - 1:
            break
        feeds = {
            "decoder_input_ids": ids,
            "encoder_hidden_states": states,
            **{f"past.{n}": array for n, array in zip(cache_names, cache, strict=True)},
        }
        # the step may not use every input: cross-attention reads the cache
        logits, *cache = sessions["decoder"].run(
            None, {k: v for k, v in feeds.items() if k in wanted}
        )
        if t % 3 == 0:
            print(
                f"step {t + 1}: self-attention cache {cache[0].shape[2]}, "
                f"cross-attention {cache[2 * layers].shape[2]} (the encoder's states)"
            )
    return np.concatenate(tokens, axis=1)


tokens = torch.from_numpy(transcribe(features, n_new))

# %%
# Check against generate
# ----------------------
#
# Batch 2, one new token per step and caches of 1 to 9 tokens: none of these shapes
# was traced. The tokens must be exactly those of eager generation, and must not be
# one token repeated.

for row, (got, expected) in enumerate(zip(tokens, expected_tokens, strict=True)):
    print(f"clip {row}: onnxruntime {got.tolist()}")
    print(f"        generate    {expected.tolist()}")
torch.testing.assert_close(tokens, expected_tokens, rtol=0, atol=0)
assert all(len(set(row)) > 2 for row in tokens.tolist()), "a degenerate transcription"
print(
    f"check passed: the Whisper encoder and decoder steps in onnxruntime transcribe "
    f"{tokens.shape[0]} unseen clips into the same {tokens.shape[1]} tokens as eager generate"
)
