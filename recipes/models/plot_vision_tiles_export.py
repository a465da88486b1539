"""
Images of any size as tiles: exporting a LLaVA-NeXT vision encoder
==================================================================

LLaVA-NeXT (and LLaVA-OneVision) read an image of any size as tiles of the vision
encoder's fixed size: a base view of the whole image, then the grid of tiles that the
image's aspect ratio picks from the config's ``image_grid_pinpoints``. After the
encoder, ``get_image_features`` puts the tiles' feature rows back in the image's layout,
crops the rows that fall on padding (the image did not fill its last tiles) and ends
each row of features with a learned newline row. All of that is computed from
``image_sizes`` in Python loops, so the export fails on those values.

The fix shown here is general: what the model computes from the sizes is an *order* of
rows, and an order can be computed outside the graph by running the model's own code on
row numbers instead of features. The graph then takes the tiles and that order, and one
gather replaces the loops. The recipe ends with the exported encoder on image sizes it
never saw, equal to the model's own ``get_image_features``.
"""

# %%
# The model and one input set
# ---------------------------
#
# :func:`exportcheck.untrained_model` builds a tiny, untrained ``llava_next`` for the
# ``image-text-to-text`` task. Its tiles are 112 pixels (8 patches of 14); the notes say
# how the tiny config keeps the pinpoints' grids (1x2, 2x1, 2x2, 3x1, 1x3 tiles). The
# processor gives ``pixel_values`` of shape (images, most tiles, 3, 112, 112), each image's
# tiles then zeros, and ``image_sizes`` (height, width) in pixels.

import torch

from exportcheck import untrained_model
from exportcheck.tasks.image_text_to_text import processor_tiles, tile_images

m = untrained_model("llava_next", task="image-text-to-text")
model = m.model
for note in m.notes[2:]:
    print("note:", note)

generator = torch.Generator().manual_seed(0)
# two images: 101x202 pixels (one row of two tiles) and 230x90 (a column of three)
feeds, sizes = tile_images(model, [(0.9, 1.8), (2.05, 0.8)], generator, 3, 112)
given = processor_tiles(feeds["pixel_values"], sizes, model)
print("pixel_values", tuple(given["pixel_values"].shape), "image_sizes", sizes.tolist())

# %%
# The direct export fails
# -----------------------
#
# A module that calls ``get_image_features`` with what the processor gives, the images
# and their tiles dynamic. The export stops on a guard over values read from
# ``image_sizes``: choosing each image's grid compares ratios of its height and width.

from torch.export import Dim
from torch.fx.experimental.symbolic_shapes import GuardOnDataDependentSymNode


class DirectEncoder(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, pixel_values, image_sizes):
        out = self.model.get_image_features(pixel_values=pixel_values, image_sizes=image_sizes)
        return torch.cat(list(out.pooler_output))


images = Dim("images", max=4)
shapes = {"pixel_values": {0: images, 1: Dim("tiles", max=5)}, "image_sizes": {0: images}}
failure = None
try:
    with torch.no_grad():
        torch.export.export(DirectEncoder(model), (), given, dynamic_shapes=shapes)
except GuardOnDataDependentSymNode as e:
    failure = str(e).splitlines()[0]
print("export failed:", failure)
assert failure is not None

# %%
# The order of the rows, computed by the model's own code
# -------------------------------------------------------
#
# The tiles' features are ``tiles x 64`` rows (8x8 patches per tile, the class token
# dropped). ``pack_image_features`` reshapes, crops and interleaves them with the newline
# row, image by image. Run on *row numbers* (a feature of width 1 holding its own index,
# and a newline numbered after the last row), it returns where each of its output rows
# comes from: :func:`exportcheck.tasks.image_text_to_text.tile_inputs` does exactly that.
# For the first image, a row of two tiles of the same aspect ratio as the image: the
# base view's 64 rows, then 8 rows of 16 patches (8 from each tile), each ended by the
# newline. The second image, 230x90 pixels in a column of three tiles (336x112), fills
# them in width: its 24 rows of patches lose those that fall on the padding above and
# below it.

index = feeds["feature_index"]
newline = feeds["pixel_values"].shape[0] * 64
first, second = index[: 64 + 8 * 17], index[64 + 8 * 17 :]
print("rows of the 7 tiles: 0 to", newline - 1, "| the newline is row", newline)
print("first image: base view", first[:4].tolist(), "...", first[60:64].tolist())
print("then its first row of patches:", first[64:81].tolist())
kept = int((second == newline).sum())
print(f"second image: {second.shape[0]} rows, {kept} of its 24 rows of patches kept")

# %%
# The graph: tiles and the order
# ------------------------------
#
# The task's vision encoder component takes ``pixel_values`` (the tiles of every image,
# concatenated) and ``feature_index``, both of dynamic length: the vision tower, the
# chosen layer, the projector, then one gather of the rows and the newline. Before the
# component is built, exportcheck checks on every input set that this gives exactly what
# ``get_image_features`` gives.

encoder = m.components[0]
with torch.no_grad():
    program = torch.export.export(
        encoder.module, (), kwargs=dict(feeds), dynamic_shapes=encoder.dynamic_shapes
    )
print(
    "graph inputs:",
    [s.arg.name for s in program.graph_signature.input_specs if s.kind.name == "USER_INPUT"],
)

# %%
# Check on image sizes the export never saw
# -----------------------------------------
#
# One image of 112x224 pixels, then three of 34x101, 280x78 and 213x224: other tile
# counts, other crops. The reference is the model's own ``get_image_features`` on what
# the processor gives; the exported encoder gets the tiles and the order computed from
# the sizes. A wrong order would be far off: the features differ by about 0.3 from row to
# row.

worst = 0.0
for sizes_in_tiles in ([(1.0, 2.0)], [(0.3, 0.9), (2.5, 0.7), (1.9, 2.0)]):
    unseen, unseen_sizes = tile_images(model, sizes_in_tiles, generator, 3, 112)
    with torch.no_grad():
        got = program.module()(**unseen)
        own = model.get_image_features(
            **processor_tiles(unseen["pixel_values"], unseen_sizes, model)
        )
    expected = torch.cat(list(own.pooler_output))
    diff = float((got - expected).abs().max())
    worst = max(worst, diff)
    tiles = unseen["pixel_values"].shape[0]
    print(
        f"sizes {unseen_sizes.tolist()}: {tiles} tiles, {tuple(got.shape)}, max abs diff {diff:.2e}"
    )
    assert got.shape == expected.shape

assert worst < 1e-5, worst
print(
    f"check passed: the exported LLaVA-NeXT vision encoder matches get_image_features on 2 "
    f"unseen sets of image sizes (max abs diff {worst:.1e})"
)
