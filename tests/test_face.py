"""The MediaPipe face stage on clips made from real face photographs: scikit-image's
astronaut and matplotlib's Grace Hopper (vidaffect.bench.face_clips)."""

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
from media import astronaut_frame, make_video

from vidaffect.bench.face_accuracy import MIRROR68, region_errors
from vidaffect.bench.face_clips import PHOTO_FACES, background, photo, place_face
from vidaffect.commands.extract import extract
from vidaffect.io.video import VideoInfo
from vidaffect.stages.base import Batch, row_sets
from vidaffect.stages.boxes import box_iou
from vidaffect.stages.face import FaceParams, FaceStage
from vidaffect.stages.face_tracker import FaceTracker
from vidaffect.stages.jaw import mesh_to_face70

DATA = Path(__file__).parent / "data"
# The jaw vertices of the fixed mapping that landmark marching replaced.
FIXED_JAW = (34, 123, 147, 58, 172, 169, 149, 148, 152, 377, 378, 394, 397, 288, 376, 352, 264)


@pytest.fixture(scope="module")
def stage():
    s = FaceStage()
    yield s
    s.close()


@pytest.fixture(scope="module")
def tracker():
    t = FaceTracker()
    yield t
    t.close()


def run_frames(stage, frames, fps=25.0, store=Path("made.h5")):
    """The stage's rows for ``frames`` (the run as the engine drives it, one batch)."""
    frames = np.stack(frames)
    n, h, w = frames.shape[:3]
    info = VideoInfo("made.mp4", "made", 0, 0.0, w, h, fps, n, n / fps, 0, "h264", False)
    run = stage.open(info, store)
    parts = [run.process(Batch(0, np.arange(n) / fps, frames)), *row_sets(run.finish())]
    run.close()
    parts = [p for p in parts if p]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def moving(n, name, height, centre, size=(360, 640)):
    """``n`` frames of one photograph's face pasted at ``centre(i)`` on the backdrop,
    and the face's box in each."""
    frames, boxes = [], []
    for i in range(n):
        canvas = background(*size)
        boxes.append(place_face(canvas, name, height, centre(i)))
        frames.append(canvas)
    return frames, boxes


def inside(points, box, grow=0.0):
    x, y, w, h = box
    return (
        (points[:, 0] >= x - grow * w) & (points[:, 0] <= x + w * (1 + grow))
        & (points[:, 1] >= y - grow * h) & (points[:, 1] <= y + h * (1 + grow))
    )  # fmt: skip


def eye_distance(landmarks):
    return float(np.linalg.norm(landmarks[36] - landmarks[45]))


def test_close_up_clip_through_the_engine(media, tmp_path):
    # The astronaut moves 4 px right and 1 px down per frame.
    frames = [astronaut_frame(offset=(10 + i, 20 + 4 * i)) for i in range(20)]
    clip = make_video(media / "closeup.mp4", frames)
    summary = extract([clip], tmp_path / "features", stages=["face"])
    assert [r.status for r in summary.results] == ["done"], summary.report()
    with h5py.File(tmp_path / "features" / "closeup.h5", "r") as h5:
        face = {k: h5["face"][k][()] for k in h5["face"]}
        assert h5["face"].attrs["stage"] == "face"
        assert json.loads(h5["face"].attrs["params"])["detect_every"] == FaceParams().detect_every
    shapes = {k: (v.shape, v.dtype.str[1:]) for k, v in face.items()}
    assert shapes == {
        "landmarks": ((20, 70, 2), "f4"), "bbox": ((20, 4), "f4"), "score": ((20,), "f4"), "count": ((20,), "i4"),
        "identity": ((20,), "i4"), "mesh": ((20, 478, 3), "f2"), "valid": ((20,), "b1"),
    }  # fmt: skip
    assert face["valid"].all()
    assert (face["count"] == 1).all()
    assert (face["score"] > 0.5).all()
    # The box follows the face: 4 px right, 1 px down per frame.
    assert np.median(np.diff(face["bbox"][:, 0])) == pytest.approx(4, abs=1)
    assert np.median(np.diff(face["bbox"][:, 1])) == pytest.approx(1, abs=1)
    for t in (0, 19):
        lm = face["landmarks"][t]
        x, y, w, h = PHOTO_FACES["astronaut"]
        known = (x + 20 + 4 * t, y + 10 + t, w, h)  # the face's box in frame t
        assert inside(lm, known, grow=0.15).all()
        assert inside(lm[68:], face["bbox"][t]).all()  # pupils inside the 68-point box
        brows, eyes, nose, mouth = lm[17:27, 1].mean(), lm[36:48, 1].mean(), lm[30, 1], lm[48:68, 1].mean()
        assert brows < eyes < nose < mouth < lm[8, 1]  # chin lowest
        assert lm[36:42, 0].mean() < lm[42:48, 0].mean()  # subject's right eye on the image's left
        for pupil, eye in ((lm[68], lm[36:42]), (lm[69], lm[42:48])):
            assert np.linalg.norm(pupil - eye.mean(axis=0)) < 0.1 * w
        # Landmarks are read off the stored mesh (float16: about 0.1 px; a marched jaw
        # point may slide a little further along its curve).
        again = mesh_to_face70(face["mesh"][t].astype(np.float32))
        np.testing.assert_allclose(again[17:], lm[17:], atol=0.6)
        np.testing.assert_allclose(again[:17], lm[:17], atol=0.02 * eye_distance(lm))


