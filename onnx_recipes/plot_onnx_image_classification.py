"""
An image classifier to ONNX for any batch size and resolution
=============================================================

A vision transformer learns one position embedding per patch of its training
resolution. Called with ``interpolate_pos_encoding=True``, it resizes them to the
image it gets, so one ONNX graph can serve every resolution. This recipe exports an
untrained tiny ViT with dynamic batch, height and width, runs it in onnxruntime on
batch sizes and resolutions the export did not see and compares the logits with eager
PyTorch; then does the same for a ConvNeXt, a convolutional network that needs no
interpolation.
"""

# %%
# An untrained tiny ViT
# ---------------------
#
# The config keeps ViT's architecture at a small size: 64x64 images cut into 16x16
# patches, so the position table holds 4x4 patches (plus the class token).

import torch
from transformers import ViTConfig, ViTForImageClassification

torch.manual_seed(0)
config = ViTConfig(
    image_size=64,
    patch_size=16,
    hidden_size=64,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=128,
    num_labels=10,
)
vit = ViTForImageClassification(config).eval()
print(f"{type(vit).__name__}: {sum(p.numel() for p in vit.parameters()) / 1e6:.2f} M parameters")

# %%
# The exported module: pixel values in, logits out
# ------------------------------------------------
#
# ``interpolate_pos_encoding`` is a Python flag, not a tensor: a small wrapper sets it
# so that the graph has a single input.


class Classifier(torch.nn.Module):
    def __init__(self, model, interpolate):
        super().__init__()
        self.model = model
        self.interpolate = interpolate

    def forward(self, pixel_values):
        if self.interpolate:
            return self.model(pixel_values, interpolate_pos_encoding=True).logits
        return self.model(pixel_values).logits


vit_module = Classifier(vit, interpolate=True).eval()

# %%
# Traced at the training resolution, height and width become constants
# ----------------------------------------------------------------------
#
# At its own resolution the model returns the position table as it is, without
# interpolating: a branch on the image's size. Traced at 64x64, ``torch.export`` keeps
# that branch and can only specialize height and width to 64. Height and width are
# declared as multiples of the patch size, as the image processor gives them.

from exportcheck import string_type

batch = torch.export.Dim("batch", min=1, max=16)
patches_h = torch.export.Dim("patches_h", min=5, max=12)
patches_w = torch.export.Dim("patches_w", min=5, max=12)
dynamic_shapes = {"pixel_values": {0: batch, 2: 16 * patches_h, 3: 16 * patches_w}}
at_training_size = {"pixel_values": torch.rand(2, 3, 64, 64)}
height = torch.export.Dim("height", min=16, max=192)
width = torch.export.Dim("width", min=16, max=192)
try:
    torch.export.export(
        vit_module,
        (),
        kwargs=at_training_size,
        dynamic_shapes={"pixel_values": {0: batch, 2: height, 3: width}},
    )
except torch._dynamo.exc.UserError as e:
    print("export at 64x64 failed:", str(e).splitlines()[0])
else:
    raise AssertionError("the export at the training resolution passed: update the recipe")

# %%
# The fix: trace at a larger resolution and declare only larger ones (at least five
# patches a side). The branch is then never taken, whatever the size, and the graph
# interpolates the table for every image.

import os
import tempfile

seen = {"pixel_values": torch.rand(2, 3, 96, 128)}
print("export inputs:", string_type(seen, with_shape=True))
workdir = tempfile.TemporaryDirectory(prefix="exportcheck-")  # removed at exit


def export_to_onnx(module, name):
    path = os.path.join(workdir.name, f"{name}.onnx")
    program = torch.onnx.export(
        module,
        (),
        kwargs=seen,
        dynamic_shapes=dynamic_shapes,
        input_names=["pixel_values"],
        output_names=["logits"],
        dynamo=True,
    )
    program.save(path)
    return path


vit_path = export_to_onnx(vit_module, "vit")
print(f"saved {os.path.getsize(vit_path) / 2**20:.2f} MiB")

# %%
# Unseen batch sizes and resolutions, eager and onnxruntime
# ---------------------------------------------------------
#
# Four shapes the export did not see, one of them at the declared upper bounds; the
# logits of every image are compared with eager's.

import onnxruntime

UNSEEN = [(1, 80, 80), (3, 112, 96), (5, 160, 80), (16, 192, 192)]


def max_diffs(module, path):
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    diffs = {}
    for b, h, w in UNSEEN:
        x = torch.rand(b, 3, h, w)
        with torch.no_grad():
            expected = module(x).numpy()
        got = session.run(["logits"], {"pixel_values": x.numpy()})[0]
        diffs[f"batch={b} {h}x{w}"] = float(abs(expected - got).max())
    return diffs


vit_diffs = max_diffs(vit_module, vit_path)
for shape, diff in vit_diffs.items():
    print(f"ViT      {shape:22} max abs diff {diff:.2e}")

# %%
# A ConvNeXt the same way
# -----------------------
#
# A convolutional network has no position table: it takes any resolution, and the
# same dynamic shapes hold. Its stem and downsampling layers divide the image by 32,
# which every declared size (a multiple of 16 from 80) keeps whole or floors the same
# way in both runtimes.

from transformers import ConvNextConfig, ConvNextForImageClassification

torch.manual_seed(0)
convnext_config = ConvNextConfig(hidden_sizes=[16, 32, 64, 128], depths=[1, 1, 2, 1], num_labels=10)
convnext = ConvNextForImageClassification(convnext_config).eval()
convnext_module = Classifier(convnext, interpolate=False).eval()
convnext_path = export_to_onnx(convnext_module, "convnext")
convnext_diffs = max_diffs(convnext_module, convnext_path)
for shape, diff in convnext_diffs.items():
    print(f"ConvNeXt {shape:22} max abs diff {diff:.2e}")

# %%
# The discrepancies of both models on each unseen shape, against the tolerance of the
# check; the gap between the bars and the line is the margin the check leaves.

# sphinx_gallery_thumbnail_number = 1
import matplotlib.pyplot as plt
import numpy as np

tolerance = 1e-4
positions = np.arange(len(UNSEEN))
fig, ax = plt.subplots(figsize=(7, 3.4))
for offset, (name, diffs) in zip(
    (-0.2, 0.2), {"ViT": vit_diffs, "ConvNeXt": convnext_diffs}.items(), strict=True
):
    ax.bar(positions + offset, list(diffs.values()), width=0.4, label=name)
ax.axhline(tolerance, color="tab:red", linestyle="--", label=f"tolerance {tolerance:g}")
ax.set_xticks(positions, list(vit_diffs))
ax.set_yscale("log")
ax.set_ylabel("max abs diff of the logits")
ax.legend(fontsize=8)
ax.set_title("onnxruntime vs eager on unseen batch sizes and resolutions")
fig.tight_layout()

# %%
# Both graphs give eager's logits within float rounding on batch sizes from 1 to 16
# and on square and oblong images from 80x80 to 192x192: one ONNX file per model
# serves every resolution.

worst = max(*vit_diffs.values(), *convnext_diffs.values())
assert worst <= tolerance, f"max abs diff {worst} > {tolerance}"
print(
    f"check passed: ViT and ConvNeXt logits through onnxruntime match eager within "
    f"{worst:.2g} on {len(UNSEEN)} unseen batch sizes and resolutions each"
)
