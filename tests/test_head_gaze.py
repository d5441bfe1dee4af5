"""Head pose and gaze: known rotations of 3-D faces are recovered, the signs follow
OpenFace's conventions, and on real photographs (MediaPipe meshes) an in-plane turn
of the picture and a moved iris give the roll and the gaze direction they should."""

import cv2
import h5py
import numpy as np
import pytest
from media import astronaut_frame, make_video

from vidaffect.commands.extract import extract
from vidaffect.stages.face_tracker import FaceTracker
from vidaffect.stages.gaze import IRIS_CENTRES, estimate_gaze
from vidaffect.stages.head_pose import (
    default_focal,
    euler_to_matrix,
    fit_head_pose,
    load_canonical,
    matrix_to_euler,
    project,
    rotation_between,
)
from vidaffect.stages.layouts import MESH_TO_FACE70

W, H = 640, 360
F = default_focal(W, H)
C = (W / 2, H / 2)
IRIS_RINGS = ((468, 469, 470, 471, 472), (473, 474, 475, 476, 477))


def geodesic_deg(a, b):
    m = a @ np.swapaxes(b, -1, -2)
    return np.degrees(np.arccos(np.clip((np.trace(m, axis1=-2, axis2=-1) - 1) / 2, -1, 1)))


def other_person(rng):
    """The canonical face changed into another (made-up) person: wider, flatter, with a
    longer nose and 1.5 mm of smooth random shape change, as faces differ."""
    v = load_canonical().vertices * (1.06, 0.96, 0.9)
    v[:, 2] -= 4.0 * np.exp(-np.sum((v[:, :2] - v[4, :2]) ** 2, axis=1) / 400.0)  # nose tip region forwards
    bumps = rng.normal(0, 1.5, (6, 3))
    centres = v[rng.choice(468, 6, replace=False)]
    weights = np.exp(-np.sum((v[:, None] - centres[None]) ** 2, axis=-1) / 800.0)
    return v + weights @ bumps


def synthetic_meshes(shape, poses, rng, noise_px=1.0):
    """Perspective views (as the face stage stores meshes) of ``shape`` at each pose
    (pitch, yaw, roll in degrees), at random image positions 700 mm from the camera."""
    meshes = []
    for angles in poses:
        r = euler_to_matrix(np.radians(angles))
        t = np.array([rng.uniform(-200, 200) * 700 / F, rng.uniform(-90, 90) * 700 / F, 700.0])
        m = project(shape, r, t, F, C)
        m[:, :2] += rng.normal(0, noise_px, (len(m), 2))
        m[:, 2] += rng.normal(0, 2 * noise_px, len(m))
        meshes.append(m)
    return np.stack(meshes)


POSES = [(p, y, r) for y in range(-45, 46, 15) for p in (-15, 0, 15) for r in (-15, 0, 15)]


def test_rotated_faces_are_recovered_within_3_degrees_up_to_45_degrees_yaw():
    # 3 degrees: on real people the fit's 95th percentile error was 3.1 degrees (a
    # person's face differs from the canonical one); the same face as the canonical
    # is recovered to about 1 degree.
    rng = np.random.default_rng(0)
    truth = euler_to_matrix(np.radians(POSES))
    for shape, bound in ((load_canonical().vertices, 1.5), (other_person(rng), 3.0)):
        pose = fit_head_pose(synthetic_meshes(shape, POSES, rng), F, C)
        err = geodesic_deg(pose.rotation, truth)
        assert err.max() < bound, (bound, err.max(), POSES[int(err.argmax())])
        assert np.abs(pose.degrees - np.array(POSES)).max() < bound + 0.5
        assert np.allclose(pose.translation[:, 2], 700, rtol=0.12)  # mm, under the assumed face size


def test_landmarks_alone_give_the_pose_less_accurately():
    # Imported 68-point landmarks have no depth: the 51 inner points are fitted from a
    # frontal start.  Depth differences between faces read as pose, hence the wider bounds.
    inner = np.array(MESH_TO_FACE70[17:68])
    rng = np.random.default_rng(1)
    truth = euler_to_matrix(np.radians(POSES))
    for shape, mean_bound, max_bound in ((load_canonical().vertices, 2.0, 4.0), (other_person(rng), 7.0, 11.0)):
        meshes = synthetic_meshes(shape, POSES, rng)
        err = geodesic_deg(fit_head_pose(meshes[:, inner, :2], F, C, vertices=inner).rotation, truth)
        assert err.mean() < mean_bound and err.max() < max_bound, (err.mean(), err.max())


