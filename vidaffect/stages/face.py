"""The face stage: the primary face of every frame, with 70 landmarks and a dense mesh.

Datasets of the ``face`` group, one row per frame (pixel coordinates, origin at the
top-left corner of the frame):

==============  ===============  ======================================================
``landmarks``   (70, 2) float32  68 iBUG points + 2 pupils (:mod:`.layouts`)
``bbox``        (4,) float32     ``(x, y, w, h)``, the tight box around the 68 points
``score``       () float32       confidence of the face (see the backends below)
``count``       () int32         faces seen in the frame, 0 when none
``mesh``        (478, 3) float16 MediaPipe's face mesh: x, y in pixels; z is relative
                                 depth in the same pixel scale (MediaPipe's normalised
                                 z times the width of the region the mesh ran on),
                                 about 0 at the face's centre, negative towards the
                                 camera.  float16 keeps 1 px steps up to 2048 px.
``valid``       () bool          a face was found in this frame
==============  ===============  ======================================================

Frames without a face hold NaN (``count`` 0, ``valid`` False); a value is never
carried over from an earlier frame except ``score`` and ``count`` of a tracked face
between detector runs, as described next.

Backends (parameter ``backend``):

``mediapipe`` (default)
    MediaPipe's *full-range* face detector finds faces; its *face mesh* (with iris
    refinement, for the pupils) then runs on a square crop around the face, resized
    to ``crop_size`` pixels, so small faces in wide shots get enough pixels and the
    mesh's own close-up detector sees the face large.  The mesh follows the face from
    frame to frame (the crop is re-centred on the previous frame's mesh).  The
    detector runs again every ``detect_every`` frames and whenever the mesh loses the
    face (so on every frame while no face is found).  The detector sees its input at
    192x192 pixels, so frames larger than ``detect_tile`` pixels are searched in
    overlapping tiles of that size as well as whole: with the default 480 px tiles,
    faces from about 50 px high are found (45 px most of the time), in 640x360 and
    1920x1080 frames alike.

    When several faces are visible the stage keeps following the face it tracks;
    when that face is lost it continues with the detection that overlaps the lost
    box, or else the most prominent face (area times detector score).
    ``score`` is the detector's score of the tracked face at its latest detection;
    ``count`` is the number of faces the detector saw at its latest run, counting
    the tracked face when the detector missed it; both are carried between detector
    runs only while the mesh keeps tracking.

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
from vidaffect.stages.boxes import points_box
from vidaffect.stages.face_tracker import FaceTracker, TrackerSettings
from vidaffect.stages.imports import IMPORT_MATCHES, check_import_params, import_files, open_import
from vidaffect.stages.layouts import FACE_POINTS, IBUG_POINTS, MESH_POINTS
from vidaffect.stages.openface import read_openface
from vidaffect.stages.openpose import read_openpose
from vidaffect.stages.params import param


@dataclass(frozen=True)
class FaceParams(TrackerSettings):
    """The face stage's parameters: the backend, the import settings, and (for the
    mediapipe backend) the tracker's :class:`.face_tracker.TrackerSettings`."""

    backend: str = param("mediapipe", "mediapipe, or import the output of openface (CSV) or openpose (JSON)",
                         choices=("mediapipe", "openface", "openpose"))
    import_dir: str = param("", "folder of OpenFace CSVs / OpenPose JSON folders (import backends)")
    import_match: str = param("auto", "imported rows to frames: auto, index or timestamp", choices=IMPORT_MATCHES)

    def check(self) -> None:
        check_import_params(self)


def face_outputs() -> dict[str, Output]:
    return {
        "landmarks": Output((FACE_POINTS, 2), "f4"),
        "bbox": Output((4,), "f4"),
        "score": Output((), "f4"),
        "count": Output((), "i4", 0),
        "mesh": Output((MESH_POINTS, 3), "f2"),
        "valid": Output((), "bool", False),
    }


class FaceStage(Stage):
    """Primary face: landmarks, mesh, box, score and face count (see module docs)."""

    name = "face"
    group = "face"
    version = "1"
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
        return _FaceRun(self._tracker)

    def close(self) -> None:
        if self._tracker is not None:
            self._tracker.close()
            self._tracker = None


class _FaceRun(StageRun):
    def __init__(self, tracker: FaceTracker) -> None:
        super().__init__()
        self.tracker = tracker
        self.outputs = face_outputs()

    def process(self, batch: Batch) -> dict[str, np.ndarray]:
        rows = empty_rows(self.outputs, len(batch))
        for i, image in enumerate(batch.images):
            count, face = self.tracker.step(image)
            rows["count"][i] = count
            if face is None:
                continue
            landmarks = face.landmarks
            rows["landmarks"][i] = landmarks
            rows["bbox"][i] = points_box(landmarks[:IBUG_POINTS])
            rows["score"][i] = face.score
            rows["mesh"][i] = face.mesh
            rows["valid"][i] = True
        return rows

    def finish(self) -> dict[str, np.ndarray]:
        return empty_rows(self.outputs, 0)  # every row was returned by process()
