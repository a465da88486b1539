"""Where a model's config comes from.

:func:`resolve_config` takes any of these sources:

* a hub id whose config ships with the package: ``org/name`` is stored as
  ``configs/org--name.json``, a copy of the ``config.json`` published on the hub;
* a transformers ``model_type``, shrunk to a tiny config;
* a ``config.json`` file, or a model folder that holds one;
* any other hub id: only its ``config.json`` is downloaded, when the hub can be reached;
* a config object or a dict.

A config is always built by transformers' own config class of its ``model_type``:
custom code named by ``auto_map`` is never run.
"""

from __future__ import annotations

import copy
import difflib
import json
import os
import re
from importlib import resources
from pathlib import Path
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
            f"get_config: no config for {model_id!r} ships with exportcheck (get_config does "
            f"not use the hub; untrained_model does).{hint} Known ids: "
            "exportcheck.available_configs(); or pass a config."
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


# ``org/name`` as the hub spells repository ids; anything else with a slash is a path.
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+", re.ASCII)
_JSON_KINDS = {list: "an array", str: "a string", int: "a number", float: "a number"}


def resolve_config(
    source: Any, overrides: dict[str, Any] | None = None, shrink: bool = False
) -> Any:
    """The transformers config a source names, with ``overrides`` set.

    :param source: one of

        * a transformers ``model_type`` (``llama``), always shrunk to a tiny config;
        * a hub id whose config ships with exportcheck (``arnir0/Tiny-LLM``, see
          :func:`available_configs`), found first, offline too;
        * the path (``str`` or :class:`os.PathLike`) of a ``config.json`` file, or of a
          model folder that holds one;
        * any other hub id ``org/name``: its ``config.json`` alone is downloaded with
          ``huggingface_hub`` when the hub can be reached (not with ``HF_HUB_OFFLINE=1``,
          unless it is in the local hub cache);
        * a config object or a config dict.

        A string that contains a path separator other than the one slash of
        ``org/name``, starts with ``.`` or ``~`` or ends in ``.json`` is a path; a
        model_type wins over a folder of the same name (write ``./llama``). A
        config whose ``model_type`` transformers does not know is built from the first
        transformers class its ``architectures`` names; custom code (``auto_map``) is
        never run.
    :param overrides: config attributes to set; a dotted key reaches a sub-config
    :param shrink: shrink any source that is not a model_type with the rules of
        :func:`exportcheck.tiny_config`, then set ``overrides``

    >>> resolve_config("llama").hidden_size
    64
    >>> import json, pathlib, tempfile
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     path = pathlib.Path(folder, "config.json")
    ...     _ = path.write_text(json.dumps({"model_type": "llama", "hidden_size": 4096}))
    ...     print(resolve_config(path).hidden_size, resolve_config(folder, shrink=True).hidden_size)
    4096 64
    """
    overrides = dict(overrides or {})
    from .tiny import set_attributes, tiny_config

    kind, value = _classify(source)
    if kind == "model_type":
        return _model_type_config(value, overrides)
    if shrink:
        return set_attributes(tiny_config(_load(kind, value, {})), overrides)
    return _load(kind, value, overrides)


def _classify(source: Any) -> tuple[str, Any]:
    """What kind of source this is: config, dict, shipped, path, hub or model_type."""
    from transformers import PretrainedConfig
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    if isinstance(source, PretrainedConfig):
        return "config", source
    if isinstance(source, dict):
        return "dict", source
    if isinstance(source, os.PathLike):
        return "path", os.fspath(source)
    if not isinstance(source, str):
        raise TypeError(
            "untrained_model: source must be a hub id, a model_type, the path of a config.json "
            f"or of a model folder, a config or a dict, got {type(source).__name__}."
        )
    if source in available_configs():
        return "shipped", source
    if source in CONFIG_MAPPING_NAMES:
        # A model type wins over a folder of the same name: write ./llama for the folder.
        return "model_type", source
    if os.path.exists(os.path.expanduser(source)) or _looks_like_path(source):
        return "path", source
    if _HUB_ID.fullmatch(source):
        return "hub", source
    return "model_type", source


def _looks_like_path(text: str) -> bool:
    return (
        text.endswith((".json", "/", os.sep))
        or text.startswith((".", "~", "/", os.sep))
        or "\\" in text
        or text.count("/") > 1
        or os.path.isabs(text)
    )


