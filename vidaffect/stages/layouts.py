"""Landmark layouts: the one place that says which point is which.

vidaffect stores faces and bodies in the layouts OpenFace and OpenPose users know:

* **face, 70 points** (``face/landmarks``): the 68 iBUG-300W points in their standard
  order (0-16 jaw from the subject's right ear to their left ear, 17-21 right brow,
  22-26 left brow, 27-30 nose bridge, 31-35 nostrils, 36-41 right eye, 42-47 left eye,
  48-59 outer lips, 60-67 inner lips), then the pupils as in OpenPose's 70-point face
  model: 68 the subject's right pupil (on the image's left for a frontal face), 69 the
  left pupil.  "Right" and "left" are the subject's throughout.
* **body, COCO-18** (``pose/keypoints``): OpenPose's COCO order, :data:`COCO18_NAMES`.

MediaPipe's 478-point face mesh gives the 70 points in two ways.  The inner points
17-67 are fixed mesh vertices, :data:`MESH_TO_INNER`: for each iBUG point the mesh
vertex nearest to where a 68-point (iBUG-trained) detector puts that point on frontal
photographs, chosen in left/right mirror pairs so that the table is symmetric; the eye
corners and eyelid points are the anatomical corner vertices and the lid vertices at
one and two thirds of each lid.  The pupils are the iris centres of the mesh's refined
landmarks (468 and 473).  The jaw points 0-16 are not fixed vertices: a fixed vertex
stays on the skin, so on a turned head it slides onto the cheek, inside the outline
where annotators draw the jaw.  They follow the face outline frame by frame
(:mod:`.jaw`).

MediaPipe's 33 pose landmarks are mapped to COCO-18 by :data:`POSE33_TO_COCO18`; the
neck, which MediaPipe lacks, is the midpoint of the shoulders with the smaller of
their two confidences.  OpenPose's BODY_25 becomes COCO-18 by dropping the mid-hip
(8) and the six foot points (19-24): :data:`BODY25_TO_COCO18`.

"""

from __future__ import annotations

import numpy as np

FACE_POINTS = 70
IBUG_POINTS = 68  # the 68 iBUG points come first, then the two pupils
MESH_POINTS = 478  # face mesh with refined (iris) landmarks
MESH_SURFACE = 468  # mesh vertices before the iris points
BODY_POINTS = 18

# Regions of the 70-point face, by index range.
JAW = slice(0, 17)
BROWS = slice(17, 27)
NOSE = slice(27, 36)
RIGHT_EYE = slice(36, 42)  # the subject's right eye: on the image's left for a frontal face
LEFT_EYE = slice(42, 48)
MOUTH = slice(48, 68)
RIGHT_PUPIL, LEFT_PUPIL = 68, 69
RIGHT_EYE_OUTER, LEFT_EYE_OUTER = 36, 45  # the outer eye corners: their distance is the face's size
FACE_REGIONS = {"jaw": JAW, "brows": BROWS, "nose": NOSE, "eyes": slice(36, 48), "mouth": MOUTH}

INNER = slice(17, FACE_POINTS)  # the points given by fixed mesh vertices
# fmt: off
MESH_TO_INNER: tuple[int, ...] = (
    # brows 17-21 (right), 22-26 (left)
    156, 63, 105, 66, 107, 336, 296, 334, 293, 383,
    # nose bridge 27-30, nostrils 31-35
    168, 197, 5, 4, 75, 97, 2, 326, 305,
    # right eye 36-41, left eye 42-47
    33, 160, 158, 133, 153, 144, 362, 385, 387, 263, 373, 380,
    # outer lips 48-59, inner lips 60-67
    61, 39, 37, 0, 267, 269, 291, 321, 314, 17, 84, 91, 78, 82, 13, 312, 308, 317, 14, 87,
    # pupils 68 (right), 69 (left): iris centres
    468, 473,
)
# The mesh's face oval (the outline of its surface seen from the front) as a closed
# contour: MediaPipe's FACEMESH_FACE_OVAL edges in order.
MESH_FACE_OVAL: tuple[int, ...] = (
    10, 338, 297, 332, 284, 251, 389, 356, 454, 323, 361, 288, 397, 365, 379, 378, 400, 377, 152,
    148, 176, 149, 150, 136, 172, 58, 132, 93, 234, 127, 162, 21, 54, 103, 67, 109,
)
# fmt: on
RIGHT_EYE_OUTER_VERTEX = MESH_TO_INNER[RIGHT_EYE_OUTER - INNER.start]  # the subject's right outer eye corner
RIGHT_EYE_INNER_VERTEX = MESH_TO_INNER[39 - INNER.start]
LEFT_EYE_INNER_VERTEX = MESH_TO_INNER[42 - INNER.start]
LEFT_EYE_OUTER_VERTEX = MESH_TO_INNER[LEFT_EYE_OUTER - INNER.start]
MOUTH_CORNER_VERTICES = (MESH_TO_INNER[48 - INNER.start], MESH_TO_INNER[54 - INNER.start])
FOREHEAD_VERTEX, CHIN_VERTEX = 10, 152  # top and bottom of the face oval

COCO18_NAMES: tuple[str, ...] = (
    "nose", "neck", "right_shoulder", "right_elbow", "right_wrist", "left_shoulder", "left_elbow",
    "left_wrist", "right_hip", "right_knee", "right_ankle", "left_hip", "left_knee", "left_ankle",
    "right_eye", "left_eye", "right_ear", "left_ear",
)  # fmt: skip
NECK = 1

# MediaPipe pose landmark for each COCO-18 point (-1: the neck, made from the shoulders).
POSE33_TO_COCO18: tuple[int, ...] = (0, -1, 12, 14, 16, 11, 13, 15, 24, 26, 28, 23, 25, 27, 5, 2, 8, 7)
_MP_LEFT_SHOULDER, _MP_RIGHT_SHOULDER = 11, 12

BODY25_TO_COCO18: tuple[int, ...] = (0, 1, 2, 3, 4, 5, 6, 7, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18)


def pose33_to_coco18(landmarks: np.ndarray) -> np.ndarray:
    """COCO-18 keypoints from MediaPipe's 33 pose landmarks.

    Parameters
    ----------
    landmarks : np.ndarray, shape (33, 3)
        x, y (pixels) and visibility of each MediaPipe landmark.

    Returns
    -------
    np.ndarray, shape (18, 3), float32
        x, y and confidence in COCO-18 order; the neck is the shoulders' midpoint with
        the smaller of their visibilities.
    """
    lm = np.asarray(landmarks, dtype=np.float32)
    out = lm[list(POSE33_TO_COCO18)].copy()
    shoulders = lm[[_MP_LEFT_SHOULDER, _MP_RIGHT_SHOULDER]]
    out[NECK, :2] = shoulders[:, :2].mean(axis=0)
    out[NECK, 2] = shoulders[:, 2].min()
    return out


def body25_to_coco18(keypoints: np.ndarray) -> np.ndarray:
    """COCO-18 keypoints from OpenPose BODY_25 ones (mid-hip and feet dropped).

    Parameters
    ----------
    keypoints : np.ndarray, shape (25, 3)

    Returns
    -------
    np.ndarray, shape (18, 3)
    """
    return np.asarray(keypoints)[list(BODY25_TO_COCO18)]
