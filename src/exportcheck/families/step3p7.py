"""Step 3.7: a global view of each image and its local crops, their features reordered;
experts computed in a loop over the experts that were hit.

The text model builds its sliding-window mask whatever its layer kinds (see the config
fix below), and its experts (``Step3p7Experts``) loop over the experts that were hit,
with no experts implementation to switch (see :data:`STEP3P7_EXPERTS_GATHER`).

Step 3.7's image processor (``Step3p7ImageProcessor``) gives each image a global view,
resized to a square of ``size`` (728 pixels), and, for images large or elongated enough,
local crops: a sliding window over the image snapped to its sides, each crop resized to
``patch_size`` (504 pixels). It returns the global views ``pixel_values`` ``(images, 3,
728, 728)``, every crop of every image one after the other ``pixel_values_local``
``(crops, 3, 504, 504)`` (absent when no image has any) and each image's crop count,
``num_local_patches``. The processor writes, for each image, the image tokens of its
crops and then those of its global view (``Step3p7Processor.replace_image_token``).
``get_image_features`` runs the tower and projector on both batches, then loops over
``num_local_patches`` in Python to put each image's crop rows before its global rows,
which fixes the image count into the graph. The graph here runs the model's own tower and
projector on both batches and takes instead ``feature_index``: for every image token, in
the processor's order, its row among the global rows then the crop rows
(:func:`feature_index`), computed on the processor side from the crop counts and checked
against ``get_image_features`` on every input set. Images, crops (none at all when no
image of a call has any: the tower also runs on one blank crop, whose rows no index
reads, so it never runs on an empty batch) and image tokens are dynamic; the two
resolutions are static, as the processor fixes them.
"""

from __future__ import annotations

from typing import Any

from ..patches import Patch
from . import Family, register

#: the image processor's defaults: the global view's side, a local crop's side, the
#: longest side an image is scaled down to before its crops are planned (pixels)
GLOBAL_SIDE, CROP_SIDE, LONGEST = 728, 504, 3024
#: the tower's downsampling after its patches: two stride-2 convolutions
DOWNSAMPLING = 4
#: the images (width x height, pixels) of each input set: the first traced, the others
#: unseen, the last at the bounds; images with and without crops, and a call without any
IMAGES = [
    [(1000, 700), (500, 400)],
    [(500, 400)],
    [(600, 300), (700, 700), (1200, 800)],
    [(2000, 500), (800, 1300)],
    [(400, 400), (1000, 1000), (300, 900), (640, 480)],
    [(900, 600), (3000, 2000), (20, 200)],
    [(2000, 2000)] * 4,
]
#: images and crops of one call, at most (small, for the sweep's time)
IMAGES_MAX, CROPS_MAX = 4, 64
#: the size of both images of the generation prompt (pixels)
GENERATION_IMAGE = (1000, 700)


