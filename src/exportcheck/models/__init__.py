"""Models from configs: where a config comes from, how it shrinks, what a task builds.

* :mod:`.sources`: configs shipped with the package (``configs/*.json``), model types,
  ``config.json`` files and model folders, other hub ids (their ``config.json`` only,
  when the hub can be reached), config objects and dicts;
* :mod:`.tiny`: the generic shrinking rules (per-family fixes live in
  :mod:`exportcheck.families`);
* :mod:`.untrained`: :class:`UntrainedModel`, what :func:`exportcheck.untrained_model`
  returns for every task.
"""

from .sources import available_configs, get_config, resolve_config
from .tiny import set_attributes, tiny_config
from .untrained import UntrainedModel, prepare_weights, pretrained_weights, randomize_zero_weights

__all__ = [
    "UntrainedModel",
    "available_configs",
    "get_config",
    "prepare_weights",
    "pretrained_weights",
    "randomize_zero_weights",
    "resolve_config",
    "set_attributes",
    "tiny_config",
]
