"""Image classifiers whose modeling code needs a library that cannot be installed here."""

from __future__ import annotations

from . import Family, register

register(
    Family(
        name="natten_timm",
        model_types=("dinat", "timm_wrapper"),
        task_known_failures={
            "image-classification": {
                "dinat": (
                    r"requires the natten library but it was not found",
                    "DinatForImageClassification's neighborhood attention is the natten "
                    "library's kernel (transformers/models/dinat/modeling_dinat.py:30-37 "
                    "imports it when available); the package index has natten only as a "
                    "source distribution (0.21.7), which compiles torch C++ extensions "
                    "against the installed torch: not a dependency exportcheck takes on",
                ),
                "timm_wrapper": (
                    r"TimmWrapperConfig requires the timm library",
                    "TimmWrapperModel wraps a timm model by name "
                    "(transformers/models/timm_wrapper/configuration_timm_wrapper.py:22-26); "
                    "timm imports torchvision, and the torchvision wheels of the package "
                    "index are built for other torch releases: beside the torch==2.13.0 pin "
                    "they fail to import ('operator torchvision::nms does not exist'), so "
                    "neither is a dependency of exportcheck",
                ),
            },
        },
    )
)
