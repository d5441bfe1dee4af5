"""The face stage: the primary face of every frame (and, with ``faces=all``, every
person's face), with 70 landmarks and a dense mesh.

Datasets of the ``face`` group, one row per frame (pixel coordinates, origin at the
top-left corner of the frame):

==============  ===============  ======================================================
``landmarks``   (70, 2) float32  68 iBUG points + 2 pupils (:mod:`.layouts`)
``bbox``        (4,) float32     ``(x, y, w, h)``, the tight box around the 68 points
``score``       () float32       confidence of the face (see the backends below)
``count``       () int32         faces found in the frame, the stored one included
``identity``    () int32         the stored face's identity (mediapipe backend; -1
                                 where there is no face and for imported faces)
``mesh``        (478, 3) float16 MediaPipe's face mesh: x, y in pixels; z is relative
                                 depth in the same pixel scale (MediaPipe's normalised
                                 z times the frame's width), about 0 at the face's
                                 centre, negative towards the camera.  float16 keeps
                                 1 px steps up to 2048 px.
``valid``       () bool          the stored face is in this frame
==============  ===============  ======================================================

Frames without the stored face hold NaN (``valid`` False); a value is never carried
over from an earlier frame.  ``count`` counts every face found in the frame, so it is
at least 1 where ``valid`` is true, and 0 only when no face at all was found; it can
be 1 or more where ``valid`` is false when only other people are in view.

Backends (parameter ``backend``):

``mediapipe`` (default)
    Every face is followed with an identity (:mod:`.face_tracker`,
    :mod:`.face_identities`): MediaPipe's full-range face detector finds faces (in
    tiles as well for frames larger than ``detect_tile``, so faces from about 50 px
    high are found in 640x360 and 1920x1080 frames alike), and MediaPipe's face mesh
    with iris refinement runs on a steady, upright region around each face
    (``crop_scale`` times its size).  Identical frames give identical landmarks.  Jaw
    points follow the face outline (:mod:`.jaw`).  A face is counted once the mesh
    confirms it (a detector's false positive, e.g. on lettering, is not a face); at
    most ``max_faces`` faces are followed and counted.  ``score`` is the detector's
    score of the face at its latest detection.

    The people are decided once the whole video has been seen (the faces of every
    frame wait in a temporary table, :mod:`.face_table`): the *primary* face, stored
    in the ``face`` group, is the person with the most screen time weighted by size,
    the sum over the frames a person is seen of the face's height over the frame's
    height.  The group attribute ``subjects`` (JSON) lists the people stored, the
    primary one first (subject 0), each with its identity, frame count, first and
    last frame, screen time and mean horizontal position (``centre_x``, 0 left to 1
    right).  With ``faces=all`` every person seen for at least ``min_subject_seconds``
    is a subject: subject k >= 1 is stored in ``subjects/<k>/face`` with the same
    datasets, and the stages that follow a face (pose, embed, evm) run for each
    subject into ``subjects/<k>/<group>``.  Because the face's rows are final only at
    the end, the stages that read them run in a second pass over the video.

    With ``smooth`` the stored landmarks and box pass through a one-euro filter
    (:mod:`.face_filter`; ``smooth_min_cutoff``, ``smooth_beta``), restarted whenever
    the face is lost.  The mesh is stored unfiltered.

``openface``
    Reads ``<import_dir>/<video-id>.csv`` written by OpenFace's ``FeatureExtraction``
    (see :mod:`.openface`).  ``score`` is OpenFace's ``confidence``.

``openpose``
    Reads ``face_keypoints_2d`` from ``<import_dir>/<video-id>/*_keypoints.json``
    (see :mod:`.openpose`).
    ``score`` is the mean confidence of the 70 points.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from vidaffect.io.store import Output, empty_rows
from vidaffect.io.video import VideoInfo
from vidaffect.stages.base import Batch, ModelInput, Stage, StageRun
from vidaffect.stages.boxes import points_box
from vidaffect.stages.face_filter import FaceSmoother
from vidaffect.stages.face_identities import Subject
from vidaffect.stages.face_table import FaceTable
from vidaffect.stages.face_tracker import FaceTracker, TrackerSettings
from vidaffect.stages.imports import IMPORT_MATCHES, check_import_params, import_files, open_import
from vidaffect.stages.layouts import FACE_POINTS, IBUG_POINTS, MESH_POINTS
from vidaffect.stages.openface import read_openface
from vidaffect.stages.openpose import read_openpose
from vidaffect.stages.params import param

FACES = ("primary", "all")
TABLE_SUFFIX = ".faces.tmp"  # the temporary table next to the store: .<store name>.faces.tmp


@dataclass(frozen=True)
class FaceParams(TrackerSettings):
    """The face stage's parameters: the backend, the import settings, and (for the
    mediapipe backend) the tracker's :class:`.face_tracker.TrackerSettings`, the
    people stored and the optional smoothing."""

    backend: str = param("mediapipe", "mediapipe, or import the output of openface (CSV) or openpose (JSON)",
                         choices=("mediapipe", "openface", "openpose"))
    import_dir: str = param("", "folder of OpenFace CSVs / OpenPose JSON folders (import backends)")
    import_match: str = param("auto", "imported rows to frames: auto, index or timestamp", choices=IMPORT_MATCHES)
    faces: str = param("primary", "primary: the person with the most screen time; all: every person, one group each "
                       "(subjects/<k>/...; mediapipe backend)", choices=FACES)  # fmt: skip
    min_subject_seconds: float = param(1.0, "s; with faces=all, people seen for less are not subjects", low=0)
    smooth: bool = param(False, "one-euro filter on the stored landmarks and box (mediapipe backend)")
    smooth_min_cutoff: float = param(1.0, "Hz; the filter's cut-off for a still face", above=0)
    smooth_beta: float = param(3.0, "Hz per (outer-eye distance per second): how fast the cut-off rises with speed", low=0)

    def check(self) -> None:
        check_import_params(self)
        if self.faces == "all" and self.backend != "mediapipe":
            self.fail("faces", f"all needs the mediapipe backend (imports give one face per frame); got backend {self.backend}")


def face_outputs() -> dict[str, Output]:
    return {
        "landmarks": Output((FACE_POINTS, 2), "f4"),
        "bbox": Output((4,), "f4"),
        "score": Output((), "f4"),
        "count": Output((), "i4", 0),
        "identity": Output((), "i4", -1),
        "mesh": Output((MESH_POINTS, 3), "f2"),
        "valid": Output((), "bool", False),
    }


class FaceStage(Stage):
    """Faces: landmarks, mesh, box, score, identity and face count (see module docs)."""

    name = "face"
    group = "face"
    version = "2"
    Params = FaceParams
    model_inputs = {
        "landmarks": ModelInput("landmarks"),
        "mesh": ModelInput("mesh", relative_to="bbox"),
        "face_box": ModelInput("bbox", relative_to="frame"),
    }
    params: FaceParams

    def __init__(self, params: FaceParams | None = None, device: str = "cpu") -> None:
        super().__init__(params, device)
        self._tracker: FaceTracker | None = None

    def needs_images(self) -> bool:
        # Imports only need the frame count and timestamps, so decoding can skip pictures.
        return self.params.backend == "mediapipe"

    def whole_video(self) -> bool:
        return self.params.backend == "mediapipe"

    def outputs(self) -> dict[str, Output]:
        return face_outputs()

    def imported_files(self, info: VideoInfo) -> list[Path] | None:
        return import_files(self.params, info.video_id) if self.params.backend != "mediapipe" else None

    def open(self, info: VideoInfo, store_path: Path) -> StageRun:
        p = self.params
        if p.backend != "mediapipe":
            read = read_openface if p.backend == "openface" else functools.partial(read_openpose, part="face")
            return open_import(p, info, self.outputs(), read)
        if self._tracker is None:
            self._tracker = FaceTracker(p)
        self._tracker.reset()
        table = FaceTable(store_path.with_name("." + store_path.name + TABLE_SUFFIX), p.max_faces)
        return _FaceRun(self._tracker, table, p, info)

    def close(self) -> None:
        if self._tracker is not None:
            self._tracker.close()
            self._tracker = None


class _FaceRun(StageRun):
    """Follows every face, keeping them in the table; decides the people at the end."""

    def __init__(self, tracker: FaceTracker, table: FaceTable, params: FaceParams, info: VideoInfo) -> None:
        super().__init__()
        self.tracker = tracker
        self.table = table
        self.params = params
        self.info = info
        self.outputs = face_outputs()
        self._stored: list[Subject] = []

    def process(self, batch: Batch) -> dict[str, np.ndarray]:
        self.table.append(batch.timestamps, [self.tracker.step(image) for image in batch.images])
        return {}  # the rows come from finish(), once the people are known

    def finish(self) -> Iterator[dict[str, np.ndarray]]:
        self.tracker.finish()
        found = self.tracker.identities.subjects()
        if self.params.faces == "all":
            rate = self.info.fps if self.info.fps > 0 else 25.0
            kept = [s for s in found if s.subject == 0 or s.frames >= self.params.min_subject_seconds * rate]
            self._stored = [dataclasses.replace(s, subject=k) for k, s in enumerate(kept)]
        else:
            self._stored = found[:1]
        self.subjects = [s.subject for s in self._stored[1:]]
        self.attrs["subjects"] = subjects_attr(self._stored)
        self.attrs["people_seen"] = len(found)
        return self._rows(self._stored[0].identity if self._stored else -1)

    def subject_rows(self, subject: int) -> Iterator[dict[str, np.ndarray]]:
        return self._rows(next(s.identity for s in self._stored if s.subject == subject))

    def _rows(self, identity: int) -> Iterator[dict[str, np.ndarray]]:
        """The rows of the person ``identity`` (-1: nobody), in runs of frames."""
        p = self.params
        smoother = FaceSmoother(p.smooth_min_cutoff, p.smooth_beta) if p.smooth else None
        resolve = self.tracker.identities.resolve_many
        for start, part in self.table.chunks():
            n = len(part["track"])
            rows = empty_rows(self.outputs, n)
            tracks = part["track"]
            rows["count"][:] = (tracks >= 0).sum(axis=1)
            who = resolve(tracks, start + np.arange(n)) if identity >= 0 else np.full(tracks.shape, -1)
            frame, slot = np.nonzero((who == identity) & (who >= 0))
            frame, first = np.unique(frame, return_index=True)  # one face per person and frame
            slot = slot[first]
            landmarks = part["landmarks"][frame, slot]
            rows["landmarks"][frame] = landmarks
            rows["bbox"][frame] = points_box(landmarks[:, :IBUG_POINTS])
            rows["score"][frame] = part["score"][frame, slot]
            rows["mesh"][frame] = part["mesh"][frame, slot]
            rows["identity"][frame] = identity
            rows["valid"][frame] = True
            if smoother is not None:
                _smooth(smoother, rows, part["timestamp"])
            yield rows

    def close(self) -> None:
        self.table.discard()

    def abort(self) -> None:
        self.table.discard()


def _smooth(smoother: FaceSmoother, rows: dict[str, np.ndarray], timestamps: np.ndarray) -> None:
    """Smooth the landmarks and boxes of consecutive frames in place; the filter
    restarts after a frame without the face."""
    for i in range(len(timestamps)):
        if not rows["valid"][i]:
            smoother.reset()
            continue
        rows["landmarks"][i], rows["bbox"][i] = smoother(float(timestamps[i]), rows["landmarks"][i], rows["bbox"][i])


def subjects_attr(subjects: list[Subject]) -> str:
    """The ``subjects`` attribute of the face group: JSON, one object per subject."""
    return json.dumps([dataclasses.asdict(s) for s in subjects])


def read_subjects(attr: str | bytes | None) -> list[Subject]:
    """The subjects recorded in a store's face group (empty when none are)."""
    return [Subject(**s) for s in json.loads(attr)] if attr else []


def store_subjects(h5: h5py.File) -> list[Subject]:
    """The subjects an open store records (none for stores without a face group or
    made before subjects were recorded)."""
    group = FaceStage.group_name()
    return read_subjects(h5[group].attrs.get("subjects")) if group in h5 else []


def side_subjects(subjects: list[Subject]) -> dict[str, int]:
    """The subjects of a two-person video by side: ``{"left": k, "right": j}`` for the
    two subjects with the most screen time, by the mean horizontal position of their
    faces; {} when fewer than two subjects are stored."""
    if len(subjects) < 2:
        return {}
    a, b = sorted(subjects[:2], key=lambda s: s.centre_x)
    return {"left": a.subject, "right": b.subject}


def subject_names(subjects: list[Subject]) -> dict[int, str]:
    """What results call each stored subject: ``left`` and ``right`` when there are two
    (Aff-Wild2's ``<video-id>_left`` / ``_right``), else the subject's number; {} for
    one subject (results then name the video alone)."""
    if len(subjects) < 2:
        return {}
    if len(subjects) == 2:
        return {k: side for side, k in side_subjects(subjects).items()}
    return {s.subject: str(s.subject) for s in subjects}