def test_landmarks_agree_with_an_independent_68_point_detector(stage):
    from skimage import data

    reference = np.array(json.loads((DATA / "astronaut_ibug68.json").read_text())["points"], float) + 0.5
    out = run_frames(stage, [data.astronaut()] * 3)
    assert out["valid"].all()
    errors = region_errors(out["landmarks"][0], reference)
    assert errors["all"] < 0.04, errors
    assert errors["jaw"] < 0.05, errors


def test_marched_jaw_beats_the_fixed_vertices_and_leaves_the_rest(tracker):
    # dlib's 68 points on the astronaut, its mirror image (points renumbered), and the
    # image seen turned (a horizontal perspective about the face, points moved alike).
    import cv2
    from skimage import data

    reference = np.array(json.loads((DATA / "astronaut_ibug68.json").read_text())["points"], float) + 0.5
    image = data.astronaut()
    mirrored = reference.copy()
    mirrored[:, 0] = image.shape[1] - mirrored[:, 0]
    cases = [(image, reference), (np.ascontiguousarray(image[:, ::-1]), mirrored[MIRROR68])]
    cx, cy = reference.mean(axis=0)
    for turn in (-0.0012, 0.0012):
        warp = np.array([[1, 0, cx], [0, 1, cy], [0, 0, 1]]) @ np.array([[1, 0, 0], [0, 1, 0], [turn, 0, 1]])
        warp = warp @ np.array([[1, 0, -cx], [0, 1, -cy], [0, 0, 1]])
        turned = cv2.warpPerspective(image, warp, image.shape[1::-1], borderMode=cv2.BORDER_REPLICATE)
        cases.append((turned, cv2.perspectiveTransform(reference[None], warp)[0]))
    for frame, ref in cases:
        tracker.reset()
        (face,) = tracker.step(frame)
        fixed = face.landmarks.copy()
        fixed[:17] = face.mesh[list(FIXED_JAW), :2]
        new, old = region_errors(face.landmarks, ref), region_errors(fixed, ref)
        assert new["jaw"] < 0.95 * old["jaw"], (new, old)
        assert all(new[k] == old[k] for k in ("brows", "nose", "eyes", "mouth"))


@pytest.mark.parametrize("where", ["photograph", "small face on a backdrop"])
def test_identical_frames_give_identical_landmarks(stage, where):
    # 30 identical frames span three detector runs: neither they nor anything else
    # may move the points (tolerance 0.2 % of the eye distance; the tracker is exact).
    if where == "photograph":
        frame = photo("hopper")[0]
    else:
        frame = background()
        place_face(frame, "astronaut", 60, (400, 150))
    out = run_frames(stage, [frame] * 30)
    assert out["valid"].all()
    lm, boxes = out["landmarks"], out["bbox"]
    moved = np.linalg.norm(lm - lm[0], axis=-1).max() / eye_distance(lm[0])
    assert moved <= 0.002, moved
    np.testing.assert_allclose(boxes, np.broadcast_to(boxes[0], boxes.shape), atol=0.002 * eye_distance(lm[0]))


def test_a_face_found_again_has_the_shape_it_had(stage):
    # Hidden for five frames, then back where it was: the re-found face is re-acquired
    # from a detection, and must give the points it gave before.
    frame = background()
    place_face(frame, "hopper", 90, (300, 170))
    hidden = frame.copy()
    hidden[90:260, 200:400] = 0
    out = run_frames(stage, [frame] * 6 + [hidden] * 5 + [frame] * 6)
    assert out["valid"][:6].all() and not out["valid"][6:11].any() and out["valid"][11:].all()
    lm = out["landmarks"]
    assert np.linalg.norm(lm[11:] - lm[0], axis=-1).max() <= 0.002 * eye_distance(lm[0])


@pytest.mark.parametrize("size, face_height", [((1080, 1920), 60), ((360, 640), 55)])
def test_small_face_in_a_wide_shot_is_found(stage, size, face_height):
    h, w = size
    frames, boxes = moving(12, "astronaut", face_height, lambda i: (w * 0.6 + 3 * i, h * 0.4 + i), size)
    out = run_frames(stage, frames)
    assert out["valid"].mean() >= 0.9, out["valid"]
    for t in np.flatnonzero(out["valid"]):
        assert inside(out["landmarks"][t, :68], boxes[t], grow=0.2).all()
        assert 0.7 * face_height < out["bbox"][t, 3] < 1.3 * face_height


