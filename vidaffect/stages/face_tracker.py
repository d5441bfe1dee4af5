"""Following the primary face through a video with MediaPipe: the full-range face
detector finds faces (in tiles for large frames), the face mesh with iris refinement
runs on an upscaled crop around the face and follows it from frame to frame (see
:mod:`.face` for the behaviour in detail)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vidaffect.stages.boxes import box_iou, overlap_of_smaller, points_box, rank_candidates
from vidaffect.stages.layouts import MESH_SURFACE, mesh_to_face70
from vidaffect.stages.mediapipe_solutions import mediapipe_solution, restart_quietly
from vidaffect.stages.params import StageParams, param

_SAME_FACE_IOU = 0.3  # boxes of one face in consecutive frames overlap far more than this
_DUPLICATE_OVERLAP = 0.5  # two detections covering this much of the smaller one are one face
_ACQUIRE_TRIES = 3  # detections the mesh is tried on when (re)acquiring a face


@dataclass(frozen=True)
class TrackerSettings(StageParams):
    """How the tracker finds and follows the face (the face stage's parameters for its
    mediapipe backend)."""

    stage = "face"

    min_detection_confidence: float = param(0.5, "face detector score a face needs, 0-1", low=0, high=1)
    min_tracking_confidence: float = param(0.5, "mesh face-presence score to keep tracking, 0-1", low=0, high=1)
    max_faces: int = param(10, "faces the detector reports per frame at most (count saturates)", low=1)
    detect_every: int = param(10, "frames between detector runs while a face is tracked", low=1)
    detect_tile: int = param(480, "px; larger frames are also searched in tiles of this size", low=128)
    crop_scale: float = param(2.0, "side of the mesh's crop over the face box's longer side (it must hold the whole face)", low=1.2)
    crop_size: int = param(256, "px; the crop is resampled to this square for the mesh", low=64)


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

    def __init__(self, params: TrackerSettings | None = None) -> None:
        self.p = params or TrackerSettings()
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
            if all(overlap_of_smaller(box, k) < _DUPLICATE_OVERLAP for k, _ in kept):
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
            # No detector run: the mesh kept tracking the previous frame's face.
            assert face is not None and previous is not None
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
        mesh_box = points_box(mesh[:MESH_SURFACE])
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
