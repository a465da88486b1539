"""Apertus 1.5: images as discrete codes of a VQ tokenizer inside the model, offset into
the text vocabulary and embedded by the text embedding.

Apertus 1.5's image processor resizes each image to sides that are multiples of its
``spatial_factor`` (16, ``smart_resize``), pads the images of a call to the largest and
gives their sizes, ``image_sizes`` (pixels). ``get_image_features`` crops each image to
its size in Python and encodes it alone (``Apertus1p5Model.get_image_tokens``: padding
would change its codes), one code per 16 x 16 pixels in row-major order, offset by
``image_token_offset`` and embedded; the processor writes one image token per code
(``Apertus1p5Processor.replace_image_token``; the row-end tokens between rows are text).
The graph here runs the VQ tokenizer's own modules on a call's images of one size, which
the processor gives unpadded: every image is then its own crop, and the tokenizer's
layers (convolutions, group norms, attention) act on each image of a batch alone, so the
graph gives exactly ``get_image_features``, checked on every input set. Images of
different sizes are encoded one size at a time, as ``get_image_features`` encodes them
one image at a time. Images, their height and their width (in codes) are dynamic.
"""

from __future__ import annotations

from typing import Any

from . import Family, register

#: the tiny vocabulary's layout: the visual codes from IMAGE_OFFSET, the audio codes
#: right after them (the config requires it), both within the 1024 tiny ids
IMAGE_OFFSET, IMAGE_CODES, AUDIO_CODES = 400, 256, 256
#: the tiny vocabulary's image and audio placeholder tokens
IMAGE_TOKEN, AUDIO_TOKEN = 1000, 1001
#: the images of each input set, (count, code rows, code columns), one size a call: the
#: first traced, the others unseen, the last at the bounds
SIZES = [(2, 2, 3), (1, 4, 4), (3, 2, 2), (1, 2, 5), (4, 3, 2), (2, 5, 3), (4, 6, 6)]
#: images of a call and codes a side, at most (small, for the sweep's time), and codes a
#: side, at least: the exported tokenizer holds a guard that a side is not one code
#: (``pixel_values.size()[2] // 16 != 1``)
IMAGES_MAX, SIDE_MAX, SIDE_MIN = 4, 6, 2
#: the size of both images of the generation prompt, in codes
GENERATION_SIZE = (2, 3)


def _factor(model: Any) -> int:
    """The pixels a side of one code (the VQ tokenizer's downsampling)."""
    return int(model.model.vision_tokenizer.config.spatial_scale_factor)


def images(model: Any, count: int, rows: int, columns: int, generator: Any) -> dict:
    """The encoder's inputs for ``count`` images of ``rows x columns`` codes as the
    processor gives images of one size (random pixels, no padding)."""
    import torch

    factor = _factor(model)
    channels = int(model.model.vision_tokenizer.config.in_channels)
    shape = (count, channels, rows * factor, columns * factor)
    return {"pixel_values": torch.randn(shape, generator=generator)}


def image_sizes(model: Any, image: dict[str, Any]) -> Any:
    """The ``image_sizes`` (pixels) the processor gives with the unpadded images
    ``image``: every image's own height and width."""
    import torch

    count, _, height, width = image["pixel_values"].shape
    return torch.tensor([[height, width]] * count, dtype=torch.int64)


def processor_image(model: Any, image: dict[str, Any]) -> dict[str, Any]:
    """The encoder's inputs ``image`` as the processor gives them to ``generate``."""
    return {"pixel_values": image["pixel_values"], "image_sizes": image_sizes(model, image)}


def check(model: Any, feeds: dict[str, Any]) -> None:
    """A ValueError unless the encoder gives on ``feeds`` exactly what the model's own
    ``get_image_features`` gives on them and their ``image_sizes``."""
    import torch

    with torch.no_grad():
        got = encoder(model)(**feeds)
        out = model.model.get_image_features(feeds["pixel_values"], image_sizes(model, feeds))
    want = torch.cat(list(out.pooler_output))
    if got.shape != want.shape or not torch.equal(got, want):
        raise ValueError(
            "the VQ tokenizer's features for images of shape "
            f"{tuple(feeds['pixel_values'].shape)} differ from get_image_features': "
            f"shapes {tuple(got.shape)} and {tuple(want.shape)}"
        )


