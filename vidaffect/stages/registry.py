"""The stages vidaffect knows, and what follows from them: the order they run in,
their parameters built from a recipe, and the hash that decides whether a cached
stage is current."""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import json
from typing import Any

from vidaffect.errors import ParameterError
from vidaffect.stages.base import Stage
from vidaffect.stages.params import StageParams

# name -> "module:Class"; imported lazily so that `vidaffect --help` stays fast and a
# missing optional backend only matters to the stage that needs it.
STAGE_CLASSES: dict[str, str] = {
    "face": "vidaffect.stages.face:FaceStage",
    "pose": "vidaffect.stages.pose:PoseStage",
    "embed": "vidaffect.stages.embed:EmbedStage",
    "evm": "vidaffect.stages.evm:EvmStage",
    "mel": "vidaffect.stages.mel:MelStage",
    "head": "vidaffect.stages.head:HeadStage",
    "gaze": "vidaffect.stages.gaze:GazeStage",
    "egemaps": "vidaffect.stages.egemaps:EgemapsStage",
}


def stage_class(name: str) -> type[Stage]:
    """The class of the stage called ``name``."""
    try:
        target = STAGE_CLASSES[name]
    except KeyError:
        raise ParameterError(f"unknown stage {name!r}; known stages: {', '.join(STAGE_CLASSES)}") from None
    module, cls = target.split(":")
    return getattr(importlib.import_module(module), cls)


def all_stages() -> list[type[Stage]]:
    """Every stage class, in :data:`STAGE_CLASSES` order."""
    return [stage_class(name) for name in STAGE_CLASSES]


def make_params(cls: type[Stage], overrides: dict[str, Any] | None) -> StageParams:
    """The stage's Params with recipe/CLI overrides applied and checked; an unknown key
    or a bad value is a :class:`ParameterError` that names the parameter."""
    overrides = dict(overrides or {})
    known = {f.name for f in dataclasses.fields(cls.Params)}
    unknown = set(overrides) - known
    if unknown:
        raise ParameterError(
            f"stage {cls.name!r} has no parameter(s) {', '.join(sorted(unknown))}; "
            f"it accepts: {', '.join(sorted(known))}"
        )
    return cls.Params(**overrides)


def params_hash(stage: type[Stage], params: StageParams, dependency_hashes: list[str]) -> str:
    """Hash of what determines a stage's output: its version, its parameters and the
    hashes of the stages it reads, so a changed face stage re-runs the crop stages."""
    blob = json.dumps(
        {"version": stage.version, "params": params.as_dict(), "deps": sorted(dependency_hashes)},
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def resolve_order(names: list[str]) -> list[str]:
    """Requested stages plus everything they require, dependencies first."""
    order: list[str] = []

    def visit(name: str, path: tuple[str, ...]) -> None:
        if name in order:
            return
        if name in path:
            raise ParameterError(f"stage dependency cycle: {' -> '.join(path + (name,))}")
        for dep in stage_class(name).requires:
            visit(dep, path + (name,))
        order.append(name)

    for name in names:
        visit(name, ())
    return order
