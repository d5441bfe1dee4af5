"""How a feature extractor plugs into the extract engine.

A stage turns the decoded frames (and audio) of one video into per-frame rows of a
few datasets, stored in one HDF5 group of the video's feature store.  The engine
(`vidaffect.extract`) decodes each video once and pushes batches of frames through
every stage that needs to run, in dependency order.

Writing a stage:

* subclass :class:`Stage`, set ``name`` (what ``--stages`` and recipes call it),
  ``group`` (the HDF5 group, defaults to ``name``), ``version`` (bump it when the
  output changes for the same parameters, so caches re-run), ``requires`` (stages
  whose datasets it reads, e.g. ``("face",)``) and ``Params`` (a dataclass whose
  field defaults are the one place those defaults live);
* implement :meth:`Stage.outputs` and :meth:`Stage.open`, which returns a
  :class:`StageRun` for one video;
* add it to :data:`STAGE_CLASSES`.

A run's :meth:`StageRun.process` returns rows for the next frames, in order.  It may
lag behind (the mel stage waits for audio) as long as :meth:`StageRun.finish` returns
the rest, but a stage that other stages require must return exactly one row per frame
of the batch, because the engine hands those rows to them in the same batch.
"""

from __future__ import annotations

import abc
import dataclasses
import hashlib
import importlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from vidaffect.video import VideoInfo

# name -> "module:Class"; imported lazily so that `vidaffect --help` stays fast and a
# missing optional backend only matters to the stage that needs it.
STAGE_CLASSES: dict[str, str] = {
    "face": "vidaffect.face:FaceStage",
    "pose": "vidaffect.pose:PoseStage",
    "embed": "vidaffect.encoder:EmbedStage",
    "evm": "vidaffect.evm:EvmStage",
    "mel": "vidaffect.audio:MelStage",
}


class SetupError(Exception):
    """This machine cannot run a stage at all (e.g. a model file is missing and cannot
    be downloaded); the message says which file and what to do."""


@dataclass(frozen=True)
class Output:
    """One per-frame dataset of a stage: its per-frame shape, dtype and the value
    stored for frames that lack the modality (NaN for floats, False for flags)."""

    shape: tuple[int, ...]
    dtype: str
    fill: Any = np.nan


@dataclass
class Batch:
    """A run of consecutive decoded frames.

    start: index of the first frame in the video.
    timestamps: (n,) float64 seconds from the first frame's pts.
    images: (n, H, W, 3) uint8 RGB, already rotated upright.
    inputs: datasets of required stages for these frames, keyed "group/dataset"
        (e.g. "face/bbox"), either computed in this pass or read from the store.
    """

    start: int
    timestamps: np.ndarray
    images: np.ndarray
    inputs: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.timestamps)


class StageRun(abc.ABC):
    """The state of one stage over one video.  ``attrs`` are written on the stage's
    group when the video completes (e.g. why a modality is missing)."""

    def __init__(self) -> None:
        self.attrs: dict[str, Any] = {}

    @abc.abstractmethod
    def process(self, batch: Batch) -> dict[str, np.ndarray]:
        """Rows (keyed by dataset name inside the group) for the next frames."""

    def add_audio(self, samples: np.ndarray, start: float) -> None:
        """Mono float32 samples at :meth:`Stage.audio_rate`, in stream order; ``start``
        is the first sample's time in seconds on the frames' clock."""

    def finish(self) -> dict[str, np.ndarray]:
        """Rows not yet returned by :meth:`process`."""
        return {}

    def abort(self) -> None:
        """The video failed or the run was interrupted: discard partial side files."""


class Stage(abc.ABC):
    name: ClassVar[str]
    group: ClassVar[str] = ""
    version: ClassVar[str] = "1"
    requires: ClassVar[tuple[str, ...]] = ()
    uses_audio: ClassVar[bool] = False
    uses_images: ClassVar[bool] = True
    Params: ClassVar[type]

    def __init__(self, params: Any = None, device: str = "cpu") -> None:
        self.params = params if params is not None else self.Params()
        self.device = device

    @classmethod
    def prepare(cls, params: Any, progress: bool = False) -> None:
        """Run once in the main process before any worker starts, e.g. to download a
        model file once instead of in every worker.  Raises SetupError."""

    @classmethod
    def group_name(cls) -> str:
        return cls.group or cls.name

    @abc.abstractmethod
    def outputs(self) -> dict[str, Output]:
        """Datasets this stage writes inside its group, with ``valid`` among them."""

    @abc.abstractmethod
    def open(self, info: VideoInfo, store_path: Path) -> StageRun:
        """Start one video.  ``store_path`` is the video's feature store; a stage may
        write side files next to it (e.g. a magnified face video)."""

    def audio_rate(self) -> int:
        """Sample rate (Hz) the stage wants audio at, when ``uses_audio``."""
        from vidaffect.video import AUDIO_RATE

        return AUDIO_RATE

    def close(self) -> None:
        """Release models and handles; called once when a worker is done."""


def stage_class(name: str) -> type[Stage]:
    try:
        target = STAGE_CLASSES[name]
    except KeyError:
        raise ValueError(f"unknown stage {name!r}; known stages: {', '.join(STAGE_CLASSES)}") from None
    module, cls = target.split(":")
    return getattr(importlib.import_module(module), cls)


def make_params(cls: type[Stage], overrides: dict[str, Any] | None) -> Any:
    """The stage's Params with recipe/CLI overrides applied; unknown keys are an error
    that names the stage and the keys it accepts."""
    overrides = dict(overrides or {})
    known = {f.name for f in dataclasses.fields(cls.Params)}
    unknown = set(overrides) - known
    if unknown:
        raise ValueError(
            f"stage {cls.name!r} has no parameter(s) {', '.join(sorted(unknown))}; "
            f"it accepts: {', '.join(sorted(known))}"
        )
    return cls.Params(**overrides)


def params_dict(params: Any) -> dict[str, Any]:
    return dataclasses.asdict(params)


def params_hash(stage: type[Stage], params: Any, dependency_hashes: list[str]) -> str:
    """Hash of what determines a stage's output: its version, its parameters and the
    hashes of the stages it reads, so a changed face stage re-runs the crop stages."""
    blob = json.dumps(
        {"version": stage.version, "params": params_dict(params), "deps": sorted(dependency_hashes)},
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
            raise ValueError(f"stage dependency cycle: {' -> '.join(path + (name,))}")
        for dep in stage_class(name).requires:
            visit(dep, path + (name,))
        order.append(name)

    for name in names:
        visit(name, ())
    return order