def test_signs_follow_openface():
    can = load_canonical().vertices
    nose = 1
    for angles, check in [
        ((20, 0, 0), lambda d, eyes: d[1] > 5),  # pitch > 0: head lowered, nose down the image
        ((0, -30, 0), lambda d, eyes: d[0] > 5),  # yaw < 0: head turned to its left, nose towards image right
        ((0, 0, 20), lambda d, eyes: eyes[1] > 5),  # roll > 0: subject's left eye lower (clockwise on screen)
    ]:
        m = project(can, euler_to_matrix(np.radians(angles)), np.array([0.0, 0.0, 700.0]), F, C)
        d = m[nose, :2] - m[[33, 133, 362, 263, 61, 291], :2].mean(axis=0)
        assert check(d, m[263, :2] - m[33, :2]), angles
        assert np.allclose(fit_head_pose(m[None], F, C).degrees[0], angles, atol=0.5)
    a = np.radians([[10.0, -35.0, 5.0], [-20.0, 80.0, -170.0]])
    assert np.allclose(matrix_to_euler(euler_to_matrix(a)), a)


@pytest.fixture(scope="module")
def tracker():
    t = FaceTracker()
    yield t
    t.close()


def mesh_of(tracker, image):
    tracker.reset()
    _, face = tracker.step(np.ascontiguousarray(image))
    assert face is not None
    return face.mesh.astype(np.float64)


def turned(image, degrees):
    h, w = image.shape[:2]
    m = cv2.getRotationMatrix2D((w / 2, h / 2), degrees, 1.0)
    return cv2.warpAffine(image, m, (w, h), borderMode=cv2.BORDER_REPLICATE)


def test_turning_a_real_photograph_in_the_image_plane_changes_only_the_roll(tracker):
    photo = astronaut_frame((512, 512))
    f, c = default_focal(512, 512), (256.0, 256.0)
    base = fit_head_pose(mesh_of(tracker, photo)[None], f, c)
    for a in (-25, 25):  # OpenCV turns the picture counter-clockwise by a: the roll falls by a
        pose = fit_head_pose(mesh_of(tracker, turned(photo, a))[None], f, c)
        undone = euler_to_matrix(np.radians([0, 0, a])) @ pose.rotation
        assert geodesic_deg(undone, base.rotation)[0] < 2.5, a
        assert pose.degrees[0, 2] - base.degrees[0, 2] == pytest.approx(-a, abs=1.5)


def eyes_looking(shape, gaze_x_deg):
    """The face with both irises turned about their eyeball centres so that the gaze
    has the horizontal angle ``gaze_x_deg`` (frontal head)."""
    v = shape.copy()
    g = np.array([np.tan(np.radians(gaze_x_deg)), 0.0, -1.0])
    rot = rotation_between(np.array([0.0, 0.0, -1.0]), g)
    for ring, iris in zip(IRIS_RINGS, IRIS_CENTRES, strict=True):
        centre = shape[iris] + (0.0, 0.0, 12.0)
        v[list(ring)] = (v[list(ring)] - centre) @ rot.T + centre
    return v


def gaze_of(meshes, f, c):
    pose = fit_head_pose(meshes, f, c)
    return estimate_gaze(meshes, pose.rotation, pose.translation, pose.scale, pose.origin)


def test_gaze_angle_follows_the_iris_on_a_synthetic_face():
    can = load_canonical().vertices
    truth = [-30, -15, 0, 15, 30]
    meshes = np.stack([project(eyes_looking(can, x), np.eye(3), np.array([30.0, -20.0, 600.0]), F, C) for x in truth])
    g = gaze_of(meshes, F, C)
    est = np.degrees(g.angles[:, 0])
    assert np.all(np.diff(est) > 0) and est[0] < -20 and est[-1] > 20
    assert np.allclose(est, truth, atol=3) and np.allclose(np.degrees(g.angles[:, 1]), 0, atol=2)
    # looking into the camera: both vectors are about (0, 0, -1)
    assert np.allclose(g.vectors[2], [[0, 0, -1]] * 2, atol=0.03)