def image_sets(model: Any, generator: Any) -> tuple[list[dict[str, Any]], list[str]]:
    """The vision encoder's input sets of :data:`SIZES` and their labels, each checked to
    give exactly the features of ``get_image_features`` (a ValueError otherwise)."""
    sets, labels = [], []
    factor = _factor(model)
    for count, rows, columns in SIZES:
        feeds = images(model, count, rows, columns, generator)
        check(model, feeds)
        sets.append(feeds)
        labels.append(
            f"images={count} tokens={count * rows * columns} "
            f"size={rows * factor}x{columns * factor}"
        )
    return sets, labels


def image_shapes(model: Any) -> tuple[dict[str, Any], str]:
    import torch

    factor = _factor(model)
    shapes = {
        "pixel_values": {
            0: torch.export.Dim("images", min=1, max=IMAGES_MAX),
            2: factor * torch.export.Dim("code_rows", min=SIDE_MIN, max=SIDE_MAX),
            3: factor * torch.export.Dim("code_columns", min=SIDE_MIN, max=SIDE_MAX),
        },
    }
    resolution = (
        "images as the processor gives them, sides multiples of the VQ tokenizer's "
        f"{factor} pixels a code (smart_resize), a call's images of one size (unpadded: "
        "get_image_features encodes each image alone at its size, which the graph does "
        "for images of one size; images of different sizes take one call per size); "
        "images, height and width dynamic (in codes), checked against get_image_features "
        f"on every input set; declared bounds {IMAGES_MAX} images of {SIDE_MIN} to "
        f"{SIDE_MAX} codes a side ({SIDE_MIN * factor} to {SIDE_MAX * factor} pixels: "
        "small, for the sweep's time; the published processor resizes to 128 x 128 to "
        "1400 x 1400 pixels, min_pixels and max_pixels); the exported tokenizer guards "
        "against a side of one code, which smart_resize gives only to images about 64 "
        "times longer than wide or more"
    )
    return shapes, resolution


def generation_image(model: Any, generator: Any) -> dict[str, Any]:
    return images(model, 2, *GENERATION_SIZE, generator)


def _encoder_class() -> type:
    import torch

    class CodeEncoder(torch.nn.Module):
        """images of one size -> the image features: the VQ tokenizer's modules as
        ``Apertus1p5VisionTokenizerModel.encode`` runs them, each code offset into the
        vocabulary and embedded by the text embedding, image by image, row by row."""

        layout = "codes"

        def __init__(self, model: Any, channels: int = 0, width: int = 0) -> None:
            super().__init__()
            self.model = model
            self.offset = int(model.config.image_token_offset)

        def forward(self, pixel_values: Any) -> Any:
            codes = self.model.model.vision_tokenizer.encode(pixel_values).image_tokens
            return self.model.get_input_embeddings()(codes.reshape(-1) + self.offset)

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
    "images as VQ codes: a call's images of one size, unpadded, encoded as a batch, "
    "instead of the crops get_image_features computes from image_sizes in Python to "
    "encode each image alone"
)

register(
    Family(
        name="apertus1p5",
        model_types=("apertus1p5",),
        config_fixes={
            "apertus1p5": (
                {
                    "image_token_id": IMAGE_TOKEN,
                    "audio_token_id": AUDIO_TOKEN,
                    "image_token_offset": IMAGE_OFFSET,
                    "audio_token_offset": IMAGE_OFFSET + IMAGE_CODES,
                    "vision_config.codebook_size": IMAGE_CODES,
                    "vision_config.base_channels": 32,
                    "vision_config.num_res_blocks": 1,
                    "audio_config.codebook_size": AUDIO_CODES,
                },
                "the vocabulary holds the visual codes from image_token_offset and the audio "
                "codes right after them (image_token_offset + codebook_size == "
                "audio_token_offset, the audio range within the vocabulary: 131072 + 4096 "
                "codes from 131272 in the config class, more than the tiny vocabulary of "
                "1024 holds); the tiny config gets 256 visual codes from id 400 and 256 audio "
                "codes after them, the image and audio placeholders 1000 and 1001, 32 base "
                "channels (256) and 1 residual block a stage (4)",
            )
        },
        input_layouts={"apertus1p5": (LAYOUT, WHY)},
    )
)
