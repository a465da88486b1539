"""Emu3: images as discrete codes of a VQ-VAE, mapped into the text vocabulary, one
row-end token after each row of codes.

Emu3's image processor resizes each image to sides that are multiples of its
``spatial_factor`` (8, ``smart_resize``), pads the images of a call to the largest with
zeros and gives their sizes, ``image_sizes`` (pixels). ``get_image_features`` encodes the
padded batch into one VQ code per 8 x 8 pixels, crops each image's codes to its size and
maps them into the vocabulary with a row-end token after each row, both with sizes read
in Python (``Emu3VQVAE.encode``, ``Emu3ImageVocabularyMapping.convert_img2bpe``), and the
processor writes ``rows * (columns + 1)`` image tokens for each image
(``Emu3Processor.replace_image_token``). The graph here runs the VQ encoder's own modules
on the padded batch, maps every code with the model's own table, and takes instead of
``image_sizes`` ``feature_index``: for every image token, its code among the padded codes
flattened, or the row-end token after them (:func:`feature_index`), computed on the
processor side from the sizes and checked against ``get_image_features`` on every input
set. Images, their height and their width (in codes) are dynamic.
"""

from __future__ import annotations

from typing import Any

from . import Family, register

#: VQ codes of the tiny codebook, and the first text id they map to
CODES, FIRST_ID = 512, 400
#: the tiny vocabulary's image placeholder and row-end tokens
IMAGE_TOKEN, ROW_END = 1000, 1001
#: the sizes (code rows x columns; 8 x 8 pixels a code) of the images of each input set,
#: each set padded to its largest: the first traced, the others unseen, the last at the
#: bounds
SIZES = [
    [(2, 3), (3, 4)],
    [(4, 4)],
    [(1, 2), (3, 3), (2, 1)],
    [(2, 5)],
    [(2, 2), (1, 1), (3, 2), (1, 3)],
    [(4, 2), (3, 4)],
    [(8, 8)] * 4,
]
#: images of a call and codes a side, at most (small, for the sweep's time)
IMAGES_MAX, SIDE_MAX = 4, 8
#: the size of both images of the generation prompt, in codes
GENERATION_SIZE = (2, 3)


def _code_name(code: int) -> str:
    """The name of a VQ code's token in the checkpoints' vocabulary map: the code in six
    digits, which the model reads back from the name's characters [-8:-2]."""
    return f"<|visual token {code:06d}|>"


VOCABULARY_MAP = {
    "<image>": IMAGE_TOKEN,
    "<|extra_200|>": ROW_END,
    **{_code_name(c): FIRST_ID + c for c in range(CODES)},
}


def _factor(model: Any) -> int:
    """The pixels a side of one VQ code (the VQ encoder's downsampling)."""
    return int(model.model.vqmodel.vision_spatial_factor)


