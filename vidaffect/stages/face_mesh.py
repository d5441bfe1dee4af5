"""MediaPipe's full-range face detector over a whole frame, and its face mesh run on a
region of the frame that the caller chooses.

Coordinates are frame pixels with the origin at the top-left corner of the top-left
pixel (so a pixel's centre is at ``i + 0.5``); boxes are ``(x, y, w, h)``.

Why the mesh runs on a given region: MediaPipe's ``FaceMesh`` solution chooses the
region it looks at by itself.  In tracking mode (``static_image_mode=False``) it takes
the region of the next call from the landmarks of the last call, a loop that never
settles: on a still image fed again and again the points wander by 0.5-2 % of the eye
distance per call and can drift to another solution (up to 27 % on a small, rolled
face).  In static-image mode it runs its short-range detector on every call, which
costs about as much again as the mesh.  Here the mesh that follows a face is
MediaPipe's own landmark subgraph (``FaceLandmarkCpu``, with iris refinement) fed with
the region directly: its output is a function of the frame and the region alone, so
identical frames and regions give bit-identical meshes, and choosing and keeping the
region steady is the tracker's job (:mod:`.face_tracker`).

Finding a face the full-range detector reported (:meth:`FaceMesher.find`) uses the
static-image mode once, on an upscaled crop around the detection: its short-range
detector rejects the full-range detector's false positives (lettering, patterns) and
gives the face's roll where the full-range detector's eye keypoints are too coarse
(small faces).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from vidaffect.stages.boxes import box_iou, overlap_of_smaller, points_box
from vidaffect.stages.layouts import LEFT_EYE_OUTER_VERTEX, MESH_SURFACE, RIGHT_EYE_OUTER_VERTEX
from vidaffect.stages.mediapipe_solutions import mediapipe_graph, mediapipe_solution

_DUPLICATE_OVERLAP = 0.5  # two detections covering this much of the smaller one are one face
FIND_SCALE = 2.0  # the crop a detected face is looked for in: this times the detection's box
FIND_SIZE = 256  # px; that crop is resampled to this square (small faces get enough pixels)
MESHES_PER_CROP = 2  # so that a second face in that crop cannot be taken for the detected one

# MediaPipe's face landmark subgraph on the region given with each frame.
_MESH_GRAPH = """
input_stream: "image"
input_stream: "region"
input_side_packet: "with_attention"
output_stream: "landmarks"
node {
  calculator: "FaceLandmarkCpu"
  input_stream: "IMAGE:image"
  input_stream: "ROI:region"
  input_side_packet: "WITH_ATTENTION:with_attention"
  output_stream: "LANDMARKS:landmarks"
}
"""


@dataclass(frozen=True)
class Crop:
    """The square region of a frame the mesh looks at: centre ``(cx, cy)`` and
    ``side`` in pixels, turned by ``angle`` (radians, the face's roll, see
    :func:`face_roll`) so that the face is upright in it."""

    cx: float
    cy: float
    side: float
    angle: float = 0.0

    def _rotation(self) -> np.ndarray:
        c, s = math.cos(self.angle), math.sin(self.angle)
        return np.array([[c, -s], [s, c]])

    def matrix(self, size: int) -> np.ndarray:
        """The 2x3 affine map from frame pixels to the pixels of a ``size``-pixel
        image of the region, in OpenCV's pixel-centre convention (what
        ``cv2.warpAffine`` takes)."""
        scale = size / self.side
        linear = scale * self._rotation().T  # rotate by -angle, then scale
        # region_centre_px = linear @ (frame_centre_px + 0.5 - c) + size / 2 - 0.5
        shift = linear @ (0.5 - np.array([self.cx, self.cy])) + size / 2 - 0.5
        return np.concatenate([linear, shift[:, None]], axis=1)

    def to_frame(self, normalised: np.ndarray) -> np.ndarray:
        """MediaPipe's coordinates normalised to an image of the region (n, 3) -> frame
        pixels x, y and a depth z in the same pixel scale."""
        out = np.empty(normalised.shape, np.float32)
        xy = (normalised[:, :2].astype(np.float64) - 0.5) * self.side
        out[:, :2] = xy @ self._rotation().T + (self.cx, self.cy)
        out[:, 2] = normalised[:, 2] * self.side
        return out


def face_roll(mesh: np.ndarray) -> float:
    """A face's roll in radians: the direction, in the frame, of the line from the
    subject's right outer eye corner to their left one (0 for an upright face,
    positive when it is turned clockwise on screen)."""
    dx, dy = mesh[LEFT_EYE_OUTER_VERTEX, :2] - mesh[RIGHT_EYE_OUTER_VERTEX, :2]
    return math.atan2(float(dy), float(dx))




@dataclass
class MeshResult:
    """One face mesh in frame coordinates."""

    mesh: np.ndarray  # (478, 3) float32: x, y px; z relative depth in the same px scale
    box: np.ndarray  # (4,) float32 tight box of the 468 surface vertices


class FaceDetector:
    """MediaPipe's full-range face detector over a whole frame, and for frames larger
    than ``tile`` pixels also over overlapping tiles of that size (the detector sees
    its input at 192x192, so small faces in large frames need the tiles).

    Parameters
    ----------
    min_score : float
        Detector score a face needs, 0-1.
    tile : int
        Pixels; the side of the tiles.
    """

    def __init__(self, min_score: float, tile: int) -> None:
        self.tile = tile
        self._detector = mediapipe_solution(
            "face_detection.FaceDetection", model_selection=1, min_detection_confidence=min_score
        )

    def close(self) -> None:
        self._detector.close()

    def __call__(self, image: np.ndarray) -> list[tuple[np.ndarray, float]]:
        """Faces in an RGB frame as ``(box, score)``, most confident first; a face found
        in several regions is reported once."""
        h, w = image.shape[:2]
        found: list[tuple[np.ndarray, float]] = []
        for x0, y0, x1, y1 in _regions(w, h, self.tile):
            result = self._detector.process(np.ascontiguousarray(image[y0:y1, x0:x1]))
            rw, rh = x1 - x0, y1 - y0
            for det in result.detections or []:
                rb = det.location_data.relative_bounding_box
                box = np.array([x0 + rb.xmin * rw, y0 + rb.ymin * rh, rb.width * rw, rb.height * rh], np.float32)
                found.append((box, float(det.score[0])))
        found.sort(key=lambda d: -d[1])
        kept: list[tuple[np.ndarray, float]] = []
        for box, score in found:
            if all(overlap_of_smaller(box, k) < _DUPLICATE_OVERLAP for k, _ in kept):
                kept.append((box, score))
        return kept


class FaceMesher:
    """MediaPipe's face mesh with iris refinement on a region of the frame.

    Parameters
    ----------
    min_score : float
        The score the static mode's short-range detector needs to find a face, 0-1.
    min_presence : float
        The face-presence score the mesh needs, 0-1: below it the region holds no face.
    """

    def __init__(self, min_score: float, min_presence: float) -> None:
        from mediapipe.framework.formats.rect_pb2 import NormalizedRect

        self._rect = NormalizedRect
        self._static = mediapipe_solution(
            "face_mesh.FaceMesh",
            static_image_mode=True,
            max_num_faces=MESHES_PER_CROP,
            refine_landmarks=True,
            min_detection_confidence=min_score,
        )
        self._graph = mediapipe_graph(
            _MESH_GRAPH,
            {"image": np.zeros((64, 64, 3), np.uint8), "region": NormalizedRect(x_center=0.5, y_center=0.5, width=1, height=1)},
            side_inputs={"with_attention": True},
            calculator_params={"facelandmarkcpu__ThresholdingCalculator.threshold": min_presence},
            outputs=["landmarks"],
        )

    def close(self) -> None:
        self._graph.close()
        self._static.close()

    def find(self, image: np.ndarray, box: np.ndarray, min_iou: float) -> MeshResult | None:
        """The mesh of the face a detector found at ``box`` (static-image mode on a
        crop around it); None when there is no face there."""
        x, y, w, h = (float(v) for v in box)
        crop = Crop(x + w / 2, y + h / 2, FIND_SCALE * max(w, h))
        patch = cv2.warpAffine(image, crop.matrix(FIND_SIZE), (FIND_SIZE, FIND_SIZE), flags=cv2.INTER_LINEAR)
        best, best_iou = None, min_iou
        for face in self._static.process(patch).multi_face_landmarks or []:
            mesh = crop.to_frame(np.array([(p.x, p.y, p.z) for p in face.landmark], np.float32))
            found = points_box(mesh[:MESH_SURFACE])
            iou = box_iou(found, box)
            if iou >= best_iou:
                best, best_iou = MeshResult(mesh, found), iou
        return best

    def __call__(self, image: np.ndarray, crop: Crop, expect: np.ndarray, min_iou: float) -> MeshResult | None:
        """The mesh of the face in ``crop``; None when there is no face there, or when
        the mesh's box does not overlap ``expect`` (the box where the face should be)
        by ``min_iou`` (the mesh found another face)."""
        h, w = image.shape[:2]
        region = self._rect(
            x_center=crop.cx / w, y_center=crop.cy / h, width=crop.side / w, height=crop.side / h, rotation=crop.angle
        )
        landmarks = self._graph.process({"image": image, "region": region}).landmarks
        if landmarks is None:
            return None
        # Normalised to the frame; z is in the scale of x (the frame's width).
        mesh = np.array([(p.x, p.y, p.z) for p in landmarks.landmark], np.float32) * np.array([w, h, w], np.float32)
        box = points_box(mesh[:MESH_SURFACE])
        return MeshResult(mesh, box) if box_iou(box, expect) >= min_iou else None


def _regions(width: int, height: int, tile: int) -> list[tuple[int, int, int, int]]:
    """The whole frame, plus overlapping ``tile``-sized squares when the frame is
    larger than a tile (neighbours overlap by a quarter tile, so a face up to that size
    lies whole in one of them; larger faces are found in the whole frame)."""
    regions = [(0, 0, width, height)]
    if max(width, height) <= tile:
        return regions
    step = tile - tile // 4
    xs, ys = _starts(width, tile, step), _starts(height, tile, step)
    return regions + [(x, y, min(x + tile, width), min(y + tile, height)) for y in ys for x in xs]


def _starts(length: int, tile: int, step: int) -> list[int]:
    if length <= tile:
        return [0]
    return list(range(0, length - tile, step)) + [length - tile]
