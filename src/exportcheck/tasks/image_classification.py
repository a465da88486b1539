"""image-classification: an image in, one row of class logits out.

The model is built with ``AutoModelForImageClassification``
(``MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES``) and exported as one graph. Its input
is what its image processor gives: ``pixel_values`` float32 ``(batch, channels, height,
width)``, the channels and the image size read from the config (``num_channels`` and
``image_size``, of the config or of a sub-config such as ``vision_config``). ImageGPT
takes colour-cluster ids instead, ``input_ids`` ``(batch, height * width)``, one per
pixel, as ``ImageGPTImageProcessor`` quantizes an image.

The tiny config keeps a checkpoint's image size (224 for most); the task shrinks it to
:data:`IMAGE_SIZE` (a note says so), which keeps the sweep fast and the architecture
whole: position tables, windows and strides are sized from it.

Input sets: (batch, height, width) = the export's, five of unseen shapes, and one at the
declared upper bounds; every set has a batch size of its own. Dynamic dimensions:
``batch`` always; ``height`` and ``width`` when the model runs at other resolutions,
which :meth:`ImageClassification.build` measures: it calls the model at the sets'
resolutions (multiples of the patch size of at least 32, else of 32, all larger than
the config's: at its own resolution a model that interpolates its position embeddings
returns them as they are, a branch the export would keep), with
``interpolate_pos_encoding=True`` when the forward takes it, and keeps the config's
resolution, with a note saying why, when the model rejects them. Height and width are
declared as multiples of that step. SigLIP2 takes padded sequences of patches with
their grids (``spatial_shapes``), as its NaFlex processor gives them. :func:`check_pixel_values` tells a caller whose tensor has
the wrong rank or channel count what the model expects.
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any

from ..dims import BATCH_MAX
from ..models import UntrainedModel, prepare_weights, set_attributes
from . import Component, Task, register
from ._encoder import task_config

__all__ = [
    "IMAGE_SIZE",
    "ImageClassification",
    "ImageLayout",
    "PixelClassifier",
    "check_pixel_values",
    "image_layout",
]

#: the side the task shrinks a larger ``image_size`` to (a pair keeps its aspect)
IMAGE_SIZE = 64
#: batch sizes of the input sets; the last one is at the declared upper bound
BATCHES = [2, 1, 3, 4, 5, 6, BATCH_MAX]
#: the granularity of the resolutions tried by a model without a patch size: the total
#: stride of the usual convolutional backbones
STRIDE = 32


@dataclasses.dataclass
class ImageLayout:
    """What the forward of an image classifier takes.

    * ``name``: ``pixel_values`` (or ``input_ids`` for colour-cluster ids)
    * ``channels``: colour channels of a pixel (None for cluster ids)
    * ``height``, ``width``: the resolution of the image processor (the config's)
    * ``step``: resolutions other than the config's are multiples of it (the patch size)
    * ``interpolate``: the forward takes ``interpolate_pos_encoding``

    >>> ImageLayout("pixel_values", 3, 224, 224, 16, True).shape_text
    '(batch, 3, height, width)'
    """

    name: str
    channels: int | None
    height: int
    width: int
    step: int
    interpolate: bool

    @property
    def shape_text(self) -> str:
        if self.channels is None:
            return f"(batch, {self.height * self.width})"
        return f"(batch, {self.channels}, height, width)"


def _find(config: Any, name: str) -> Any:
    """``name`` of ``config`` or of the first sub-config (or backbone config) setting it."""
    value = getattr(config, name, None)
    if value is not None:
        return value
    keys = [*(getattr(config, "sub_configs", {}) or {}), "backbone_config", "vision_config"]
    for key in keys:
        sub = getattr(config, key, None)
        value = getattr(sub, name, None) if sub is not None and not isinstance(sub, dict) else None
        if value is not None:
            return value
    return None


def _pair(value: Any) -> tuple[int, int] | None:
    """``(h, w)`` of an int or a pair, None when unset."""
    if value is None:
        return None
    if isinstance(value, (list, tuple)):
        return int(value[0]), int(value[-1])
    return int(value), int(value)


def image_layout(model: Any, config: Any = None) -> ImageLayout:
    """The input the forward of an image classifier ``model`` takes, from its signature and
    config: ``pixel_values`` of ``num_channels`` (3 when the config has none) at
    ``image_size`` (:data:`IMAGE_SIZE` when the config has none), or ImageGPT's cluster
    ids, one per pixel of a square of ``n_positions`` pixels.

    >>> from exportcheck import untrained_model
    >>> image_layout(untrained_model("vit", task="image-classification").model)
    ImageLayout(name='pixel_values', channels=3, height=64, width=64, step=16, interpolate=True)
    """
    config = model.config if config is None else config
    params = inspect.signature(model.forward).parameters
    if "pixel_values" not in params:
        if "input_ids" in params and getattr(config, "n_positions", None):
            side = int(config.n_positions**0.5)
            return ImageLayout("input_ids", None, side, side, 1, False)
        raise ValueError(
            f"{type(model).__name__}.forward takes no pixel_values (it takes "
            f"{', '.join(list(params)[:4])}, ...): not an image classifier."
        )
    channels = _find(config, "num_channels") or 3
    height, width = _pair(_find(config, "image_size")) or (IMAGE_SIZE, IMAGE_SIZE)
    patch = _pair(_find(config, "patch_size"))
    step = patch[0] if patch else STRIDE
    return ImageLayout(
        "pixel_values",
        int(channels),
        height,
        width,
        step,
        "interpolate_pos_encoding" in params,
    )


def check_pixel_values(model: Any, pixel_values: Any) -> None:
    """Raise a ValueError saying what ``model`` expects when ``pixel_values`` is not a
    ``(batch, channels, height, width)`` tensor of the model's channel count.

    >>> import torch
    >>> from exportcheck import untrained_model
    >>> m = untrained_model("vit", task="image-classification")
    >>> check_pixel_values(m.model, torch.zeros(3, 64, 64))
    Traceback (most recent call last):
        ...
    ValueError: ViTForImageClassification takes pixel_values of shape (batch, 3, height, width), got 3x64x64: add a batch dimension (x[None]) for a single image.
    """
    layout = image_layout(model)
    rank = 2 if layout.channels is None else 4
    if pixel_values.dim() < rank:
        hint = "add a batch dimension (x[None]) for a single image"
    elif pixel_values.dim() > rank:
        hint = "pass one image per row of the batch (stack the images, do not nest batches)"
    elif layout.channels is not None and pixel_values.shape[1] != layout.channels:
        if pixel_values.shape[-1] == layout.channels:
            hint = "channels come first: permute a (batch, height, width, channels) image"
            hint += " with x.permute(0, 3, 1, 2)"
        else:
            hint = (
                f"the model takes {layout.channels} channels; convert the images "
                f"(RGB for 3) with the model's image processor"
            )
    else:
        return
    # the sizes are read only here: int() of a traced dimension would make it static
    name, shape = type(model).__name__, "x".join(str(int(s)) for s in pixel_values.shape)
    raise ValueError(
        f"{name} takes {layout.name} of shape {layout.shape_text}, got {shape}: {hint}."
    )


def _torch_module() -> Any:
    import torch

    return torch.nn.Module


class PixelClassifier(_torch_module()):  # type: ignore[misc]
    """An image classifier that checks its input's layout (:func:`check_pixel_values`)
    and, when ``interpolate`` is set, interpolates its position embeddings to the
    image's resolution: the module the task exports.

    >>> import torch
    >>> from exportcheck import untrained_model
    >>> m = untrained_model("vit", task="image-classification")
    >>> PixelClassifier(m.model, interpolate=True)(torch.rand(1, 3, 48, 80)).logits.shape
    torch.Size([1, 2])
    """

    def __init__(self, model: Any, *, interpolate: bool = False) -> None:
        super().__init__()
        self.model = model
        self.interpolate = interpolate
        self.training = model.training  # an eval model gives an eval wrapper

    def forward(self, pixel_values: Any) -> Any:
        check_pixel_values(self.model, pixel_values)
        if self.interpolate:
            return self.model(pixel_values=pixel_values, interpolate_pos_encoding=True)
        return self.model(pixel_values=pixel_values)


class PromptedClassifier(PixelClassifier):
    """A vision-language classifier (ShieldGemma 2): the image and a prompt whose image
    tokens its forward replaces by the image's features -> the logits of its classes at
    the prompt's last token."""

    def forward(self, pixel_values: Any, input_ids: Any, attention_mask: Any) -> Any:  # type: ignore[override]
        check_pixel_values(self.model, pixel_values)
        out = self.model(
            pixel_values=pixel_values, input_ids=input_ids, attention_mask=attention_mask
        )
        return out.logits


#: text tokens before and after the image in each set's prompts (batch, before, after):
#: every set its own shapes, one left-padded, the last at the batch bound
PROMPTS = [(2, 3, 4), (1, 5, 2), (3, 2, 6), (2, 4, 4), (4, 6, 3), (2, 3, 7), (BATCH_MAX, 8, 8)]


def _sizes(height: int, width: int, step: int) -> list[tuple[int, int]]:
    """(height, width) of each input set, the export's first, the upper bounds last:
    multiples of ``step``, from the first above the config's resolution to three steps
    more, in either direction.

    None is at the config's resolution: models that interpolate their position
    embeddings return them as they are at that resolution, a branch on the input's
    size that the export would keep (and specialize the height and width to it).
    """
    s = step
    h, w = (s * (size // s + 1) for size in (height, width))
    return [
        (h, w + s),
        (h + s, w + 2 * s),
        (h + 2 * s, w),
        (h, w + 2 * s),
        (h + s, w + s),
        (h + 2 * s, w + 3 * s),
        (h + 3 * s, w + 3 * s),
    ]


def _export_keeps_resolution(module: Any, sets: list[dict[str, Any]], dims: dict[int, Any]) -> str:
    """The first line of the error saying that ``torch.export`` of ``module`` makes the
    height or width static ("" when it keeps them dynamic): a constraint violation on
    them while exporting, or a guard on them failing on another set's resolution. Other
    errors are left to the validation, which reports them."""
    import torch

    try:
        with torch.no_grad():
            program = torch.export.export(
                module, (), kwargs=dict(sets[0]), dynamic_shapes={"pixel_values": dims}
            )
            for feeds in sets[1:]:
                program.module()(**feeds)
    except (torch._dynamo.exc.UserError, AssertionError, RuntimeError) as e:
        text = str(e)
        on_size = any(k in text for k in ("height", "width", "size()[2]", "size()[3]"))
        if on_size and ("Constraints violated" in text or "Guard failed" in text):
            lines = [line.strip(" -") for line in text.strip().splitlines()]
            telling = ("specialized", "Guard failed", "generated guard", "must always be")
            first = next((x for x in lines if any(t in x for t in telling)), lines[0])
            return first if len(first) <= 240 else first[:240] + "..."
    return ""


def _shrink_image_size(config: Any) -> tuple[Any, list[str]]:
    """``config`` (a copy) with an ``image_size`` above :data:`IMAGE_SIZE` shrunk to it, in
    the config and its sub-configs, and a note; the config itself when none is larger."""
    import copy

    changed = {}
    for key in ["", *(getattr(config, "sub_configs", {}) or {}), "backbone_config"]:
        sub = getattr(config, key, None) if key else config
        if sub is None or isinstance(sub, dict):
            continue
        size = _pair(getattr(sub, "image_size", None))
        if size is None or max(size) <= IMAGE_SIZE:
            continue
        scale = IMAGE_SIZE / max(size)
        value = sub.image_size
        if isinstance(value, (list, tuple)):
            new = type(value)(max(1, round(s * scale)) for s in value)
        else:
            new = IMAGE_SIZE
        changed[f"{key}.image_size" if key else "image_size"] = new
    if not changed:
        return config, []
    config = set_attributes(copy.deepcopy(config), changed)
    listed = ", ".join(f"{k}={v!r}" for k, v in changed.items())
    return config, [
        f"{listed}: the tiny config keeps the checkpoint's resolution; smaller is faster"
    ]


def _takes_a_prompt(model_class: Any) -> bool:
    """Whether the classifier's forward reads token ids beside the pixels (a
    vision-language classifier such as ShieldGemma 2)."""
    params = inspect.signature(model_class.forward).parameters
    return "input_ids" in params and "pixel_values" in params


#: the least change of the untrained logits, for other images, that shows they depend on
#: the image: ten times the default tolerance of the checks
IMAGES_MATTER = 1e-3


def _logit_change(model: Any, layout: Any, generator: Any) -> float:
    import torch

    shape = (2, layout.channels, layout.height, layout.width)
    first, second = torch.rand(shape, generator=generator), torch.rand(shape, generator=generator)

    def scores(pixels: Any) -> Any:
        out = model(pixel_values=pixels)
        found = getattr(out, "logits", None)
        return out[0] if found is None else found  # PP-LCNet returns its scores first

    with torch.no_grad():
        a, b = scores(first), scores(second)
    return float((a - b).abs().max())


def _logit_scale(model: Any, layout: Any, generator: Any) -> float:
    import torch

    shape = (2, layout.channels, layout.height, layout.width)
    with torch.no_grad():
        out = model(pixel_values=torch.rand(shape, generator=generator))
    found = getattr(out, "logits", None)
    return float((out[0] if found is None else found).abs().max())


#: what :func:`_make_images_matter` re-initialises, in order, until the image counts
_RESCUES = (
    ("batch-norm scales at 1", ("norm",)),
    ("batch-norm scales at 1, convolutions at a fan-in scale (He)", ("norm", "conv")),
    (
        "batch-norm scales at 1, convolutions and linear layers at a fan-in scale (He)",
        ("norm", "conv", "linear"),
    ),
    (
        "batch-norm scales at 1 and statistics measured on random images",
        ("norm", "statistics"),
    ),
)


def _measure_norm_statistics(model: Any, layout: Any) -> None:
    """Set every batch norm's running mean and variance to those of its inputs on random
    images, as training would: each then hands on activations of unit scale, where the
    untrained running variance of 1 lets gated blocks shrink them block after block.

    The images are of the config's resolution and of those the checks use (:func:`_sizes`),
    each the model accepts: statistics of 64-pixel images alone, whose last feature map
    is 2 x 2, make EfficientNet's logits grow to 1e3 at 192 pixels, where float rounding
    alone moves them by more than the tolerance.
    """
    import torch

    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    momentums = [norm.momentum for norm in norms]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # a cumulative average over the batches below
        norm.train()
    generator = torch.Generator().manual_seed(0)  # the caller's draws stay as they were
    step = layout.step * -(-STRIDE // layout.step)
    sizes = [(layout.height, layout.width), *_sizes(layout.height, layout.width, step)]
    with torch.no_grad():
        for size in sizes:
            pixels = torch.rand((2, layout.channels, *size), generator=generator)
            try:
                model(pixel_values=pixels)
            except (RuntimeError, ValueError):  # a resolution the model rejects
                if size == sizes[0]:
                    raise
    for norm, momentum in zip(norms, momentums, strict=True):
        norm.momentum = momentum
        norm.eval()


def _make_images_matter(model: Any, layout: Any, generator: Any) -> str | None:
    """Re-initialise an untrained classifier whose logits do not depend on the image, and
    say how; None when they do.

    Deep convolutional stacks initialised with the config's small deviation (0.02), some
    with batch-norm scales drawn from it too, shrink the activations layer after layer:
    untrained, MobileNet's logits move by 1e-29 between two images, and the checks could
    not see an error on the image's path. Trained weights keep the scale. The steps of
    :data:`_RESCUES` are tried in order (batch-norm scales at their PyTorch default of 1,
    then convolutions, then linear layers at a fan-in scale; else the batch norms' running
    statistics measured on random images, with the config's weights, which EfficientNet's
    and PP-LCNet's gated blocks need); when the logits then grow
    past 10 (a residual stack at a fan-in scale), the classifier heads (the linear layers
    with one output per label) are scaled down to bring them to 1.

    :raises ValueError: when the logits still do not depend on the image
    """
    import copy

    import torch

    before = _logit_change(model, layout, generator)
    if before >= IMAGES_MATTER:
        return None
    kinds = {
        "norm": (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d, torch.nn.BatchNorm3d),
        "conv": (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d),
        "linear": (torch.nn.Linear,),
    }
    labels = getattr(model.config, "num_labels", None)
    original = copy.deepcopy(model.state_dict())
    after = before
    for what, steps in _RESCUES:
        model.load_state_dict(original)
        with torch.no_grad():
            for module in model.modules():
                if isinstance(module, kinds["norm"]) and module.weight is not None:
                    module.weight.fill_(1.0)
                elif "conv" in steps and isinstance(module, kinds["conv"]):
                    torch.nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
                elif "linear" in steps and isinstance(module, kinds["linear"]):
                    torch.nn.init.kaiming_normal_(
                        module.weight, mode="fan_in", nonlinearity="linear"
                    )
            if "statistics" in steps:
                _measure_norm_statistics(model, layout)
            scale = _logit_scale(model, layout, generator)
            heads = [
                m
                for m in model.modules()
                if isinstance(m, torch.nn.Linear) and m.out_features == labels
            ]
            if scale > 10 and heads:
                for head in heads:
                    head.weight.div_(scale)
                    if head.bias is not None:
                        head.bias.div_(scale)
                what += f", the classifier heads divided by {scale:.2g}"
        after = _logit_change(model, layout, generator)
        if after >= IMAGES_MATTER:
            return (
                f"untrained weights rescaled ({what}): with the config's initialisation the "
                f"logits moved by {before:.2g} between two images (activations vanish "
                f"through the stack), now by {after:.2g}"
            )
    raise ValueError(
        f"{type(model).__name__}'s untrained logits move by {after:.2g} between two images, "
        "with batch-norm scales at 1 and its convolutions and linear layers at a fan-in "
        "scale, or its batch-norm statistics measured on random images: the checks would be run on outputs that do not depend on the image"
    )


class ImageClassification(Task):
    """Image classification: one graph, pixel values -> logits."""

    name = "image-classification"
    mapping = "MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES"
    rank = 50
    columns = ("distinct_shapes",)
    status_intro = (
        "Every model type of the installed transformers' "
        "``MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES``, built untrained from a tiny "
        "config with ``AutoModelForImageClassification`` (its image size shrunk to 64), "
        "exported with ``torch.export`` (``pixel_values`` in as its image processor gives "
        "them; dynamic batch, and dynamic height and width when the model runs at another "
        "resolution, with ``interpolate_pos_encoding=True`` when its forward takes it; "
        "class ``logits`` out) and converted to ONNX, then run on seven input sets of "
        "distinct shapes (six the export did not see, at other batch sizes and "
        "resolutions, one at the upper bounds the export declares) and compared with "
        "eager PyTorch. A model that rejects another resolution keeps the config's, and "
        "its row says so. The dynamic sets start above the config's resolution: models "
        "that skip interpolating their position table at exactly that size branch on it, "
        "so a program traced at another size guards against the config's own (export at "
        "the config's size for that one). A vision-language classifier also takes the ids "
        "and mask of a prompt around the image's tokens."
    )

    def build(self, config: Any, *, seed: int = 0) -> UntrainedModel:
        import torch

        config, shrunk = _shrink_image_size(config)
        torch.manual_seed(seed)
        config, fixed = task_config(config, self.name)
        prompted = _takes_a_prompt(self._model_class(config))
        if prompted:
            from .image_text_to_text import fit_config

            fixed = [*fixed, *fit_config(config)]
        model = self._model_class(config)._from_config(config).to(torch.float32).eval()
        prepare_weights(model, config)
        layout = image_layout(model, config)
        generator = torch.Generator().manual_seed(seed)
        notes = [*shrunk, *fixed]
        if layout.channels is None:
            return self._cluster_ids(model, config, layout, generator, notes)
        if prompted:
            return self._prompted(model, config, layout, generator, notes)
        if "spatial_shapes" in inspect.signature(model.forward).parameters:
            return self._patch_sequences(model, config, generator, notes)
        rescaled = _make_images_matter(model, layout, generator)
        if rescaled:
            notes.append(rescaled)
        resolutions, step, interpolate, why_static = self._resolutions(model, layout, generator)
        module = PixelClassifier(model, interpolate=interpolate)
        if why_static:
            notes.append(why_static)
        elif interpolate:
            notes.append(
                f"interpolate_pos_encoding=True: the position embeddings of {layout.height}x"
                f"{layout.width} are interpolated to each image"
            )
        sets = [
            {"pixel_values": torch.rand((b, layout.channels, h, w), generator=generator)}
            for b, (h, w) in zip(BATCHES, resolutions, strict=True)
        ]
        batch = torch.export.Dim("batch", min=1, max=BATCH_MAX)
        dims: dict[int, Any] = {0: batch}
        if not why_static:
            # declared as multiples of the step, as the sets are: strided convolutions and
            # patches then divide them exactly, with no guard on a remainder
            for axis, name in ((2, "height"), (3, "width")):
                sizes = [r[axis - 2] // step for r in resolutions]
                steps = torch.export.Dim(f"{name}_steps", min=min(sizes), max=max(sizes))
                dims[axis] = step * steps
            kept = _export_keeps_resolution(module, sets, dims)
            if kept:
                notes.append(
                    f"static resolution {layout.height}x{layout.width}: eager "
                    f"{type(model).__name__} runs at other resolutions, but torch.export "
                    f"keeps the traced one ({kept})"
                )
                dims = {0: batch}
                sets = [
                    {
                        "pixel_values": torch.rand(
                            (b, layout.channels, layout.height, layout.width), generator=generator
                        )
                    }
                    for b in BATCHES
                ]
        m = UntrainedModel(
            model=model,
            config=config,
            inputs=sets[0],
            other_inputs=sets[1:],
            dynamic_shapes={"pixel_values": dims},
            cache_argument=None,
            shapes=[tuple(f["pixel_values"].shape) for f in sets],
            notes=notes,
            task=self.name,
        )
        m.components = [
            Component(
                name="model",
                module=module,
                input_sets=m.input_sets,
                dynamic_shapes=m.dynamic_shapes,
                labels=[self.label(m, feeds) for feeds in m.input_sets],
            )
        ]
        return m

    @staticmethod
    def _resolutions(
        model: Any, layout: ImageLayout, generator: Any
    ) -> tuple[list[tuple[int, int]], int, bool, str]:
        """The resolution of each input set, the step they are multiples of, whether the
        forward gets ``interpolate_pos_encoding=True``, and why the resolution is static
        ("" when it is not).

        The resolutions are those of :func:`_sizes`, in steps of the patch size, else of
        :data:`STRIDE`. The model is called at each of them first (batch 1), passing
        ``interpolate_pos_encoding=True`` when its forward takes it (by name, or through
        ``**kwargs`` down to its vision tower). When every try raises, every set keeps the config's
        resolution and the reason is the first error.
        """
        import torch

        h, w = layout.height, layout.width
        params = inspect.signature(model.forward).parameters.values()
        takes_kwargs = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params)
        modes = [True] if layout.interpolate else [False, True] if takes_kwargs else [False]
        first = None
        coarse = layout.step * -(-STRIDE // layout.step)  # a multiple of the patch >= STRIDE
        for step in dict.fromkeys([coarse, STRIDE]):
            for interpolate in modes:
                sizes = _sizes(h, w, step)
                module = PixelClassifier(model, interpolate=interpolate)
                try:
                    with torch.no_grad():
                        for size in sizes:
                            module(torch.rand((1, layout.channels, *size), generator=generator))
                except (RuntimeError, ValueError, IndexError, TypeError, AssertionError) as e:
                    if first is None:
                        text = str(e).strip().splitlines()[0] if str(e).strip() else ""
                        first = f"{sizes[1][0]}x{sizes[1][1]} ({type(e).__name__}: {text[:200]})"
                    continue
                return sizes, step, interpolate, ""
        why = f"static resolution {h}x{w}: {type(model).__name__} rejects {first}"
        return [(h, w)] * len(BATCHES), 1, layout.interpolate, why

    def _model_class(self, config: Any) -> Any:
        """The class of the mapping for the config's model type; the first of several
        (``DeiTForImageClassification``, not its ``WithTeacher`` variant), which
        ``AutoModelForImageClassification.from_config`` cannot choose by itself when the
        config lists no architectures."""
        import transformers
        from transformers.models.auto import modeling_auto

        names = getattr(modeling_auto, self.mapping)[config.model_type]
        return getattr(transformers, names[0] if isinstance(names, (list, tuple)) else names)

    def _patch_sequences(
        self, model: Any, config: Any, generator: Any, notes: list[str]
    ) -> UntrainedModel:
        """SigLIP2 (NaFlex): each image resized to its own grid of patches, flattened to
        ``(batch, patches, channels * patch * patch)`` and padded to the batch's longest,
        with ``pixel_attention_mask`` (0 on the padding) and ``spatial_shapes`` (the grid
        of each image), as ``Siglip2ImageProcessor`` gives them."""
        import torch

        vision = getattr(config, "vision_config", config)
        width = int(vision.num_channels) * int(vision.patch_size) ** 2
        #: (grid of each image) per input set; the longest sets the padded length
        grids = [
            [(4, 6), (5, 4)],
            [(3, 3)],
            [(6, 6), (4, 5), (2, 8)],
            [(5, 5), (5, 5), (3, 7), (4, 4)],
            [(8, 4), (4, 7), (6, 5), (3, 3), (7, 6)],
            [(2, 2), (6, 7), (5, 8), (4, 6), (3, 9), (9, 5)],
            [(8, 8 - i % 3) for i in range(BATCH_MAX)],
        ]
        sets = []
        for rows in grids:
            length = max(h * w for h, w in rows)
            x = torch.zeros((len(rows), length, width))
            mask = torch.zeros((len(rows), length), dtype=torch.int64)
            for i, (h, w) in enumerate(rows):
                x[i, : h * w] = torch.rand((h * w, width), generator=generator)
                mask[i, : h * w] = 1
            shapes = torch.tensor(rows, dtype=torch.int64)
            sets.append({"pixel_values": x, "pixel_attention_mask": mask, "spatial_shapes": shapes})
        notes.append(
            "patch sequences: each image is its own grid of patches (spatial_shapes), "
            "padded to the batch's longest (pixel_attention_mask), as Siglip2ImageProcessor "
            "gives them"
        )
        batch = torch.export.Dim("batch", min=1, max=BATCH_MAX)
        patches = torch.export.Dim("patches", min=2, max=int(vision.num_patches))
        dynamic_shapes = {
            "pixel_values": {0: batch, 1: patches},
            "pixel_attention_mask": {0: batch, 1: patches},
            "spatial_shapes": {0: batch},
        }
        return UntrainedModel(
            model=model,
            config=config,
            inputs=sets[0],
            other_inputs=sets[1:],
            dynamic_shapes=dynamic_shapes,
            cache_argument=None,
            shapes=[tuple(f["pixel_values"].shape) for f in sets],
            notes=notes,
            task=self.name,
        )

    def _prompted(
        self, model: Any, config: Any, layout: ImageLayout, generator: Any, notes: list[str]
    ) -> UntrainedModel:
        """A vision-language classifier: images at the vision config's resolution and a
        prompt of text tokens around the image's tokens (as many as the model writes
        features for), left-padded as a batch of prompts is, the logits read at the last
        token."""
        import torch

        from ._audio_lm import _text_ids
        from .image_text_to_text import image_token

        token = image_token(config)
        count = int(config.mm_tokens_per_image)
        text = config.get_text_config(decoder=True)
        sets = []
        for i, (batch, before, after) in enumerate(PROMPTS):
            ids = torch.cat(
                [
                    _text_ids(text, (batch, before), generator, token),
                    torch.full((batch, count), token),
                    _text_ids(text, (batch, after), generator, token),
                ],
                1,
            )
            mask = torch.ones_like(ids)
            if i == 3:  # the first row's prompt is 2 tokens shorter: left padding
                pad = getattr(text, "pad_token_id", None) or 0
                ids[0, :2], mask[0, :2] = pad, 0
            pixels = torch.rand(
                (batch, layout.channels, layout.height, layout.width), generator=generator
            )
            sets.append({"pixel_values": pixels, "input_ids": ids, "attention_mask": mask})
        notes.append(
            f"vision-language classifier: {type(model).__name__} reads a prompt whose "
            f"{count} image tokens get the image's features, and classifies at its last "
            f"token; the prompts are random text around them (one set left-padded), the "
            f"images static at {layout.height}x{layout.width}, batch and prompt length "
            "dynamic"
        )
        batch = torch.export.Dim("batch", min=1, max=BATCH_MAX)
        length = torch.export.Dim("seq_length", min=count + 2, max=count + 32)
        dims = {
            "pixel_values": {0: batch},
            "input_ids": {0: batch, 1: length},
            "attention_mask": {0: batch, 1: length},
        }
        m = UntrainedModel(
            model=model,
            config=config,
            inputs=sets[0],
            other_inputs=sets[1:],
            dynamic_shapes=dims,
            cache_argument=None,
            shapes=[tuple(f["input_ids"].shape) for f in sets],
            notes=notes,
            task=self.name,
        )
        m.components = [
            Component(
                name="model",
                module=PromptedClassifier(model),
                input_sets=m.input_sets,
                dynamic_shapes=m.dynamic_shapes,
                labels=[self.label(m, feeds) for feeds in m.input_sets],
            )
        ]
        return m

    def _cluster_ids(
        self, model: Any, config: Any, layout: ImageLayout, generator: Any, notes: list[str]
    ) -> UntrainedModel:
        """ImageGPT: one colour-cluster id per pixel, the image size fixed by the positions."""
        import torch

        clusters = int(config.vocab_size) - 1  # the last id starts a sequence
        length = layout.height * layout.width
        sets = [
            {"input_ids": torch.randint(0, clusters, (b, length), generator=generator)}
            for b in BATCHES
        ]
        notes.append(
            f"static resolution {layout.height}x{layout.width}: {type(model).__name__} takes "
            f"one colour-cluster id per pixel and has {config.n_positions} positions"
        )
        batch = torch.export.Dim("batch", min=1, max=BATCH_MAX)
        return UntrainedModel(
            model=model,
            config=config,
            inputs=sets[0],
            other_inputs=sets[1:],
            dynamic_shapes={"input_ids": {0: batch}},
            cache_argument=None,
            shapes=[tuple(f["input_ids"].shape) for f in sets],
            notes=notes,
            task=self.name,
        )

    def components(self, m: UntrainedModel) -> list[Component]:
        return list(m.components) or super().components(m)

    def label(self, m: UntrainedModel, feeds: dict[str, Any]) -> str:
        if "spatial_shapes" in feeds:
            batch, length = feeds["pixel_values"].shape[:2]
            padded = bool((feeds["pixel_attention_mask"] == 0).any())
            size = f"patches={length}" + (" padded" if padded else "")
        elif "input_ids" in feeds and "pixel_values" in feeds:
            batch, length = feeds["input_ids"].shape
            padded = bool((feeds["attention_mask"] == 0).any())
            size = f"prompt={length}" + (" left-padded" if padded else "")
        elif "pixel_values" in feeds:
            batch, _, height, width = feeds["pixel_values"].shape
            size = f"{height}x{width}"
        else:
            batch, length = feeds["input_ids"].shape
            side = int(length**0.5)
            size = f"{side}x{side} ids"
        at_bounds = feeds is m.input_sets[-1] and batch == BATCH_MAX
        return f"batch={batch} {size}" + (" at bounds" if at_bounds else "")


register(ImageClassification())
