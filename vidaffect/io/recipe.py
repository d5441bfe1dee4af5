"""Recipes: YAML files naming the stages to extract, their parameters and the training
hyper-parameters.  Built-in recipes live in the repository's ``pipelines/`` folder and
ship inside the package; a path to any YAML file works too."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from vidaffect.errors import ParameterError

DEFAULT_RECIPE = "thesis"


def recipe_dir() -> Path:
    """The repository's pipelines/ folder; an installed wheel carries it inside the
    package (setup.cfg maps it to vidaffect/pipelines)."""
    package = Path(__file__).resolve().parents[1]
    for candidate in (package / "pipelines", package.parent / "pipelines"):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError("the built-in recipes (pipelines/*.yaml) are missing from this installation")


def builtin_recipes() -> list[str]:
    return sorted(p.stem for p in recipe_dir().glob("*.yaml"))


def load_recipe(name_or_path: str | Path | None = None) -> dict[str, Any]:
    """Load a recipe by built-in name (``thesis``) or path.

    Returns ``{"name": str, "stages": {stage: {param: value}}, "train": {key: value},
    "model": {size: value}}``.
    """
    name_or_path = name_or_path or DEFAULT_RECIPE
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise ParameterError(f"recipe file {path} does not exist")
        text = path.read_text()
    else:
        res = recipe_dir() / f"{name_or_path}.yaml"
        if not res.is_file():
            raise ParameterError(f"unknown recipe {name_or_path!r}; built-in recipes: {', '.join(builtin_recipes())}, or give a .yaml path")
        text = res.read_text()
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ParameterError(f"recipe {name_or_path}: invalid YAML ({exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("stages", {}), dict):
        raise ParameterError(f"recipe {name_or_path}: expected a mapping with 'stages', 'train' and 'model' sections")
    stages = {name: dict(params or {}) for name, params in (data.get("stages") or {}).items()}
    sections = {key: dict(data.get(key) or {}) for key in ("train", "model")}
    return {"name": data.get("name", str(name_or_path)), "stages": stages, **sections}


def parse_assignments(items: list[str]) -> dict[str, dict[str, Any]]:
    """``["face.min_detection_confidence=0.3", ...]`` -> ``{"face": {...: 0.3}}``; values
    are parsed as YAML scalars so numbers and booleans keep their types."""
    out: dict[str, dict[str, Any]] = {}
    for item in items:
        key, sep, value = item.partition("=")
        stage, dot, param = key.partition(".")
        if not sep or not dot or not stage or not param:
            raise ParameterError(f"--set {item!r}: expected STAGE.PARAM=VALUE, e.g. face.min_detection_confidence=0.3")
        out.setdefault(stage, {})[param] = yaml.safe_load(value) if value else ""
    return out
