"""The house rules of ARCHITECTURE.md, enforced: imports go down the layers, generic modules
name no model type, and ``exportcheck.<module>`` is the module."""

import ast
import importlib
import pkgutil
import re
from pathlib import Path

import pytest

import exportcheck

PACKAGE = Path(exportcheck.__file__).resolve().parent

#: The layers, bottom first. A module may import from its own unit and from units of a
#: lower level, never from a unit of its level or above.
LEVELS = {
    "describe": 0,
    "caches": 1,
    "compare": 2,
    "dims": 2,
    "patches": 3,
    "families": 4,
    "models": 5,
    "tasks": 6,
    "observation": 6,
    "runtimes": 7,
    "saved": 8,
    "validation": 9,
    "sweep": 10,
    "peer": 10,
    "sensitivity": 11,
    "report": 12,
    "cli": 13,
    "__main__": 14,
}
GENERIC = [unit for unit in LEVELS if unit != "families"]


def _modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        if parts == ("__init__",):
            continue  # the public API re-exports everything
        yield path, parts


def _imported_units(path, parts):
    """(line, unit) for every exportcheck module ``path`` imports, lazy imports included."""
    package = ["exportcheck", *parts[:-1]]  # a module's package; an __init__ is its own
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                target = [*base, *(node.module.split(".") if node.module else [])]
            elif node.module and node.module.split(".")[0] == "exportcheck":
                target = node.module.split(".")
            else:
                continue
            names = [a.name for a in node.names]
            if len(target) == 1:  # from exportcheck import x / from .. import x
                for name in names:
                    yield node.lineno, name
            else:
                yield node.lineno, target[1]
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "exportcheck" and "." in alias.name:
                    yield node.lineno, alias.name.split(".")[1]


def test_every_module_belongs_to_a_layer():
    units = {parts[0] for _, parts in _modules()}
    assert units <= set(LEVELS), f"modules outside the layers: {sorted(units - set(LEVELS))}"


def test_imports_go_down_the_layers():
    upward = []
    for path, parts in _modules():
        unit = parts[0]
        for line, imported in _imported_units(path, parts):
            if imported == unit or imported not in LEVELS:
                continue
            if LEVELS[imported] >= LEVELS[unit]:
                upward.append(f"{path.relative_to(PACKAGE)}:{line} imports {imported}")
    assert not upward, "imports that do not go down the layers:\n" + "\n".join(upward)


def _code_strings(tree):
    """String constants of the code, docstrings left out."""
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                docstrings.add(id(body[0].value))
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and id(node) not in docstrings
        ):
            yield node.lineno, node.value


def test_generic_modules_name_no_model_type():
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    model_types = set(CONFIG_MAPPING_NAMES)
    modeling = re.compile(r"transformers\.models\.(\w+)")
    found = []
    for path, parts in _modules():
        if parts[0] not in GENERIC:
            continue
        for line, text in _code_strings(ast.parse(path.read_text(encoding="utf-8"))):
            match = modeling.search(text)
            if text in model_types or (match and match.group(1) in model_types):
                found.append(f"{path.relative_to(PACKAGE)}:{line} {text!r}")
    assert not found, "model types named in generic modules (move them to families/):\n" + (
        "\n".join(found)
    )


SUBMODULES = sorted(
    {
        info.name
        for info in pkgutil.walk_packages(exportcheck.__path__, "exportcheck.")
        if info.name.count(".") == 1 and not info.name.endswith("__main__")
    }
)


@pytest.mark.parametrize("name", SUBMODULES)
def test_importing_a_submodule_gives_the_module(name):
    module = importlib.import_module(name)
    attribute = getattr(exportcheck, name.split(".")[1], module)
    assert attribute is module, (
        f"exportcheck.{name.split('.')[1]} is a {type(attribute).__name__}, which hides "
        f"the module {name}"
    )


def test_public_names_are_exported():
    for name in exportcheck.__all__:
        assert hasattr(exportcheck, name), name