def crop_count(width: int, height: int) -> int:
    """The local crops the processor cuts from an image of ``width x height`` pixels, by
    the rules ``Step3p7ImageProcessor._plan_patches`` documents: a thin sliver (shorter
    side under 32, longer over 4 times it) is padded to a square, an image longer than
    :data:`LONGEST` scaled down to it; an image that fits the global view gets crops of its
    shorter side only when longer than 1.5 times it, a very elongated one (over 4 times)
    crops of its shorter side up to :data:`CROP_SIDE`, any other crops of
    :data:`CROP_SIDE`; each side then takes as many windows as fit, one more when what is
    left exceeds a fifth of a window."""
    if min(width, height) < 32 and max(width / height, height / width) > 4:
        width = height = max(width, height)
    if max(width, height) > LONGEST:
        scale = LONGEST / max(width, height)
        width, height = int(width * scale), int(height * scale)
    short, long = min(width, height), max(width, height)
    if long <= GLOBAL_SIDE:
        window = short if long / short > 1.5 else 0
    elif long / short > 4:
        window = min(short, CROP_SIDE)
    else:
        window = CROP_SIDE
    if window == 0:
        return 0
    count = 1
    for side in (width, height):
        if side >= window:
            count *= max(1, side // window + (side % window > 0.2 * window))
    return count


def sides(model: Any) -> tuple[int, int]:
    """(global view, local crop) sides in pixels for ``model``'s tower: the vision
    config's ``image_size``, and the crop side in the processor's proportion
    (504 / 728) rounded down to whole image tokens (patch x downsampling pixels)."""
    vision = model.config.vision_config
    side, unit = int(vision.image_size), int(vision.patch_size) * DOWNSAMPLING
    return side, max(unit, side * CROP_SIDE // GLOBAL_SIDE // unit * unit)


def rows(model: Any) -> tuple[int, int]:
    """The feature rows (image tokens) of a global view and of a local crop, as the
    processor counts them: ``(side // (patch x downsampling)) ** 2``."""
    unit = int(model.config.vision_config.patch_size) * DOWNSAMPLING
    return tuple((s // unit) ** 2 for s in sides(model))


def feature_index(counts: list[int], global_rows: int, crop_rows: int) -> Any:
    """For images of ``counts`` crops each, every image token in the processor's order
    (each image's crops, crop by crop, then its global view): its row among the global
    views' rows ``(images * global_rows)`` followed by the crops' rows."""
    import torch

    base, index, crop = len(counts) * global_rows, [], 0
    for i, count in enumerate(counts):
        first = base + crop * crop_rows
        index.append(torch.arange(first, first + count * crop_rows))
        index.append(torch.arange(i * global_rows, (i + 1) * global_rows))
        crop += count
    return torch.cat(index)


def crop_counts(model: Any, image: dict[str, Any]) -> list[int]:
    """Each image's crop count, read back from the encoder's inputs ``image``: the crop
    rows before each global view's first row in ``feature_index``; a ValueError unless
    :func:`feature_index` gives that index again for them."""
    import torch

    global_rows, crop_rows = rows(model)
    index = image["feature_index"]
    images = image["pixel_values"].shape[0]
    counts, before = [], 0
    for i in range(images):
        found = (index == i * global_rows).nonzero()
        if len(found) != 1:
            counts = None
            break
        local = int(found[0, 0]) - i * global_rows
        if local < before or (local - before) % crop_rows:
            counts = None
            break
        counts.append((local - before) // crop_rows)
        before = local
    again = None if counts is None else feature_index(counts, global_rows, crop_rows)
    if (
        again is None
        or again.shape != index.shape
        or not torch.equal(again, index)
        or sum(counts) != _crops(image)
    ):
        raise ValueError(
            "feature_index is not the processor's order of any crop counts for these "
            f"{images} images and {_crops(image)} crops: build it with feature_index()"
        )
    return counts


def _crops(image: dict[str, Any]) -> int:
    local = image.get("pixel_values_local")
    return 0 if local is None else int(local.shape[0])


def processor_image(model: Any, image: dict[str, Any]) -> dict[str, Any]:
    """The encoder's inputs ``image`` as the processor gives them to ``generate``: the
    global views, the crops (absent without any) and ``num_local_patches``
    (:func:`crop_counts`)."""
    import torch

    counts = crop_counts(model, image)
    given = {"pixel_values": image["pixel_values"]}
    if sum(counts):
        given["pixel_values_local"] = image["pixel_values_local"]
    given["num_local_patches"] = torch.tensor(counts, dtype=torch.int64)
    return given


def images(model: Any, sizes: list[tuple[int, int]], generator: Any) -> dict[str, Any]:
    """The encoder's inputs for images of ``sizes`` (width x height, pixels): random
    global views and crops at the tower's two resolutions (:func:`sides`), as many crops
    as the processor cuts (:func:`crop_count`), and :func:`feature_index`."""
    import torch

    channels = int(model.config.vision_config.num_channels)
    side, crop = sides(model)
    counts = [crop_count(w, h) for w, h in sizes]
    return {
        "pixel_values": torch.randn((len(sizes), channels, side, side), generator=generator),
        "pixel_values_local": torch.randn((sum(counts), channels, crop, crop), generator=generator),
        "feature_index": feature_index(counts, *rows(model)),
    }


def image_sets(model: Any, generator: Any) -> tuple[list[dict[str, Any]], list[str]]:
    """The vision encoder's input sets of :data:`IMAGES` and their labels, each checked to
    give the features of ``get_image_features`` (:func:`check`)."""
    sets, labels = [], []
    for sizes in IMAGES:
        feeds = images(model, sizes, generator)
        check(model, feeds)
        sets.append(feeds)
        counts = [crop_count(w, h) for w, h in sizes]
        shown = ",".join(f"{w}x{h}:{c}" for (w, h), c in zip(sizes, counts, strict=True))
        if len(set(sizes)) == 1 < len(sizes):
            shown = f"{len(sizes)} of {sizes[0][0]}x{sizes[0][1]}:{counts[0]}"
        labels.append(
            f"images={len(sizes)} crops={sum(counts)} "
            f"tokens={feeds['feature_index'].shape[0]} sizes:crops={shown}"
        )
    return sets, labels


def check(model: Any, feeds: dict[str, Any]) -> None:
    """A ValueError unless the encoder gives on ``feeds`` what the model's own
    ``get_image_features`` gives on the processor's inputs for them: the same rows in the
    same order, equal to float precision (1e-6)."""
    import torch

    given = processor_image(model, feeds)
    with torch.no_grad():
        got = encoder(model)(**feeds)
        out = model.model.get_image_features(**given)
    want = torch.cat([f.reshape(-1, f.shape[-1]) for f in out.pooler_output])
    # the blank crop makes the crops' batch one longer than get_image_features' own:
    # batched kernels may round differently, so the rows match to float precision
    if got.shape != want.shape or not torch.allclose(got, want, atol=1e-6, rtol=0):
        moved = float((got - want).abs().max()) if got.shape == want.shape else None
        raise ValueError(
            f"the crops' and global views' features for num_local_patches "
            f"{given['num_local_patches'].tolist()} differ from get_image_features': "
            f"shapes {tuple(got.shape)} and {tuple(want.shape)}, max abs diff {moved}"
        )


def image_shapes(model: Any) -> tuple[dict[str, Any], str]:
    import torch

    side, crop = sides(model)
    shapes = {
        "pixel_values": {0: torch.export.Dim("images", min=1, max=IMAGES_MAX)},
        "pixel_values_local": {0: torch.export.Dim("crops", min=0, max=CROPS_MAX)},
        "feature_index": {0: torch.export.Dim("image_tokens", min=1)},
    }
    resolution = (
        f"global views {side}x{side} and local crops {crop}x{crop} static (the processor "
        "resizes every view to its size and every crop to its patch_size; the tiny crop "
        "in the processor's 504/728 proportion, in whole image tokens); images, crops (none "
        "when no image of the call has any: the tower also runs on one blank crop, whose "
        "rows no token reads) and image tokens dynamic; the order of the feature rows, which get_image_features "
        "builds from num_local_patches with a Python loop (each image's crops before its "
        "global view), is given as a precomputed index of the global then crop rows "
        "(feature_index), checked against get_image_features on every input set"
    )
    return shapes, resolution


def generation_image(model: Any, generator: Any) -> dict[str, Any]:
    return images(model, [GENERATION_IMAGE] * 2, generator)


def _encoder_class() -> type:
    import torch

    class CropEncoder(torch.nn.Module):
        """global views, local crops and ``feature_index`` -> the image features: the
        model's own tower and projector on each batch, their rows gathered in the order
        ``feature_index`` gives."""

        layout = "crops"

        def __init__(self, model: Any, channels: int = 0, width: int = 0) -> None:
            super().__init__()
            self.model = model

        def features(self, pixels: Any) -> Any:
            base = self.model.model
            out = base.vision_model(pixels.to(base.vision_model.dtype)).last_hidden_state
            out = base.multi_modal_projector(out)
            return out.reshape(-1, out.shape[-1])

        def forward(self, pixel_values: Any, pixel_values_local: Any, feature_index: Any) -> Any:
            # one blank crop after the given ones, whose rows no index reads: the tower
            # never runs on an empty batch when the call's images have no crops
            blank = pixel_values_local.new_zeros((1, *pixel_values_local.shape[1:]))
            crops = self.features(torch.cat([pixel_values_local, blank]))
            found = torch.cat([self.features(pixel_values), crops])
            return found[feature_index]

    return CropEncoder


def encoder(model: Any, channels: int = 0, width: int = 0) -> Any:
    return _encoder_class()(model, channels, width)


def experts_forward(self: Any, hidden_states: Any, top_k_index: Any, top_k_weights: Any) -> Any:
    """``Step3p7Experts.forward`` on the chosen experts' weights gathered by
    ``top_k_index``: for every token and chosen expert, the expert's gated projection
    (the module's own ``_apply_gate``, with its clamp) and down projection, weighted and
    summed over the chosen experts."""
    import torch

    up = torch.einsum("th,tkoh->tko", hidden_states, self.gate_up_proj[top_k_index])
    down = torch.einsum("tki,tkhi->tkh", self._apply_gate(up), self.down_proj[top_k_index])
    return (down * top_k_weights[..., None]).sum(1).to(hidden_states.dtype)


def _install_experts_gather(patcher: Any, model: Any) -> None:
    """Compute Step3p7Experts with gathered expert weights instead of a loop over the hit
    experts.

    Fixes: torch.export of the decoder step fails with ``Could not guard on
    data-dependent expression Eq(u0, 0)``: Step3p7Experts.forward
    (transformers/models/step3p7/modeling_step3p7.py:556-567) loops ``for expert_idx in
    hit`` over ``nonzero()`` and ``torch.where`` results, and the class has no
    ``@use_experts_implementation``, so the config's experts implementation cannot switch
    it. Same sum over the chosen experts of weight x down(gate(up(x))).

    Remove when: Step3p7Experts supports transformers' experts implementations
    (batched_mm).
    """
    patcher.replace_in(
        "transformers.models.step3p7.modeling_step3p7", "Step3p7Experts", "forward", experts_forward
    )


STEP3P7_EXPERTS_GATHER = Patch(
    name="step3p7_experts_gather",
    fixes="Could not guard on data-dependent expression Eq(u0, 0)",
    remove_when="Step3p7Experts supports transformers' experts implementations (batched_mm)",
    install=_install_experts_gather,
    model_types=("step3p7",),
)


LAYOUT = {
    "layout": "crops",
    "encoder": encoder,
    "image_sets": image_sets,
    "image_shapes": image_shapes,
    "generation_image": generation_image,
    "processor_image": processor_image,
}
WHY = (
    "a global view and local crops of each image: the crops' rows put before each "
    "image's global rows by a precomputed index (feature_index) instead of the loop "
    "get_image_features runs over num_local_patches in Python"
)

register(
    Family(
        name="step3p7",
        model_types=("step3p7",),
        config_fixes={
            "step3p7": (
                {"text_config.sliding_window": 512},
                "Step3p7TextModel.forward builds the sliding-window mask for every call "
                "(modeling_step3p7.py:889), and create_sliding_window_causal_mask refuses a "
                "config whose sliding_window is None, which the config class leaves it; "
                "512 is longer than every sequence checked, so the tiny model's layers "
                "(full attention) read no mask of it",
            )
        },
        input_layouts={"step3p7": (LAYOUT, WHY)},
        patches=(STEP3P7_EXPERTS_GATHER,),
    )
)
