"""The face stage: the primary face of every frame, with 70 landmarks and a dense mesh.

Datasets of the ``face`` group, one row per frame (pixel coordinates, origin at the
top-left corner of the frame):

==============  ===============  ======================================================
``landmarks``   (70, 2) float32  68 iBUG points + 2 pupils (:mod:`.layouts`)
``bbox``        (4,) float32     ``(x, y, w, h)``, the tight box around the 68 points
``score``       () float32       confidence of the face (see the backends below)
``count``       () int32         faces found in the frame, the primary one included
``identity``    () int32         the primary face's identity (mediapipe backend; -1
                                 where there is no face and for imported faces)
``mesh``        (478, 3) float16 MediaPipe's face mesh: x, y in pixels; z is relative
                                 depth in the same pixel scale (MediaPipe's normalised
                                 z times the frame's width), about 0 at the face's
                                 centre, negative towards the camera.  float16 keeps
                                 1 px steps up to 2048 px.
``valid``       () bool          the primary face is in this frame
==============  ===============  ======================================================

Frames without the primary face hold NaN (``valid`` False); a value is never carried
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
    points follow the face outline (:mod:`.jaw`).  A face is counted once the mesh confirms
    it (a detector's false positive, e.g. on lettering, is not a face); at most
    ``max_faces`` faces are followed and counted.

    The primary face is the person with the most screen time weighted by size so
    far: the sum, over the frames a person has been seen, of the face's height over
    the frame's height.  Once ahead, a person stays primary unless another overtakes
    that sum, which after the first seconds takes a long time.  ``score`` is the
    detector's score of the face at its latest detection.

    With ``smooth`` the stored landmarks and box pass through a one-euro filter
    (:mod:`.face_filter`; ``smooth_min_cutoff``, ``smooth_beta``), restarted whenever
    the primary face is lost or changes.  The mesh is stored unfiltered.

``openface``
    Reads ``<import_dir>/<video-id>.csv`` written by OpenFace's ``FeatureExtraction``
    (see :mod:`.openface`).  ``score`` is OpenFace's ``confidence``.

``openpose``
    Reads ``face_keypoints_2d`` from ``<import_dir>/<video-id>/*_keypoints.json``
    (see :mod:`.openpose`).
    ``score`` is the mean confidence of the 70 points.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vidaffect.io.store import Output, empty_rows
from vidaffect.io.video import VideoInfo
from vidaffect.stages.base import Batch, ModelInput, Stage, StageRun
from vidaffect.stages.face_filter import FaceSmoother
from vidaffect.stages.face_tracker import Face, FaceTracker, TrackerSettings
from vidaffect.stages.imports import IMPORT_MATCHES, check_import_params, import_files, open_import
from vidaffect.stages.layouts import FACE_POINTS, MESH_POINTS
from vidaffect.stages.openface import read_openface
from vidaffect.stages.openpose import read_openpose
from vidaffect.stages.params import param


@dataclass(frozen=True)
class FaceParams(TrackerSettings):
    """The face stage's parameters: the backend, the import settings, and (for the
    mediapipe backend) the tracker's :class:`.face_tracker.TrackerSettings` and the
    optional smoothing."""

    backend: str = param("mediapipe", "mediapipe, or import the output of openface (CSV) or openpose (JSON)",
                         choices=("mediapipe", "openface", "openpose"))
    import_dir: str = param("", "folder of OpenFace CSVs / OpenPose JSON folders (import backends)")
    import_match: str = param("auto", "imported rows to frames: auto, index or timestamp", choices=IMPORT_MATCHES)
    smooth: bool = param(False, "one-euro filter on the stored landmarks and box (mediapipe backend)")
    smooth_min_cutoff: float = param(1.0, "Hz; the filter's cut-off for a still face", above=0)
    smooth_beta: float = param(3.0, "Hz per (outer-eye distance per second): how fast the cut-off rises with speed", low=0)

    def check(self) -> None:
        check_import_params(self)


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
    """Primary face: landmarks, mesh, box, score, identity and face count (see module docs)."""

    name = "face"
    group = "face"
    version = "2"
    Params = FaceParams
    model_inputs = {"landmarks": ModelInput("landmarks")}
    params: FaceParams

    def __init__(self, params: FaceParams | None = None, device: str = "cpu") -> None:
        super().__init__(params, device)
        self._tracker: FaceTracker | None = None

    def needs_images(self) -> bool:
        # Imports only need the frame count and timestamps, so decoding can skip pictures.
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
        return _FaceRun(self._tracker, FaceSmoother(p.smooth_min_cutoff, p.smooth_beta) if p.smooth else None)

    def close(self) -> None:
        if self._tracker is not None:
            self._tracker.close()
            self._tracker = None


class _FaceRun(StageRun):
    def __init__(self, tracker: FaceTracker, smoother: FaceSmoother | None) -> None:
        super().__init__()
        self.tracker = tracker
        self.smoother = smoother
        self.outputs = face_outputs()
        self.followed = -1  # the track of the primary face in the previous frame

    def process(self, batch: Batch) -> dict[str, np.ndarray]:
        rows = empty_rows(self.outputs, len(batch))
        for i, (image, t) in enumerate(zip(batch.images, batch.timestamps, strict=True)):
            faces = self.tracker.step(image)
            rows["count"][i] = len(faces)
            face = self._primary(faces)
            if face is None:
                self.followed = -1
                continue
            landmarks, box = face.landmarks, face.box
            if self.smoother is not None:
                if face.track != self.followed:
                    self.smoother.reset()
                landmarks, box = self.smoother(float(t), landmarks, box)
            self.followed = face.track
            rows["landmarks"][i] = landmarks
            rows["bbox"][i] = box
            rows["score"][i] = face.score
            rows["identity"][i] = face.identity
            rows["mesh"][i] = face.mesh
            rows["valid"][i] = True
        return rows

    def _primary(self, faces: list[Face]) -> Face | None:
        leader = self.tracker.identities.leader()
        return next((f for f in faces if self.tracker.identities.key(f.track) == leader), None)

    def finish(self) -> dict[str, np.ndarray]:
        self.tracker.finish()
        return empty_rows(self.outputs, 0)  # every row was returned by process()
