"""
Speech recognition to ONNX: a wav2vec2 CTC model on audio of any length
=======================================================================

A CTC speech model turns a waveform into one row of logits per 20 ms frame; how many
frames depends on how long the clip is. This recipe exports an untrained tiny wav2vec2
CTC model to ONNX with a dynamic audio length, runs it in onnxruntime on clips of
lengths the export never saw, and checks that the logits and the greedy CTC
transcription (best token per frame, repeats collapsed, blanks dropped) equal eager
PyTorch's.
"""

# %%
# A tiny untrained wav2vec2 with a CTC head
# -----------------------------------------
#
# exportcheck builds it from a shrunk config: seven strided convolutions turn 16 kHz
# samples into frames (one every 320 samples), two transformer layers follow, and a
# linear head scores a 32-token vocabulary whose token 0 is the CTC blank.

import torch

from exportcheck import string_type, untrained_model

m = untrained_model("wav2vec2", task="automatic-speech-recognition-ctc")
model, config = m.model, m.config
print(
    f"{type(model).__name__}: {sum(p.numel() for p in model.parameters()) / 1e3:.0f} k parameters"
)
print(f"vocabulary {config.vocab_size}, blank id {config.pad_token_id}")

# %%
# Export with a dynamic batch and audio length
# --------------------------------------------
#
# The export sees one batch of two clips of 4000 samples (a quarter of a second). The
# length needs a lower bound: below 400 samples the convolutions produce no frame at
# all, so the export declares 1680 samples (five frames) to 16000 (one second).

import os
import tempfile

inputs = {"input_values": torch.randn(2, 4000, generator=torch.Generator().manual_seed(0))}
print("export inputs:", string_type(inputs, with_shape=True))
batch = torch.export.Dim("batch", min=1, max=16)
audio_length = torch.export.Dim("audio_length", min=1680, max=16000)
dynamic_shapes = {"input_values": {0: batch, 1: audio_length}}

workdir = tempfile.TemporaryDirectory(prefix="exportcheck-")  # removed at exit
onnx_path = os.path.join(workdir.name, "wav2vec2_ctc.onnx")
program = torch.onnx.export(
    model,
    (),
    kwargs=inputs,
    dynamic_shapes=dynamic_shapes,
    input_names=["input_values"],
    output_names=["logits"],
    dynamo=True,
)
program.save(onnx_path)
print("graph inputs:", [(i.name, i.shape) for i in program.model.graph.inputs])
print("graph outputs:", [(o.name, o.shape) for o in program.model.graph.outputs])

# %%
# Greedy CTC decoding
# -------------------
#
# The transcription of a row is the best token of each frame, with consecutive repeats
# collapsed and blanks removed. It is the same function of the logits whichever runtime
# computed them.


def ctc_greedy(logits, blank):
    """Token ids of each row: argmax per frame, repeats collapsed, blanks dropped."""
    decoded = []
    for best in logits.argmax(-1).tolist():
        tokens, previous = [], None
        for token in best:
            if token != previous and token != blank:
                tokens.append(token)
            previous = token
        decoded.append(tokens)
    return decoded


# %%
# Clips the export did not see
# ----------------------------
#
# One clip alone, three clips at once, and a half-second clip: each runs in
# onnxruntime and eagerly, and both the logits and the decoded tokens are compared.

import numpy as np
import onnxruntime

session = onnxruntime.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
generator = torch.Generator().manual_seed(1)
worst, clips = 0.0, [(1, 2400), (3, 5600), (2, 8000)]
for rows, samples in clips:
    audio = torch.randn(rows, samples, generator=generator)
    with torch.no_grad():
        expected = model(input_values=audio).logits.numpy()
    (got,) = session.run(["logits"], {"input_values": audio.numpy()})
    diff = float(np.abs(expected - got).max())
    worst = max(worst, diff)
    same = ctc_greedy(expected, config.pad_token_id) == ctc_greedy(got, config.pad_token_id)
    print(
        f"audio {rows}x{samples} -> logits {'x'.join(map(str, got.shape))}, "
        f"max abs diff {diff:.3g}, same transcription: {same}, "
        f"first row: {ctc_greedy(got, config.pad_token_id)[0][:8]}"
    )
    assert same, (ctc_greedy(expected, config.pad_token_id), ctc_greedy(got, config.pad_token_id))

# %%
# On three batches whose lengths the export never saw, the ONNX model's logits match
# eager within float rounding and decode to the same tokens: one graph serves clips of
# any length within the declared bounds.

assert worst <= 1e-4, f"max abs diff {worst} > 1e-4"
print(
    f"check passed: onnxruntime CTC logits match eager within {worst:.3g} on "
    f"{len(clips)} unseen audio lengths, with identical greedy transcriptions"
)