def test_two_faces_are_counted_each_keeps_its_identity_and_the_primary_is_chosen_over_the_video(tracker):
    # The astronaut starts as the more prominent face; Grace Hopper grows from 70 to
    # 184 px and ends with more screen time weighted by size.
    frames, boxes = [], []
    for i in range(20):
        canvas = background()
        boxes.append((place_face(canvas, "astronaut", 110, (170 + i, 180)), place_face(canvas, "hopper", 70 + 6 * i, (470, 180))))
        frames.append(canvas)
    tracker.reset()
    seen = []
    for frame in frames:
        faces = tracker.step(frame)
        assert len(faces) == 2
        seen.append(faces)
    tracker.finish()
    ids = tracker.identities
    for who in (0, 1):
        identities = set()
        for t, faces in enumerate(seen):
            face = max(faces, key=lambda f: box_iou(f.box, boxes[t][who]))
            assert box_iou(face.box, boxes[t][who]) > 0.5
            identities.add(ids.resolve(face.track, t))
        assert len(identities) == 1 and -1 not in identities
        if who == 1:
            hopper = identities.pop()
    assert ids.primary() == hopper


def test_frames_after_the_face_leaves_are_invalid_not_stale(stage):
    frames = [astronaut_frame(offset=(10, 20 + 2 * i)) for i in range(10)] + [background()] * 8
    frames += [astronaut_frame(offset=(10, 60))] * 4  # the face comes back
    out = run_frames(stage, frames)
    assert out["valid"][:10].all()
    assert not out["valid"][10:18].any()
    assert np.isnan(out["landmarks"][10:18]).all() and np.isnan(out["mesh"][10:18].astype(np.float32)).all()
    assert np.isnan(out["bbox"][10:18]).all() and np.isnan(out["score"][10:18]).all()
    assert (out["count"][10:18] == 0).all() and (out["identity"][10:18] == -1).all()
    assert out["valid"][18:].all()  # found again
    assert (out["identity"][18:] == out["identity"][5]).all()  # and known again


def test_count_and_valid_agree_where_there_is_no_face(stage):
    # Lettering and texture make MediaPipe's detector fire now and then; a face is
    # only counted once the mesh confirms it.
    import cv2

    frames = []
    for i in range(12):
        canvas = background()
        cv2.putText(canvas, "Caminandes", (40 + 4 * i, 200), cv2.FONT_HERSHEY_SIMPLEX, 2.5, (250, 250, 250), 8)
        frames.append(canvas)
    out = run_frames(stage, frames)
    assert not out["valid"].any()
    assert (out["count"] == 0).all()


def test_a_face_sliding_out_of_the_frame(stage):
    # 30 px per frame to the right; the face (100 px) has left the frame by frame 16.
    frames, _ = moving(20, "astronaut", 100, lambda i: (220 + 30 * i, 180))
    out = run_frames(stage, frames)
    assert out["valid"][:8].all()
    assert not out["valid"][16:].any()
    assert np.isnan(out["landmarks"][16:]).all()
    assert (np.diff(out["bbox"][out["valid"], 0]) > 0).all()  # never a repeated (stale) box


def test_smoothing_keeps_a_still_face_and_lags_a_moving_one(stage):
    # With smoothing the stored points of a still face stay exact (a constant input is
    # a fixed point of the filter) and a face moving at constant speed lags behind.
    smoothing = FaceStage(FaceParams(smooth=True))
    try:
        still = run_frames(smoothing, [photo("astronaut")[0]] * 6)
        np.testing.assert_allclose(still["landmarks"], np.broadcast_to(still["landmarks"][0], still["landmarks"].shape), atol=1e-3)
        frames, _ = moving(12, "astronaut", 110, lambda i: (200 + 6 * i, 170))
        smooth = run_frames(smoothing, frames)
    finally:
        smoothing.close()
    raw = run_frames(stage, frames)
    lag = (raw["landmarks"][6:, :68, 0] - smooth["landmarks"][6:, :68, 0]).mean()
    assert 0 < lag < 6  # behind the face, by less than one frame's motion
    np.testing.assert_array_equal(raw["mesh"], smooth["mesh"])  # the mesh is stored as it is


def test_bad_parameters_are_named():
    with pytest.raises(ValueError, match="face.backend"):
        FaceStage(FaceParams(backend="dlib"))
    with pytest.raises(ValueError, match="face.detect_every"):
        FaceStage(FaceParams(detect_every=0))
    with pytest.raises(ValueError, match="face.import_dir"):
        FaceStage(FaceParams(backend="openface"))
    with pytest.raises(ValueError, match="face.reid_threshold"):
        FaceStage(FaceParams(reid_threshold=0))
