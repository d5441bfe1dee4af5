"""The face stage: the primary face of every frame, with 70 landmarks and a dense mesh.

Datasets of the ``face`` group, one row per frame (pixel coordinates, origin at the
top-left corner of the frame):

==============  ===============  ======================================================
``landmarks``   (70, 2) float32  68 iBUG points + 2 pupils (:mod:`vidaffect.landmarks`)
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
    (see :mod:`vidaffect.importers`).  ``score`` is OpenFace's ``confidence``.

``openpose``
    Reads ``face_keypoints_2d`` from ``<import_dir>/<video-id>/*_keypoints.json``.
    ``score`` is the mean confidence of the 70 points.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vidaffect.importers import check_import_params, empty_rows, open_import
from vidaffect.landmarks import (
    FACE_POINTS,
    MESH_POINTS,
    box_iou,
    mediapipe_solution,
    mesh_to_face70,
    points_box,
    rank_candidates,
    restart_quietly,
)
from vidaffect.stages import Batch, Output, Stage, StageRun
from vidaffect.video import VideoInfo

log = logging.getLogger(__name__)

FACE_BACKENDS = ("mediapipe", "openface", "openpose")
_SAME_FACE_IOU = 0.3  # boxes of one face in consecutive frames overlap far more than this
_DUPLICATE_OVERLAP = 0.5  # two detections covering this much of the smaller one are one face
_MESH_SURFACE = 468  # mesh vertices before the iris points
_ACQUIRE_TRIES = 3  # detections the mesh is tried on when (re)acquiring a face


@dataclass(frozen=True)
class FaceParams:
    backend: str = "mediapipe"  # "mediapipe", or import: "openface" (CSV), "openpose" (JSON)
    min_detection_confidence: float = 0.5  # face detector score a face needs, 0-1
    min_tracking_confidence: float = 0.5  # mesh face-presence score to keep tracking, 0-1
    max_faces: int = 10  # faces the detector reports per frame at most (count saturates)
    detect_every: int = 10  # frames between detector runs while a face is tracked
    detect_tile: int = 480  # px; larger frames are also searched in tiles of this size
    crop_scale: float = 2.0  # side of the mesh's crop over the face box's longer side
    crop_size: int = 256  # px; the crop is resampled to this square for the mesh
    import_dir: str = ""  # folder of OpenFace CSVs / OpenPose JSON folders (import backends)
    import_match: str = "auto"  # imported rows to frames: "auto", "index" or "timestamp"


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

    def __init__(self, params: FaceParams | None = None, device: str = "cpu") -> None:
        super().__init__(params, device)
        p = self.params
        if p.backend not in FACE_BACKENDS:
            raise ValueError(f"face.backend must be one of {', '.join(FACE_BACKENDS)}; got {p.backend!r}")
        check_import_params("face", p.backend, p.import_dir, p.import_match)
        for field, value, low in (("detect_every", p.detect_every, 1), ("max_faces", p.max_faces, 1),
                                  ("crop_size", p.crop_size, 64), ("detect_tile", p.detect_tile, 128)):  # fmt: skip
            if value < low:
                raise ValueError(f"face.{field} must be at least {low}; got {value}")
        if p.crop_scale < 1.2:
            raise ValueError(f"face.crop_scale must be at least 1.2 (the crop must hold the whole face); got {p.crop_scale}")
        for field in ("min_detection_confidence", "min_tracking_confidence"):
            if not 0.0 <= getattr(p, field) <= 1.0:
                raise ValueError(f"face.{field} must be within [0, 1]; got {getattr(p, field)}")
        # Imports only need the frame count and timestamps, so decoding can skip pictures.
        self.uses_images = p.backend == "mediapipe"
        self._tracker: FaceTracker | None = None

    def outputs(self) -> dict[str, Output]:
        return face_outputs()

    def open(self, info: VideoInfo, store_path: Path) -> StageRun:
        p = self.params
        if p.backend != "mediapipe":
            return open_import("face", p.backend, p.import_dir, p.import_match, info, self.outputs())
        if self._tracker is None:
            self._tracker = FaceTracker(p)
        self._tracker.reset()
        return _FaceRun(self._tracker)

    def close(self) -> None:
        if self._tracker is not None:
            self._tracker.close()
            self._tracker = None


@dataclass
class TrackedFace:
    """The primary face of one frame."""

    mesh: np.ndarray  # (478, 3) float32 pixels
    box: np.ndarray  # (4,) float32 tight box of the mesh surface, used to place the next crop
    score: float
    count: int

    @property
    def landmarks(self) -> np.ndarray:
        return mesh_to_face70(self.mesh)


class FaceTracker:
    """MediaPipe detection + mesh tracking of the primary face, one frame at a time.

    Usable on its own (``tracker.step(rgb_image)``) as well as through the stage.
    Call :meth:`reset` before each new video.
    """

    def __init__(self, params: FaceParams | None = None) -> None:
        self.p = params or FaceParams()
        self._detector = mediapipe_solution(
            "face_detection.FaceDetection", model_selection=1, min_detection_confidence=self.p.min_detection_confidence
        )
        self._mesh = mediapipe_solution(
            "face_mesh.FaceMesh",
            static_image_mode=False,
            max_num_faces=1,
            refine_landmarks=True,
            min_detection_confidence=self.p.min_detection_confidence,
            min_tracking_confidence=self.p.min_tracking_confidence,
        )
        self._face: TrackedFace | None = None
        self._since_detect = 0
        self._mesh_holds = False  # the mesh's own tracker has a face from its last call

    def reset(self) -> None:
        restart_quietly(self._mesh)
        self._face = None
        self._since_detect = 0
        self._mesh_holds = False

    def close(self) -> None:
        self._detector.close()
        self._mesh.close()

    def detect(self, image: np.ndarray) -> list[tuple[np.ndarray, float]]:
        """Faces in a frame as ``(box, score)``, most confident first, at most
        ``max_faces``.  Large frames are searched whole and in overlapping tiles."""
        h, w = image.shape[:2]
        found: list[tuple[np.ndarray, float]] = []
        for x0, y0, x1, y1 in _regions(w, h, self.p.detect_tile):
            region = np.ascontiguousarray(image[y0:y1, x0:x1])
            result = self._detector.process(region)
            for det in result.detections or []:
                rb = det.location_data.relative_bounding_box
                rw, rh = x1 - x0, y1 - y0
                box = np.array([x0 + rb.xmin * rw, y0 + rb.ymin * rh, rb.width * rw, rb.height * rh], np.float32)
                found.append((box, float(det.score[0])))
        found.sort(key=lambda d: -d[1])
        kept: list[tuple[np.ndarray, float]] = []
        for box, score in found:
            if all(_overlap_of_smaller(box, k) < _DUPLICATE_OVERLAP for k, _ in kept):
                kept.append((box, score))
        return kept[: self.p.max_faces]

    def step(self, image: np.ndarray) -> tuple[int, TrackedFace | None]:
        """Process the next frame of the video.

        Returns
        -------
        count : int
            Faces seen in the frame.
        face : TrackedFace or None
            The primary face, None when no face was found.
        """
        previous = self._face
        detections = None
        if previous is None or self._since_detect >= self.p.detect_every:
            detections = self.detect(image)
        face = self._run_mesh(image, previous.box, acquire=False) if previous is not None else None
        if face is None and detections is None:
            detections = self.detect(image)  # lost between detector runs: look now
        matched = None
        if face is None and detections:
            # The preferred face first, then the others by prominence, until the mesh
            # confirms one (a detector's false positive has no mesh).
            boxes = [b for b, _ in detections]
            order = rank_candidates(boxes, [s for _, s in detections], previous.box if previous is not None else None)
            for candidate in order[:_ACQUIRE_TRIES]:
                face = self._run_mesh(image, boxes[candidate], acquire=True)
                if face is not None:
                    matched = candidate
                    break
        elif face is not None and detections:
            overlaps = [box_iou(face.box, b) for b, _ in detections]
            best = int(np.argmax(overlaps))
            matched = best if overlaps[best] >= _SAME_FACE_IOU else None

        if detections is not None:
            self._since_detect = 1
            count = len(detections)
            if face is not None:
                if matched is not None:
                    face.score = detections[matched][1]
                else:
                    # The mesh still tracks a face the detector missed (a turned head):
                    # it is seen, so it counts; its score stays that of its last detection.
                    count += 1
                    face.score = previous.score if previous is not None else float("nan")
        else:
            self._since_detect += 1
            count = previous.count
            face.score = previous.score
        if face is not None:
            face.count = count
        self._face = face
        return count, face

    def _run_mesh(self, image: np.ndarray, box: np.ndarray, acquire: bool) -> TrackedFace | None:
        """The mesh in a crop around ``box``; None when there is no face there, or the
        mesh found a different face (its box does not overlap ``box``)."""
        import cv2

        if acquire and self._mesh_holds:
            # The mesh would keep following its old face inside the new crop; make it
            # look afresh.
            restart_quietly(self._mesh)
        x, y, w, h = (float(v) for v in box)
        side = self.p.crop_scale * max(w, h)
        x0, y0 = x + w / 2 - side / 2, y + h / 2 - side / 2
        s = self.p.crop_size / side
        # Crop pixel u (pixel-centre coordinates) samples frame pixel (u + 0.5) / s + x0 - 0.5.
        matrix = np.array([[s, 0.0, s * (0.5 - x0) - 0.5], [0.0, s, s * (0.5 - y0) - 0.5]])
        crop = cv2.warpAffine(image, matrix, (self.p.crop_size, self.p.crop_size), flags=cv2.INTER_LINEAR)
        result = self._mesh.process(crop)
        self._mesh_holds = bool(result.multi_face_landmarks)
        if not self._mesh_holds:
            return None
        points = result.multi_face_landmarks[0].landmark
        mesh = np.array([(p.x, p.y, p.z) for p in points], np.float32) * np.float32(side)
        mesh[:, 0] += x0
        mesh[:, 1] += y0
        mesh_box = points_box(mesh[:_MESH_SURFACE])
        if box_iou(mesh_box, box) < _SAME_FACE_IOU:
            return None
        return TrackedFace(mesh, mesh_box, float("nan"), 0)


def _regions(width: int, height: int, tile: int) -> list[tuple[int, int, int, int]]:
    """The whole frame, plus overlapping ``tile``-sized squares when the frame is
    larger than a tile (neighbours overlap by a quarter tile, so a face up to that size
    lies whole in one of them; larger faces are found in the whole frame)."""
    regions = [(0, 0, width, height)]
    if max(width, height) <= tile:
        return regions
    step = tile - tile // 4
    xs = _starts(width, tile, step)
    ys = _starts(height, tile, step)
    regions += [(x, y, min(x + tile, width), min(y + tile, height)) for y in ys for x in xs]
    return regions


def _starts(length: int, tile: int, step: int) -> list[int]:
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile, step))
    return starts + [length - tile]


def _overlap_of_smaller(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over the smaller box's area: a face cut by a tile border gives a
    partial box inside the whole one."""
    iw = min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0])
    ih = min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    return float(iw * ih / max(min(a[2] * a[3], b[2] * b[3]), 1e-6))


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
            rows["bbox"][i] = points_box(landmarks[:68])
            rows["score"][i] = face.score
            rows["mesh"][i] = face.mesh
            rows["valid"][i] = True
        return rows

    def finish(self) -> dict[str, np.ndarray]:
        return empty_rows(self.outputs, 0)  # every row was returned by process()
