"""
Images of any resolution: exporting a Qwen2-VL vision encoder
=============================================================

Qwen2-VL and its relatives do not resize images to one size. The processor cuts each
image into patches of 14 pixels, flattens the patches of every image into one sequence
and returns the grid of each image (``image_grid_thw``: frames, rows and columns of
patches). The vision encoder then reads the grids' *values*: it gives every patch a
rotary position from its row and column, lets each image attend to itself only, and
splits its output per image. This recipe shows the export failing on those values, then
the fix: compute what depends on the grids outside the graph, as the processor side of
a runtime would, and run the per-image attention as one masked attention. It ends with
the exported encoder on image sizes it never saw, equal to the model's own
``get_image_features``.
"""

# %%
# The model and one input set
# ---------------------------
#
# :func:`exportcheck.untrained_model` builds a tiny, untrained ``qwen2_vl`` for the
# ``image-text-to-text`` task. Its first input set holds two images of 4x4 and 4x6
# patches: 40 rows of flattened patches.

import torch

from exportcheck import string_type, untrained_model

m = untrained_model("qwen2_vl", task="image-text-to-text")
model = m.model
traced = m.components[0].input_sets[0]
pixel_values, grid = traced["pixel_values"], traced["image_grid_thw"]
print("pixel_values", tuple(pixel_values.shape), "grids", grid.tolist())

# %%
# The direct export fails
# -----------------------
#
# A module that calls ``get_image_features`` with the patches and the grids, the number
# of patches and of images dynamic. The export stops on a guard over a value read from
# the grids (``.tolist()`` in the vision attention, which runs one attention per image).

from torch.export import Dim
from torch.fx.experimental.symbolic_shapes import GuardOnDataDependentSymNode

from exportcheck import export_patches


class DirectEncoder(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, pixel_values, image_grid_thw):
        out = self.model.get_image_features(
            pixel_values=pixel_values, image_grid_thw=image_grid_thw
        )
        return torch.cat(list(out.pooler_output))


direct = DirectEncoder(model)
shapes = {"pixel_values": {0: Dim("patches", max=2048)}, "image_grid_thw": {0: Dim("images")}}
try:
    with torch.no_grad():
        torch.export.export(direct, (pixel_values, grid), dynamic_shapes=shapes)
except GuardOnDataDependentSymNode as e:
    print("export failed:", str(e).splitlines()[0])

# %%
# What depends on the grids, computed outside
# -------------------------------------------
#
# transformers ships the functions that derive the encoder's tensors from the grids
# (``transformers.vision_utils``), and the vision tower takes their results instead of
# computing them. :func:`exportcheck.tasks.image_text_to_text.grid_inputs` calls them:
# the rotary position (row, column) of every patch and the cumulative lengths of the
# images. A runtime computes the same in a few lines of numpy before calling the graph.

from exportcheck.tasks.image_text_to_text import grid_inputs

extra = grid_inputs(model, grid)
print(string_type(extra, with_shape=True))
print("cu_seqlens", extra["cu_seqlens"].tolist())

# %%
# One attention for every image
# -----------------------------
#
# The remaining loop is the attention: outside flash attention, the tower splits the
# patches per image and attends image by image. The patch ``vision_segment_attention``
# (installed by :func:`exportcheck.export_patches`) runs one scaled-dot-product
# attention under a block-diagonal mask built from ``cu_seqlens`` instead: each patch
# attends to the patches of its own image. The task's vision encoder component takes
# the patches, the grids and the precomputed tensors, with the number of image tokens
# and of images dynamic.

encoder = m.components[0]
print("dynamic shapes:", string_type(encoder.dynamic_shapes))
with export_patches(encoder.module) as applied, torch.no_grad():
    program = torch.export.export(
        encoder.module, (), kwargs=dict(traced), dynamic_shapes=encoder.dynamic_shapes
    )
print("patches applied:", [r.name for r in applied if r.changed or r.replaced])
print(
    "graph inputs:",
    [s.arg.name for s in program.graph_signature.input_specs if s.kind.name == "USER_INPUT"],
)

# %%
# Check on resolutions the export never saw
# -----------------------------------------
#
# One image of 6x8 patches, then three images of 2x2, 8x4 and 4x10 patches. The
# exported encoder gets the patches and what :func:`grid_inputs` computes from the
# grids; the reference is the model's own ``get_image_features``, which computes all of
# it from the grids in eager PyTorch, its per-image attention included.

generator = torch.Generator().manual_seed(5)
width = pixel_values.shape[1]
worst = 0.0
for grids in ([(1, 6, 8)], [(1, 2, 2), (1, 8, 4), (1, 4, 10)]):
    thw = torch.tensor(grids)
    pixels = torch.randn((int(thw.prod(-1).sum()), width), generator=generator)
    with torch.no_grad():
        got = program.module()(pixel_values=pixels, image_grid_thw=thw, **grid_inputs(model, thw))
        own = model.get_image_features(pixel_values=pixels, image_grid_thw=thw)
    expected = torch.cat(list(own.pooler_output))
    diff = float((got - expected).abs().max())
    worst = max(worst, diff)
    print(f"grids {grids}: features {tuple(got.shape)}, max abs diff {diff:.2e}")
    assert got.shape == expected.shape

assert worst < 1e-4, worst
print(
    f"check passed: the exported Qwen2-VL vision encoder matches get_image_features on 2 "
    f"unseen sets of resolutions (max abs diff {worst:.1e})"
)