def move_irises(image, mesh, shift):
    """The photograph with each iris disc moved ``shift`` iris radii horizontally inside
    its eye opening (the rest of the opening painted with the white of the eye)."""
    contours = ((33, 7, 163, 144, 145, 153, 154, 155, 133, 173, 157, 158, 159, 160, 161, 246),
                (263, 249, 390, 373, 374, 380, 381, 382, 362, 398, 384, 385, 386, 387, 388, 466))  # fmt: skip
    out = image.copy()
    h, w = image.shape[:2]
    yy, xx = np.mgrid[:h, :w]
    for ring, contour in zip(IRIS_RINGS, contours, strict=True):
        c = mesh[ring[0], :2]
        rad = float(np.mean(np.linalg.norm(mesh[list(ring[1:]), :2] - c, axis=1)))
        eye = np.zeros((h, w), np.uint8)
        cv2.fillPoly(eye, [np.round(mesh[list(contour), :2]).astype(np.int32)], 1)
        eye = eye.astype(bool)
        iris = (xx - c[0]) ** 2 + (yy - c[1]) ** 2 <= (1.15 * rad) ** 2
        out[eye] = np.median(image[eye & ~iris], axis=0)
        m = np.float32([[1, 0, shift * rad], [0, 1, 0]])
        moved = cv2.warpAffine(image, m, (w, h))
        put = cv2.warpAffine(iris.astype(np.uint8), m, (w, h), flags=cv2.INTER_NEAREST).astype(bool) & eye
        out[put] = moved[put]
    return out


def test_moving_the_irises_of_a_real_photograph_turns_the_gaze(tracker):
    from skimage import data

    photo = cv2.resize(data.astronaut(), None, fx=2, fy=2, interpolation=cv2.INTER_CUBIC)
    h, w = photo.shape[:2]
    base = mesh_of(tracker, photo)
    shifts = (-0.8, -0.4, 0.0, 0.4, 0.8)  # iris radii; positive: towards the image's right
    meshes = np.stack([mesh_of(tracker, move_irises(photo, base, s)) for s in shifts])
    x = np.degrees(gaze_of(meshes, default_focal(w, h), (w / 2, h / 2)).angles[:, 0])
    assert np.all(np.diff(x) > 0), x
    assert x[0] < -5 and x[-1] > 5, x  # looking towards the image's left is negative


def test_head_and_gaze_stages_on_a_made_clip(media, tmp_path):
    photo = astronaut_frame()
    blank = np.full_like(photo, 128)
    frames = [turned(photo, a) for a in (-20, -20, 0, 0, 20, 20)] + [blank, blank]
    make_video(media / "turn.mp4", frames)
    summary = extract([media], tmp_path / "f", ["gaze"])
    assert summary.exit_code == 0, summary.report()
    with h5py.File(tmp_path / "f" / "turn.h5") as h5:
        face = h5["face/valid"][:]
        head, angles, ok = h5["head"], h5["head/angles"][:], h5["head/valid"][:]
        assert (ok == face).all() and face[:6].all() and not face[6:].any()
        assert np.isnan(angles[6:]).all() and np.isnan(h5["gaze/eye_open"][6:]).all()
        # the picture turned counter-clockwise by 20 degrees: roll 20 degrees lower
        assert angles[0, 2] - angles[2, 2] == pytest.approx(20, abs=2.5)
        assert angles[4, 2] - angles[2, 2] == pytest.approx(-20, abs=2.5)
        assert head.attrs["focal_px"] == pytest.approx(default_focal(640, 360))
        assert 300 < np.nanmedian(h5["head/translation"][:6, 2]) < 1500  # mm: a face about 100 px high
        assert h5["gaze/valid"][:6].all() and (np.abs(h5["gaze/angles"][:6]) < 25).all()
        eye_open = h5["gaze/eye_open"][:6]
        assert ((eye_open > 0.15) & (eye_open < 0.5)).all()  # open eyes
        assert np.allclose(np.linalg.norm(h5["gaze/vectors"][:6], axis=-1), 1, atol=1e-5)
