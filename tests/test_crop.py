import math

import cv2
import numpy as np
import pytest

from vidaffect.stages.crop import crop_face, crop_faces, crop_matrix, eye_line_angle, face_rows_valid


def coordinate_image(h: int = 240, w: int = 320) -> np.ndarray:
    """R = x / 2, G = y / 2 (smooth, so bilinear sampling is exact up to rounding)."""
    ys, xs = np.mgrid[0:h, 0:w]
    return np.stack([xs / 2, ys / 2, np.full_like(xs, 7)], axis=-1).round().astype(np.uint8)


def expected_coordinate(u: float, box_origin: float, side: float, size: int) -> float:
    """Frame coordinate (pixel centre) sampled by crop pixel u."""
    return box_origin + (u + 0.5) * side / size - 0.5


def test_crop_samples_the_square_box_without_margin():
    img = coordinate_image()
    crop = crop_face(img, np.array([100, 50, 80, 80]), margin=0.0, size=224)
    assert crop.shape == (224, 224, 3) and crop.dtype == np.uint8
    for u in (0, 111, 223):
        assert abs(int(crop[5, u, 0]) - expected_coordinate(u, 100, 80, 224) / 2) <= 1
        assert abs(int(crop[u, 5, 1]) - expected_coordinate(u, 50, 80, 224) / 2) <= 1


def test_margin_widens_a_non_square_box_around_its_centre_and_pads_black():
    img = coordinate_image()
    # 40 x 80 box centred at (60, 80): square side 80 * 1.5 = 120 -> x from 0 to 120,
    # y from 20 to 140.
    crop = crop_face(img, np.array([40, 40, 40, 80]), margin=0.25, size=120)
    assert abs(int(crop[60, 60, 0]) - 60 / 2) <= 1 and abs(int(crop[60, 60, 1]) - 80 / 2) <= 1
    assert abs(int(crop[0, 119, 0]) - expected_coordinate(119, 0, 120, 120) / 2) <= 1
    assert abs(int(crop[0, 0, 1]) - expected_coordinate(0, 20, 120, 120) / 2) <= 1
    # A box at the frame's corner: the part of the square outside the frame is black.
    corner = crop_face(img, np.array([0, 0, 40, 40]), margin=0.5, size=80)
    assert (corner[:15, :15] == 0).all() and (corner[60:, 60:] != 0).any()


def test_shrinking_a_large_face_keeps_the_geometry():
    img = cv2.resize(coordinate_image(), (1280, 960), interpolation=cv2.INTER_LINEAR)  # R ~ x/8
    bbox = np.array([200, 100, 800, 800])
    crop = crop_face(img, bbox, margin=0.0, size=224)
    for u in (10, 112, 213):
        assert abs(int(crop[112, u, 0]) - expected_coordinate(u, 200, 800, 224) / 8) <= 1.5


def eye_landmarks(angle_deg: float, centre=(160.0, 120.0), distance=60.0, pupils: bool = True) -> np.ndarray:
    pts = np.full((70, 2), np.nan)
    a = math.radians(angle_deg)
    half = np.array([math.cos(a), math.sin(a)]) * distance / 2
    right, left = np.array(centre) - half, np.array(centre) + half
    pts[36:42] = right + np.random.default_rng(0).normal(0, 0.01, (6, 2))
    pts[42:48] = left
    if pupils:
        pts[68], pts[69] = right, left
    return pts


def test_eye_line_angle_uses_pupils_then_contours():
    assert eye_line_angle(eye_landmarks(25)) == pytest.approx(math.radians(25), abs=1e-3)
    assert eye_line_angle(eye_landmarks(-40, pupils=False)) == pytest.approx(math.radians(-40), abs=1e-3)
    assert math.isnan(eye_line_angle(np.full((70, 2), np.nan)))


def test_alignment_levels_the_eyes():
    pts = eye_landmarks(30)
    img = np.zeros((240, 320, 3), np.uint8)
    for p in (pts[68], pts[69]):
        cv2.circle(img, (int(round(p[0])), int(round(p[1]))), 4, (255, 255, 255), -1)
    bbox = np.array([110, 70, 100, 100])
    for align, level in ((True, True), (False, False)):
        crop = crop_face(img, bbox, margin=0.1, size=224, landmarks=pts, align=align)
        n, labels, stats, centroids = cv2.connectedComponentsWithStats((crop[..., 0] > 128).astype(np.uint8))
        assert n == 3  # background + two eyes
        dy = abs(centroids[1, 1] - centroids[2, 1])
        assert (dy < 2) == level
    # The matrix maps the eye points to the same crop row.
    m = crop_matrix(bbox, 0.1, 224, eye_line_angle(pts))
    mapped = np.c_[pts[[68, 69]], np.ones(2)] @ m.T
    assert mapped[0, 1] == pytest.approx(mapped[1, 1], abs=1e-6)


def test_crop_faces_skips_frames_without_a_usable_box():
    img = coordinate_image()
    images = np.stack([img] * 4)
    boxes = np.array([[100, 50, 80, 80], [np.nan] * 4, [10, 10, 0, 30], [20, 20, 50, 60]], float)
    valid = np.array([True, False, True, True])
    assert face_rows_valid(boxes, valid).tolist() == [True, False, False, True]
    crops, has_face = crop_faces(images, boxes, margin=0.0, size=64, valid=np.array([True, True, True, False]))
    assert has_face.tolist() == [True, False, False, False]
    assert crops.shape == (1, 64, 64, 3)
    assert np.array_equal(crops[0], crop_face(img, boxes[0], 0.0, 64))
