"""Training hyper-parameters and network sizes.  Their defaults live in one place: the
``train:`` and ``model:`` sections of the default recipe (``pipelines/thesis.yaml``,
thesis §4.2); another recipe and the command line override them, and ``vidaffect train
--help`` shows them by reading it."""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from vidaffect.errors import ParameterError
from vidaffect.io.recipe import load_recipe
from vidaffect.learn.heads import Sizes, head_spec
from vidaffect.learn.losses import get_loss
from vidaffect.learn.networks import net_spec

OPTIMIZERS = ("sgd", "adam")
AUTO_HEAD = "auto"  # the recipe's head: the network's own default


@dataclass
class Hyper:
    """Training hyper-parameters (see the recipe for the defaults)."""

    net: str
    head: str  # "auto" = the network's default head
    audio_features: str  # what the audio input reads: mel, egemaps or both (networks.AUDIO_FEATURES)
    loss: str
    optimizer: str  # sgd (thesis §4.2) or adam
    lr: float
    momentum: float  # SGD momentum; Adam's beta1
    beta2: float  # Adam's beta2 (not used by SGD)
    weight_decay: float
    plateau_patience: int  # epochs without improvement before the learning rate drops 10x
    early_stopping: int  # epochs without improvement before training stops
    epochs: int
    batch_size: int  # windows per step (per GPU under DDP)
    seq_len: int  # frames per window
    val_split: float  # fraction of videos (or subjects) held out

    def __post_init__(self) -> None:
        for f in fields(self):
            convert = {"str": str, "float": float, "int": int}[str(f.type)]
            try:
                setattr(self, f.name, convert(getattr(self, f.name)))
            except (TypeError, ValueError):
                raise ParameterError(f"training option {f.name}: expected {f.type}, got {getattr(self, f.name)!r}") from None
        spec = net_spec(self.net, self.audio_features)  # names the networks (and audio features) when unknown
        if self.head == AUTO_HEAD:
            self.head = spec.head
        head_spec(self.head)
        get_loss(self.loss)
        if self.optimizer not in OPTIMIZERS:
            raise ParameterError(f"optimizer {self.optimizer!r} is not supported; use {', '.join(OPTIMIZERS)}")
        if not 0 <= self.val_split < 1:
            raise ParameterError(f"val_split must be in [0, 1), got {self.val_split}")
        for name in ("lr", "epochs", "batch_size", "seq_len"):
            if getattr(self, name) <= 0:
                raise ParameterError(f"{name} must be positive, got {getattr(self, name)}")


def recipe_section(section: str, recipe: str | Path | None = None) -> dict[str, Any]:
    """The default recipe's ``section`` (``train`` or ``model``) updated with ``recipe``'s."""
    merged = dict(load_recipe(None)[section])
    if recipe:
        merged.update(load_recipe(recipe)[section])
    return merged


def _check_keys(section: str, merged: dict[str, Any], cls: type) -> None:
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(merged) - known)
    if unknown:
        raise ParameterError(f"unknown {section} option(s) {', '.join(unknown)} in the recipe; known: {', '.join(sorted(known))}")
    missing = sorted(known - set(merged))
    if missing:
        raise ParameterError(f"the recipe's {section}: section lacks {', '.join(missing)}")


def resolve_hyper(recipe: str | Path | None, overrides: dict[str, Any]) -> Hyper:
    """The recipe's training options (:func:`recipe_section`), then ``overrides``
    (None values ignored)."""
    merged = recipe_section("train", recipe)
    merged.update({k: v for k, v in overrides.items() if v is not None})
    _check_keys("train", merged, Hyper)
    return Hyper(**merged)


def resolve_sizes(recipe: str | Path | None = None, overrides: dict[str, Any] | None = None) -> Sizes:
    """The network sizes of the recipe's ``model:`` section, then ``overrides``."""
    merged = {**recipe_section("model", recipe), **(overrides or {})}
    _check_keys("model", merged, Sizes)
    return Sizes(**merged)
