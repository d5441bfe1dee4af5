"""How a feature extractor plugs into the extract engine.

A stage turns the decoded frames (and audio) of one video into per-frame rows of a
few datasets, stored in one HDF5 group of the video's feature store.  The engine
(:mod:`vidaffect.extraction.engine`) decodes each video once and pushes batches of
frames through every stage that needs to run, in dependency order.

Writing a stage:

* subclass :class:`Stage`, set ``name`` (what ``--stages`` and recipes call it),
  ``group`` (the HDF5 group, defaults to ``name``), ``version`` (bump it when the
  output changes for the same parameters, so caches re-run), ``requires`` (stages
  whose datasets it reads, e.g. ``("face",)``; ``can_do_without`` names those it
  still runs without when they fail on a video), ``Params`` (a
  :class:`~vidaffect.stages.params.StageParams` dataclass whose fields are the one
  place those defaults and their allowed values live) and ``model_inputs`` (datasets
  the networks read, see :class:`ModelInput`);
* implement :meth:`Stage.outputs` and :meth:`Stage.open`, which returns a
  :class:`StageRun` for one video;
* add it to :data:`vidaffect.stages.registry.STAGE_CLASSES`.

A stage that reads files made elsewhere (an import) lists them in
:meth:`Stage.imported_files`: their names, sizes and modification times are part of
the stage's cache key for that video, and the engine gives such a stage the
timestamps of every decoded frame before it starts (``VideoInfo.decoded_timestamps``).

Each stage of a video succeeds or fails on its own: a stage that raises is left out of
the store, stages that require it fail with it (or, when they ``can_do_without`` it, run
without its rows and say so in a ``note``), and the others are stored.

A run's :meth:`StageRun.process` returns rows for the next frames, in order.  It may
lag behind (the mel stage waits for audio) as long as :meth:`StageRun.finish` returns
the rest, but a stage that other stages require must return exactly one row per frame
of the batch, because the engine hands those rows to them in the same batch.

A stage whose rows are known only once it has seen the whole video (the face stage:
who the primary face is) says so with :meth:`Stage.whole_video`; it returns no rows
from :meth:`StageRun.process` and all of them, in runs of frames, from
:meth:`StageRun.finish`.  The stages that require it then run in a second pass over the
video and read its rows from the store.  Such a stage may also find several
*subjects* (people): :attr:`StageRun.subjects` lists the ones after the first, whose
rows :meth:`StageRun.subject_rows` gives, and the stages that depend on it then run once
more per subject (see :mod:`vidaffect.extraction.subjects`).
"""

from __future__ import annotations

import abc
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from vidaffect.io.store import Output
from vidaffect.io.video import VideoInfo
from vidaffect.stages.params import StageParams

__all__ = ["Batch", "ModelInput", "Output", "Stage", "StageRun"]


@dataclass(frozen=True)
class ModelInput:
    """A dataset of a stage that the networks read as one modality (the table of
    modalities in :mod:`vidaffect.learn.modalities` is built from these).

    dataset: the dataset inside the stage's group; ``{name}`` fields are filled from
        the stage's parameters (``"{encoder}"`` -> ``resnet50``).
    keypoints: the dataset holds (x, y, confidence) points; the networks read x and y,
        NaN where the confidence is 0 (the point was not found), and one validity
        flag per point instead of one per frame.
    relative_to: how pixel coordinates are made comparable across videos: ``""``
        (as stored), ``"frame"`` (an ``(x, y, w, h)`` box divided by the frame's width
        and height) or the name of a box dataset of the same group (points centred
        on that box and divided by its width, so the face's position and size in the
        picture drop out).
    """

    dataset: str
    keypoints: bool = False
    relative_to: str = ""

    def dataset_name(self, params: dict[str, Any]) -> str:
        return self.dataset.format(**params)


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

    subjects: list[int] = []  # subjects after the first, once finish() has run (see the module docs)

    def finish(self) -> dict[str, np.ndarray] | Iterable[dict[str, np.ndarray]]:
        """Rows not yet returned by :meth:`process`: one set, or (a whole-video stage)
        sets for consecutive runs of frames, in order."""
        return {}

    def subject_rows(self, subject: int) -> Iterable[dict[str, np.ndarray]]:
        """Every row of one of :attr:`subjects`, in runs of frames (after finish)."""
        raise NotImplementedError(f"{type(self).__name__} has no subjects")

    def close(self) -> None:
        """Every row was stored: release side files."""

    def abort(self) -> None:
        """The video failed or the run was interrupted: discard partial side files."""


def row_sets(rows: dict[str, np.ndarray] | Iterable[dict[str, np.ndarray]]) -> Iterable[dict[str, np.ndarray]]:
    """What :meth:`StageRun.finish` returned, as sets of rows in frame order."""
    return [rows] if isinstance(rows, dict) else rows


class Stage(abc.ABC):
    name: ClassVar[str]
    group: ClassVar[str] = ""
    version: ClassVar[str] = "1"
    requires: ClassVar[tuple[str, ...]] = ()
    can_do_without: ClassVar[tuple[str, ...]] = ()  # of requires: failures this stage survives
    uses_audio: ClassVar[bool] = False
    neural: ClassVar[bool] = False  # runs a network, which a GPU speeds up
    Params: ClassVar[type[StageParams]]
    model_inputs: ClassVar[dict[str, ModelInput]] = {}

    def __init__(self, params: Any = None, device: str = "cpu") -> None:
        self.params = params if params is not None else self.Params()
        self.device = device
        self.uses_images = self.needs_images()

    def needs_images(self) -> bool:
        """Whether the stage looks at the pictures (decoding can skip them otherwise)."""
        return True

    def whole_video(self) -> bool:
        """Whether the stage's rows are known only once it has seen the whole video
        (see the module docs)."""
        return False

    @classmethod
    def prepare(cls, params: Any, progress: bool = False) -> None:
        """Run once in the main process before any worker starts, e.g. to download a
        model file once instead of in every worker.  Raises SetupError."""

    @classmethod
    def cost_share(cls, params: Any) -> float:
        """The fraction of its measured per-frame cost the stage spends with ``params``
        (below 1 when it skips frames), for time estimates."""
        return 1.0

    @classmethod
    def group_name(cls) -> str:
        return cls.group or cls.name

    @classmethod
    def key(cls, dataset: str) -> str:
        """``"group/dataset"``: where one of the stage's datasets lives in a store."""
        return f"{cls.group_name()}/{dataset}"

    @abc.abstractmethod
    def outputs(self) -> dict[str, Output]:
        """Datasets this stage writes inside its group, with ``valid`` among them."""

    @abc.abstractmethod
    def open(self, info: VideoInfo, store_path: Path) -> StageRun:
        """Start one video.  ``store_path`` is the video's feature store; a stage may
        write side files next to it (e.g. a magnified face video)."""

    def imported_files(self, info: VideoInfo) -> list[Path] | None:
        """The files made elsewhere that this stage reads for the video (None: it reads
        none).  Raises (e.g. :class:`~vidaffect.errors.InputNotFound`) when they are
        missing; the stage then fails on that video with that message."""
        return None

    def audio_rate(self) -> int:
        """Sample rate (Hz) the stage wants audio at, when ``uses_audio``."""
        from vidaffect.io.video import AUDIO_RATE

        return AUDIO_RATE

    def close(self) -> None:
        """Release models and handles; called once when a worker is done."""