def feature_index(sizes: Any, height: int, width: int, factor: int) -> Any:
    """For the images of ``sizes`` ``(images, 2)`` (pixels) padded to ``height x width``,
    every image token in the processor's order (image by image, row by row, each row's
    codes then its row-end token): its place among the padded codes flattened
    ``(images * rows * columns)``, the row-end token numbered after them."""
    import torch

    rows, columns = height // factor, width // factor
    end = len(sizes) * rows * columns
    index = []
    for i, (h, w) in enumerate(sizes.tolist()):
        codes = i * rows * columns + torch.arange(h // factor)[:, None] * columns
        codes = codes + torch.arange(w // factor)[None, :]
        ends = torch.full((h // factor, 1), end)
        index.append(torch.cat([codes, ends], 1).reshape(-1))
    return torch.cat(index)


def images(model: Any, sizes: list[tuple[int, int]], generator: Any) -> tuple[dict, Any]:
    """The encoder's inputs for images of ``sizes`` (codes) as the processor gives them
    (random pixels, each image padded with zeros to the largest of the call), and the
    ``image_sizes`` the processor gives with them."""
    import torch

    factor = _factor(model)
    channels = int(model.config.vq_config.in_channels)
    given = torch.tensor([(h * factor, w * factor) for h, w in sizes], dtype=torch.int64)
    height, width = int(given[:, 0].max()), int(given[:, 1].max())
    pixels = torch.randn((len(sizes), channels, height, width), generator=generator)
    for i, (h, w) in enumerate(given.tolist()):
        pixels[i, :, h:] = 0
        pixels[i, :, :, w:] = 0
    index = feature_index(given, height, width, factor)
    return {"pixel_values": pixels, "feature_index": index}, given


def image_sizes(model: Any, image: dict[str, Any]) -> Any:
    """The ``image_sizes`` (pixels) of the encoder's inputs ``image``, read back from its
    ``feature_index``: each image's rows of codes and codes per row; a ValueError unless
    :func:`feature_index` gives that index again for them."""
    import torch

    factor = _factor(model)
    pixels, index = image["pixel_values"], image["feature_index"]
    count, _, height, width = pixels.shape
    per_image = (height // factor) * (width // factor)
    codes = index[index != count * per_image]
    sizes = []
    for i in range(count):
        mine = codes[(codes >= i * per_image) & (codes < (i + 1) * per_image)]
        rows = len(torch.unique((mine - i * per_image) // (width // factor)))
        sizes.append((rows * factor, len(mine) // max(rows, 1) * factor))
    given = torch.tensor(sizes, dtype=torch.int64)
    if given.min() == 0 or not torch.equal(feature_index(given, height, width, factor), index):
        raise ValueError(
            "feature_index is not the processor's order of any image sizes for these "
            f"{count} images padded to {height}x{width}: build it with feature_index()"
        )
    return given


def processor_image(model: Any, image: dict[str, Any]) -> dict[str, Any]:
    """The encoder's inputs ``image`` as the processor gives them to ``generate``: the
    padded pixels and ``image_sizes`` (:func:`image_sizes`)."""
    return {"pixel_values": image["pixel_values"], "image_sizes": image_sizes(model, image)}


def image_sets(model: Any, generator: Any) -> tuple[list[dict[str, Any]], list[str]]:
    """The vision encoder's input sets of :data:`SIZES` and their labels, each checked to
    give exactly the features of ``get_image_features`` (a ValueError otherwise)."""
    sets, labels = [], []
    for sizes in SIZES:
        feeds, given = images(model, sizes, generator)
        check(model, feeds, given)
        sets.append(feeds)
        shown = ",".join(f"{h}x{w}" for h, w in given.tolist())
        if len(set(sizes)) == 1 < len(sizes):
            shown = f"{len(sizes)} of {given[0, 0]}x{given[0, 1]}"
        labels.append(f"images={len(sizes)} tokens={feeds['feature_index'].shape[0]} sizes={shown}")
    return sets, labels


def check(model: Any, feeds: dict[str, Any], sizes: Any) -> None:
    """A ValueError unless the encoder gives on ``feeds`` exactly what the model's own
    ``get_image_features`` gives on the padded pixels and ``sizes``."""
    import torch

    with torch.no_grad():
        got = encoder(model)(**feeds)
        out = model.model.get_image_features(feeds["pixel_values"], sizes)
    want = torch.cat(list(out.pooler_output))
    if got.shape != want.shape or not torch.equal(got, want):
        raise ValueError(
            f"the VQ encoder's features for image_sizes {sizes.tolist()} differ from "
            f"get_image_features': shapes {tuple(got.shape)} and {tuple(want.shape)}"
        )


def image_shapes(model: Any) -> tuple[dict[str, Any], str]:
    import torch

    factor = _factor(model)
    shapes = {
        "pixel_values": {
            0: torch.export.Dim("images", min=1, max=IMAGES_MAX),
            2: factor * torch.export.Dim("code_rows", min=1, max=SIDE_MAX),
            3: factor * torch.export.Dim("code_columns", min=1, max=SIDE_MAX),
        },
        "feature_index": {0: torch.export.Dim("image_tokens", min=1)},
    }
    resolution = (
        "images of any size as the processor gives them: sides multiples of the VQ "
        f"encoder's {factor} pixels a code (smart_resize), padded with zeros to the call's "
        "largest; images, height and width dynamic (in codes); each image's codes, which "
        "get_image_features crops and splits per image with sizes computed in Python from "
        "image_sizes, and the row-end token after each row are given as a precomputed index "
        "of the padded codes (feature_index), checked against get_image_features on every "
        f"input set; declared bounds {IMAGES_MAX} images of {SIDE_MAX} codes a side "
        f"({SIDE_MAX * factor} pixels: small, for the sweep's time; the published "
        "processor resizes to 512 x 512 to 1024 x 1024 pixels, min_pixels and max_pixels)"
    )
    return shapes, resolution


def generation_image(model: Any, generator: Any) -> dict[str, Any]:
    return images(model, [GENERATION_SIZE] * 2, generator)[0]


def _encoder_class() -> type:
    import torch

    class CodeEncoder(torch.nn.Module):
        """padded images and ``feature_index`` -> the image features: the VQ encoder's
        modules as ``Emu3VQVAE.encode`` runs them on an image (repeated over the temporal
        axis it downsamples), each code mapped into the vocabulary by the model's own
        table, the row-end token appended, the tokens of ``feature_index`` embedded."""

        layout = "codes"

        def __init__(self, model: Any, channels: int = 0, width: int = 0) -> None:
            super().__init__()
            self.model = model
            mapping = model.model.vocabulary_mapping
            table = mapping.img2bpe_mapping_tensor.to(torch.int64)
            self.register_buffer("code_ids", table, persistent=False)
            self.row_end = int(mapping.eol_token_id)

        def forward(self, pixel_values: Any, feature_index: Any) -> Any:
            vq = self.model.model.vqmodel
            temporal = vq.config.temporal_downsample_factor
            frames = pixel_values.unsqueeze(1).repeat(1, temporal, 1, 1, 1).to(vq.dtype)
            states = vq.quant_conv(vq.encoder(frames).permute(0, 2, 1, 3, 4))
            codes = vq.quantize(states.permute(0, 2, 1, 3, 4))
            ids = self.code_ids[codes.reshape(-1)]
            ids = torch.cat([ids, ids.new_full((1,), self.row_end)])
            return self.model.get_input_embeddings()(ids[feature_index])

    return CodeEncoder


def encoder(model: Any, channels: int = 0, width: int = 0) -> Any:
    return _encoder_class()(model, channels, width)


LAYOUT = {
    "layout": "codes",
    "image_arguments": ("image_sizes",),
    "encoder": encoder,
    "image_sets": image_sets,
    "image_shapes": image_shapes,
    "generation_image": generation_image,
    "processor_image": processor_image,
}
WHY = (
    "images as VQ codes: padded images of any size, each image's codes and the row-end "
    "token after each row taken by a precomputed index (feature_index) instead of the "
    "crops and splits get_image_features computes from image_sizes in Python"
)

register(
    Family(
        name="emu3",
        model_types=("emu3",),
        config_fixes={
            "emu3": (
                {
                    "vocabulary_map": VOCABULARY_MAP,
                    "vq_config.codebook_size": CODES,
                    "vq_config.base_channels": 32,
                    "vq_config.hidden_size": 128,
                },
                "the config class leaves vocabulary_map None, while the checkpoints carry "
                "the tokenizer's map, which the model reads (Emu3ImageVocabularyMapping) "
                "for the image placeholder '<image>', the row-end token '<|extra_200|>' "
                "written after each row of codes, and one '<|visual token NNNNNN|>' token "
                "per VQ code; the tiny config gets such a map into its own vocabulary, for "
                "a codebook of 512 codes (32768 in the config class, more than the tiny "
                "vocabulary holds) and 32 base channels (256); the VQ attention block of "
                "the last stage "
                "(attn_resolutions [3]) runs on base_channels x channel_multiplier[3] "
                "channels with vq_config.hidden_size as its width, 256 x 4 = 1024 in the "
                "config class: 32 x 4 = 128 here (the generic shrink leaves 64)",
            )
        },
        input_layouts={"emu3": (LAYOUT, WHY)},
    )
)
