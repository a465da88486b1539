"""Where a model's config comes from: configs shipped with the package, model types, config objects.

A hub id ``org/name`` is stored as ``configs/org--name.json``, a copy of the
``config.json`` published on the hub.
"""

from __future__ import annotations

import copy
import difflib
import json
from importlib import resources
from typing import Any

__all__ = ["available_configs", "get_config", "resolve_config"]

_SEPARATOR = "--"


def available_configs() -> list[str]:
    """The hub ids whose config ships with exportcheck.

    >>> "arnir0/Tiny-LLM" in available_configs()
    True
    """
    folder = resources.files("exportcheck.models") / "configs"
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
        resources.files("exportcheck.models")
        / "configs"
        / (model_id.replace("/", _SEPARATOR) + ".json")
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


def resolve_config(
    source: Any, overrides: dict[str, Any] | None = None, shrink: bool = False
) -> Any:
    """The transformers config a source names, with ``overrides`` set.

    :param source: a hub id whose config ships with exportcheck, a transformers
        ``model_type`` (always shrunk to a tiny config), a config object or a dict
    :param overrides: config attributes to set; a dotted key reaches a sub-config
    :param shrink: shrink a hub config or a config object too

    >>> resolve_config("llama").hidden_size
    64
    """
    overrides = dict(overrides or {})
    from transformers import AutoConfig, PretrainedConfig

    from ..families import CONFIG_ARGUMENTS
    from .tiny import set_attributes, tiny_config

    if shrink and not (isinstance(source, str) and "/" not in source):
        base = resolve_config(source, {})
        return set_attributes(tiny_config(base), overrides)
    if isinstance(source, PretrainedConfig):
        return set_attributes(copy.deepcopy(source), overrides)
    if isinstance(source, dict):
        data = dict(source)
        if "model_type" not in data:
            raise ValueError("untrained_model: a config dict needs a 'model_type' key.")
        data.update(overrides)
        return AutoConfig.for_model(data.pop("model_type"), **data)
    if isinstance(source, str) and "/" in source:
        return get_config(source, **overrides)
    if isinstance(source, str):
        from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

        if source not in CONFIG_MAPPING_NAMES:
            close = difflib.get_close_matches(source, list(CONFIG_MAPPING_NAMES), n=3)
            hint = f" Did you mean {', '.join(close)}?" if close else ""
            raise ValueError(
                f"untrained_model: {source!r} is neither a hub id with a shipped config "
                f"(exportcheck.available_configs()) nor a transformers model_type.{hint}"
            )
        arguments = copy.deepcopy(CONFIG_ARGUMENTS.get(source, ({}, ""))[0])
        return set_attributes(tiny_config(AutoConfig.for_model(source, **arguments)), overrides)
    raise TypeError(
        "untrained_model: source must be a hub id, a model_type, a config or a dict, "
        f"got {type(source).__name__}."
    )