def _load(kind: str, value: Any, overrides: dict[str, Any]) -> Any:
    from .tiny import set_attributes

    if kind == "config":
        return set_attributes(copy.deepcopy(value), overrides)
    if kind == "dict":
        return _config_from_data(dict(value), overrides, "untrained_model: a config dict")
    if kind == "shipped":
        return get_config(value, **overrides)
    if kind == "hub":
        return _read_config_file(_hub_config_file(value), overrides, name_or_path=value)
    return _read_path(value, overrides)


def _model_type_config(model_type: str, overrides: dict[str, Any]) -> Any:
    from transformers import AutoConfig
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    from ..families import CONFIG_ARGUMENTS
    from .tiny import set_attributes, tiny_config

    if model_type not in CONFIG_MAPPING_NAMES:
        close = difflib.get_close_matches(model_type, list(CONFIG_MAPPING_NAMES), n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ValueError(
            f"untrained_model: {model_type!r} is not a transformers model_type, a hub id "
            f"(org/name), a config.json file or a model folder.{hint}"
        )
    arguments = copy.deepcopy(CONFIG_ARGUMENTS.get(model_type, ({}, ""))[0])
    return set_attributes(tiny_config(AutoConfig.for_model(model_type, **arguments)), overrides)


def _read_path(text: str, overrides: dict[str, Any]) -> Any:
    """The config of a config file or of a model folder."""
    path = Path(os.path.expanduser(text))
    if not path.exists():
        where = "" if path.is_absolute() else f" (relative to {os.getcwd()})"
        raise ValueError(
            f"no file or folder {text!r} exists{where}; pass the path of a model's "
            "config.json or of the folder that holds it."
        )
    if path.is_dir():
        file = path / "config.json"
        if not file.exists():
            others = sorted(p.name for p in path.glob("*.json"))[:3]
            listed = f" (its JSON files: {', '.join(others)})" if others else ""
            raise ValueError(
                f"folder {text!r} has no config.json{listed}; pass a model folder, as "
                "save_pretrained or a hub download writes it, or the path of the config file."
            )
        return _read_config_file(file, overrides, name_or_path=text)
    return _read_config_file(path, overrides, name_or_path=text)


def _read_config_file(file: Path, overrides: dict[str, Any], name_or_path: str) -> Any:
    try:
        text = Path(file).read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ValueError(
            f"config file {str(file)!r} is not a UTF-8 text file; pass the model's config.json."
        ) from None
    except OSError as e:
        raise ValueError(
            f"cannot read config file {str(file)!r} ({e.strerror or e}); check that it is a "
            "readable file, or pass another copy of the config."
        ) from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(
            f"config file {str(file)!r} is not valid JSON at line {e.lineno}, column {e.colno} "
            f"({e.msg[:1].lower()}{e.msg[1:]}); fix the file there, or download the model's "
            "config.json again."
        ) from None
    if not isinstance(data, dict):
        raise ValueError(
            f"config file {str(file)!r} holds {_JSON_KINDS.get(type(data), 'a JSON value')}, "
            "not an object; pass the config.json of a model (an object with a 'model_type')."
        )
    return _config_from_data(
        data, overrides, f"config file {str(file)!r}", name_or_path=name_or_path
    )


def _config_from_data(
    data: dict[str, Any],
    overrides: dict[str, Any],
    where: str,
    name_or_path: str | None = None,
) -> Any:
    """Build the transformers config of ``data``, never running custom code."""
    from transformers import AutoConfig
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    from .tiny import set_attributes

    model_type = data.pop("model_type", None)
    if not (isinstance(model_type, str) and model_type in CONFIG_MAPPING_NAMES):
        resolved = _model_type_of_architectures(data.get("architectures"))
        if resolved is None:
            raise ValueError(_unknown_model_type(where, model_type, data))
        model_type = resolved
    # auto_map names custom code: the transformers class of the model type is built instead.
    data.pop("auto_map", None)
    data.update({k: v for k, v in overrides.items() if "." not in k})
    config = AutoConfig.for_model(model_type, **data)
    if name_or_path is not None:
        config._name_or_path = name_or_path
    return set_attributes(config, {k: v for k, v in overrides.items() if "." in k})


def _model_type_of_architectures(architectures: Any) -> str | None:
    """The model type of the first transformers class ``architectures`` names, if any."""
    if not isinstance(architectures, list):
        return None
    import transformers
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    for name in architectures:
        if not (isinstance(name, str) and name.isidentifier()):
            continue
        try:
            model_class = getattr(transformers, name)
            model_type = getattr(model_class.config_class, "model_type", None)
        except (AttributeError, ImportError, RuntimeError):
            continue
        if isinstance(model_type, str) and model_type in CONFIG_MAPPING_NAMES:
            return model_type
    return None


def _unknown_model_type(where: str, model_type: Any, data: dict[str, Any]) -> str:
    import transformers
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    architectures = data.get("architectures")
    named = (
        f" (its architectures {architectures} name no transformers class)" if architectures else ""
    )
    if not isinstance(model_type, str):
        return (
            f"{where} needs a 'model_type' key{named}; add the transformers model type the "
            'model was saved from ("model_type": "llama", ...), or pass a config that '
            "save_pretrained wrote."
        )
    version = f"transformers {transformers.__version__}"
    if "auto_map" in data:
        return (
            f"{where} has model_type {model_type!r}, which {version} does not know{named}, and "
            "exportcheck does not run the custom code its auto_map names; pass a config of a "
            "transformers model type (`exportcheck config llama` prints one), or set its "
            "model_type to the transformers architecture that code follows."
        )
    close = difflib.get_close_matches(model_type, list(CONFIG_MAPPING_NAMES), n=3)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    return (
        f"{where} has model_type {model_type!r}, which {version} does not know{hint}{named}; "
        "pass a config of a model type of this transformers, or upgrade transformers if a "
        "newer one has it."
    )


def _hub_offline() -> bool:
    from huggingface_hub import constants

    flag = os.environ.get("HF_HUB_OFFLINE", "").strip().upper()
    return flag in {"1", "ON", "YES", "TRUE"} or bool(getattr(constants, "HF_HUB_OFFLINE", False))


def _hub_config_file(repo_id: str) -> Path:
    """Download only the ``config.json`` of a hub repository (the local hub cache offline)."""
    import huggingface_hub
    from huggingface_hub import errors

    offline = _hub_offline()
    try:
        return Path(
            huggingface_hub.hf_hub_download(repo_id, "config.json", local_files_only=offline)
        )
    except (errors.LocalEntryNotFoundError, errors.OfflineModeIsEnabled) as e:
        raise ValueError(_hub_unreachable(repo_id, offline, e)) from e
    except errors.GatedRepoError as e:
        raise ValueError(
            f"{repo_id!r} is a gated repository on the hub; accept its conditions on "
            f"https://huggingface.co/{repo_id} and log in (`hf auth login`), or download its "
            "config.json elsewhere and pass the file's path or its folder."
        ) from e
    except errors.RepositoryNotFoundError as e:
        raise ValueError(
            f"{repo_id!r} is not a folder here, and the hub has no repository of that name that "
            "you can see; check the id (log in with `hf auth login` if it is private), or pass "
            "the path of a config.json or of a model folder."
        ) from e
    except errors.EntryNotFoundError as e:
        raise ValueError(
            f"hub repository {repo_id!r} has no config.json, so it holds no transformers model "
            "exportcheck can build; pass the hub id, config.json or folder of a transformers model."
        ) from e
    except errors.HFValidationError as e:
        raise ValueError(
            f"{repo_id!r} is not a valid hub id ({e}); pass a hub id org/name, or the path of "
            f"a config.json or of a model folder (write ./{repo_id} for a relative path)."
        ) from e
    except errors.HfHubHTTPError as e:
        status = getattr(getattr(e, "response", None), "status_code", "an error")
        raise ValueError(
            f"the hub answered {status} when asked for the config.json of {repo_id!r}; try "
            "again later, or download that file elsewhere and pass its path or its folder."
        ) from e
    except OSError as e:
        raise ValueError(_hub_unreachable(repo_id, offline, e)) from e


def _hub_unreachable(repo_id: str, offline: bool, error: BaseException) -> str:
    close = difflib.get_close_matches(repo_id, available_configs(), n=1)
    near = f" (a shipped id is close: {close[0]})" if close else ""
    if offline:
        why = "HF_HUB_OFFLINE is set and its config.json is not in the local hub cache"
        online = ", or set HF_HUB_OFFLINE=0 where this machine can reach the hub"
    else:
        cause = error.__cause__ or error
        why = f"{type(cause).__name__}"
        online = ""
    return (
        f"{repo_id!r} is not a folder here, its config does not ship with exportcheck{near}, "
        f"and the hub cannot be reached ({why}); download its config.json elsewhere and pass "
        f"the file's path or its folder{online} (`exportcheck configs` lists the shipped ids)."
    )
