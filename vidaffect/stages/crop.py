"""Square face crops for the image encoder.

A crop is the face box of the face stage made square (its longer side), widened by a
margin on every side, optionally rotated so that the eye line is horizontal, and
resampled to ``size`` x ``size`` RGB.  Parts of the square outside the frame are black.
Crops stay uint8 here; the encoder applies the ImageNet normalisation
(:data:`IMAGENET_MEAN`, :data:`IMAGENET_STD`) on its device.

Coordinates are pixels with the origin at the top-left corner of the top-left pixel;
boxes are ``(x, y, w, h)`` as stored in ``face/bbox``.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from vidaffect.stages.layouts import LEFT_EYE, LEFT_PUPIL, RIGHT_EYE, RIGHT_PUPIL

CROP_SIZE = 224  # pixels; the input size of ImageNet-trained encoders
IMAGENET_MEAN = (0.485, 0.456, 0.406)  # RGB, on images scaled to [0, 1]
IMAGENET_STD = (0.229, 0.224, 0.225)


def eye_line_angle(landmarks: np.ndarray) -> float:
    """Angle of the line from the subject's right eye to their left eye.

    Parameters
    ----------
    landmarks : np.ndarray, shape (68 or 70, 2)
        Pixel coordinates in iBUG-68 order, optionally followed by the two pupils;
        NaN where unknown.

    Returns
    -------
    float
        Radians, measured in image coordinates (y down): 0 for an upright face,
        positive when the face is rolled clockwise on screen.  NaN when neither the
        pupils nor the eye contours are known.
    """
    pts = np.asarray(landmarks, dtype=np.float64)
    if len(pts) > LEFT_PUPIL and np.isfinite(pts[[RIGHT_PUPIL, LEFT_PUPIL]]).all():
        right, left = pts[RIGHT_PUPIL], pts[LEFT_PUPIL]
    elif len(pts) >= LEFT_EYE.stop and np.isfinite(pts[RIGHT_EYE.start : LEFT_EYE.stop]).all():
        right, left = pts[RIGHT_EYE].mean(axis=0), pts[LEFT_EYE].mean(axis=0)
    else:
        return math.nan
    dx, dy = left - right
    if dx == 0 and dy == 0:
        return math.nan
    return math.atan2(dy, dx)


def crop_matrix(bbox: np.ndarray, margin: float, size: int = CROP_SIZE, angle: float = 0.0) -> np.ndarray:
    """Affine map from frame pixels to crop pixels.

    Parameters
    ----------
    bbox : np.ndarray, shape (4,)
        Face box ``(x, y, w, h)`` in pixels.
    margin : float
        Extra width on each side, as a fraction of the box's longer side: the crop's
        side is ``max(w, h) * (1 + 2 * margin)``.
    size : int, default 224
        Side of the crop in pixels.
    angle : float, default 0
        Eye-line angle in radians (see :func:`eye_line_angle`); the crop is rotated
        by ``-angle`` about the box centre so that the eyes are level.

    Returns
    -------
    np.ndarray, shape (2, 3), float64
        ``M`` such that ``crop_xy = M @ (frame_x, frame_y, 1)`` with OpenCV's
        pixel-centre convention (the form ``cv2.warpAffine`` takes).
    """
    x, y, w, h = (float(v) for v in bbox)
    side = max(w, h) * (1.0 + 2.0 * margin)
    scale = size / side
    cos, sin = math.cos(angle) * scale, math.sin(angle) * scale
    # Rotation by -angle, scaled: [[cos, sin], [-sin, cos]].
    rot = np.array([[cos, sin], [-sin, cos]])
    centre = np.array([x + w / 2.0 - 0.5, y + h / 2.0 - 0.5])  # to pixel-centre coordinates
    offset = np.array([(size - 1) / 2.0, (size - 1) / 2.0]) - rot @ centre
    return np.hstack([rot, offset[:, None]])


def crop_face(
    image: np.ndarray,
    bbox: np.ndarray,
    margin: float,
    size: int = CROP_SIZE,
    landmarks: np.ndarray | None = None,
    align: bool = False,
) -> np.ndarray:
    """Cut one square face crop out of a frame.

    Parameters
    ----------
    image : np.ndarray, shape (H, W, 3), uint8
        The frame (RGB).
    bbox : np.ndarray, shape (4,)
        Face box ``(x, y, w, h)`` in pixels; must be finite with positive size.
    margin : float
        Extra width on each side as a fraction of the box's longer side.
    size : int, default 224
        Side of the crop in pixels.
    landmarks : np.ndarray or None, shape (68 or 70, 2), default None
        Face landmarks in pixels; needed for ``align``.
    align : bool, default False
        Rotate so that the eye line is horizontal (no rotation when the eyes are
        unknown).

    Returns
    -------
    np.ndarray, shape (size, size, 3), uint8
    """
    angle = 0.0
    if align and landmarks is not None:
        found = eye_line_angle(landmarks)
        angle = 0.0 if math.isnan(found) else found
    matrix = crop_matrix(bbox, margin, size, angle)
    scale = math.hypot(matrix[0, 0], matrix[0, 1])
    if scale < 0.5:
        # Shrinking a big face with bilinear sampling aliases; average it down to
        # about the crop's scale first, over the face's neighbourhood only.
        image, matrix = _area_downscale(image, matrix, size, scale)
    return cv2.warpAffine(
        image, matrix, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0)
    )


def _area_downscale(image: np.ndarray, matrix: np.ndarray, size: int, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """The region of ``image`` that the crop samples, resized with pixel-area
    averaging by ``scale``, and ``matrix`` rewritten for the smaller region."""
    inverse = cv2.invertAffineTransform(matrix)
    corners = np.array([[0, 0, 1], [size - 1, 0, 1], [0, size - 1, 1], [size - 1, size - 1, 1]], np.float64)
    frame_pts = corners @ inverse.T
    height, width = image.shape[:2]
    x0 = int(np.clip(np.floor(frame_pts[:, 0].min()) - 1, 0, width))
    x1 = int(np.clip(np.ceil(frame_pts[:, 0].max()) + 2, 0, width))
    y0 = int(np.clip(np.floor(frame_pts[:, 1].min()) - 1, 0, height))
    y1 = int(np.clip(np.ceil(frame_pts[:, 1].max()) + 2, 0, height))
    if x1 - x0 < 2 or y1 - y0 < 2:
        return image, matrix  # the crop lies (almost) outside the frame
    region = image[y0:y1, x0:x1]
    new_w, new_h = max(1, round((x1 - x0) * scale)), max(1, round((y1 - y0) * scale))
    small = cv2.resize(region, (new_w, new_h), interpolation=cv2.INTER_AREA)
    fx, fy = new_w / (x1 - x0), new_h / (y1 - y0)
    # small pixel centre q <-> frame pixel centre p: p = (q + 0.5) / f - 0.5 + origin
    to_frame = np.array([[1 / fx, 0, 0.5 / fx - 0.5 + x0], [0, 1 / fy, 0.5 / fy - 0.5 + y0], [0, 0, 1]])
    return small, matrix @ to_frame


def face_rows_valid(bboxes: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    """Which frames have a usable face box: finite, positive width and height, and
    marked valid by the face stage.

    Parameters
    ----------
    bboxes : np.ndarray, shape (n, 4)
        ``face/bbox`` rows.
    valid : np.ndarray or None, shape (n,), default None
        ``face/valid`` rows.

    Returns
    -------
    np.ndarray, shape (n,), bool
    """
    boxes = np.asarray(bboxes, dtype=np.float64)
    ok = np.isfinite(boxes).all(axis=1) & (boxes[:, 2] > 0) & (boxes[:, 3] > 0)
    if valid is not None:
        ok &= np.asarray(valid, dtype=bool)
    return ok


def crop_faces(
    images: np.ndarray,
    bboxes: np.ndarray,
    margin: float,
    size: int = CROP_SIZE,
    landmarks: np.ndarray | None = None,
    align: bool = False,
    valid: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Crops for a run of frames (see :func:`crop_face` for the parameters).

    Parameters
    ----------
    images : np.ndarray, shape (n, H, W, 3), uint8
    bboxes : np.ndarray, shape (n, 4)
    margin, size, align : as in :func:`crop_face`.
    landmarks : np.ndarray or None, shape (n, 70, 2), default None
    valid : np.ndarray or None, shape (n,), default None
        The face stage's ``valid`` flags.

    Returns
    -------
    crops : np.ndarray, shape (m, size, size, 3), uint8
        One crop per frame that has a face, in frame order.
    has_face : np.ndarray, shape (n,), bool
        Which frames those are.
    """
    has_face = face_rows_valid(bboxes, valid)
    crops = np.empty((int(has_face.sum()), size, size, 3), np.uint8)
    for k, i in enumerate(np.flatnonzero(has_face)):
        crops[k] = crop_face(images[i], bboxes[i], margin, size, None if landmarks is None else landmarks[i], align)
    return crops, has_face
