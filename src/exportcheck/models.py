"""Configs shipped with the package, so that models build without the Hugging Face hub.

A hub id ``org/name`` is stored as ``configs/org--name.json``, a copy of the
``config.json`` published on the hub.
"""

from __future__ import annotations

import difflib
import json
from importlib import resources
from typing import Any

__all__ = ["available_configs", "get_config"]

_SEPARATOR = "--"


def available_configs() -> list[str]:
    """The hub ids whose config ships with exportcheck.

    >>> "arnir0/Tiny-LLM" in available_configs()
    True
    """
    folder = resources.files("exportcheck") / "configs"
    names = [
        entry.name[: -len(".json")].replace(_SEPARATOR, "/", 1)
        for entry in folder.iterdir()
        if entry.name.endswith(".json")
    ]
    return sorted(names)


def _config_dict(model_id: str) -> dict[str, Any]:
    if not isinstance(model_id, str) or "/" not in model_id:
        raise ValueError(
            f"get_config: expected a hub id such as 'arnir0/Tiny-LLM', got {model_id!r}."
        )
    known = available_configs()
    if model_id not in known:
        close = difflib.get_close_matches(model_id, known, n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ValueError(
            f"get_config: no config for {model_id!r} ships with exportcheck (the hub is not "
            f"used).{hint} Known ids: exportcheck.available_configs(); or pass a config."
        )
    path = (
        resources.files("exportcheck") / "configs" / (model_id.replace("/", _SEPARATOR) + ".json")
    )
    return json.loads(path.read_text(encoding="utf-8"))


def get_config(model_id: str, **overrides: Any) -> Any:
    """Return the transformers config of a hub id, read from the configs shipped here.

    Keyword arguments override config attributes (``num_hidden_layers=1``, ...).

    >>> config = get_config("arnir0/Tiny-LLM")
    >>> config.model_type, config.hidden_size, config.num_hidden_layers
    ('llama', 192, 1)
    """
    from transformers import AutoConfig

    data = _config_dict(model_id)
    data.update(overrides)
    model_type = data.pop("model_type")
    return AutoConfig.for_model(model_type, **data)
