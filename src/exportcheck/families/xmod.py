"""X-MOD: a language adapter chosen by default."""

from __future__ import annotations

from . import Family, register

register(
    Family(
        name="xmod",
        model_types=("xmod",),
        config_fixes={
            "xmod": (
                {"default_language": "en_XX"},
                "forward needs a default language, what model.set_default_language sets",
            )
        },
    )
)
