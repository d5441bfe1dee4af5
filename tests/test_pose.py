"""The MediaPipe pose stage on clips of a real upper-body photograph (the astronaut)."""

import urllib.error
from pathlib import Path

import h5py
import numpy as np
import pytest
from media import astronaut_frame, make_video

from vidaffect.commands.extract import extract
from vidaffect.io.video import VideoInfo
from vidaffect.stages.base import Batch
from vidaffect.stages.body import present_keypoints
from vidaffect.stages.layouts import COCO18_NAMES, pose33_to_coco18
from vidaffect.stages.pose import PoseParams, PoseStage

ASTRONAUT_FACE = (173.7, 67.8, 103.9, 103.9)  # x, y, w, h in the 512 px photograph
K = {name: i for i, name in enumerate(COCO18_NAMES)}


@pytest.fixture(scope="module")
def stage():
    s = PoseStage()
    yield s
    s.close()


def run_frames(stage, frames):
    frames = np.stack(frames)
    n, h, w = frames.shape[:3]
    run = stage.open(VideoInfo("m.mp4", "m", 0, 0.0, w, h, 25.0, n, n / 25, 0, "h264", False), Path("m.h5"))
    return run.process(Batch(0, np.arange(n) / 25.0, frames))


def test_upper_body_keypoints_through_the_engine(media, tmp_path):
    frames = [astronaut_frame(offset=(0, 40 + 2 * i)) for i in range(10)]
    clip = make_video(media / "body.mp4", frames)
    summary = extract([clip], tmp_path / "f", stages=["pose"])
    assert [r.status for r in summary.results] == ["done"], summary.report()
    with h5py.File(tmp_path / "f" / "body.h5", "r") as h5:
        kp, valid = h5["pose/keypoints"][()], h5["pose/valid"][()]
    assert kp.shape == (10, 18, 3) and kp.dtype == np.float32
    assert valid.all()
    assert ((kp[..., 2] >= 0) & (kp[..., 2] <= 1)).all()
    for t in (0, 9):
        p = kp[t]
        x, y, w, h = ASTRONAUT_FACE
        fx = x + 40 + 2 * t  # the face box moves with the photograph
        assert fx < p[K["nose"], 0] < fx + w and y < p[K["nose"], 1] < y + h  # nose on the face
        assert p[K["nose"], 1] < p[K["neck"], 1]  # nose above neck
        # A frontal person: their right side is on the image's left.
        assert p[K["right_shoulder"], 0] < p[K["neck"], 0] < p[K["left_shoulder"], 0]
        assert p[K["right_eye"], 0] < p[K["left_eye"], 0]
        assert p[K["right_ear"], 0] < p[K["left_ear"], 0]
        assert max(p[K["right_eye"], 1], p[K["left_eye"], 1]) < p[K["nose"], 1]
        assert min(p[K["right_shoulder"], 2], p[K["left_shoulder"], 2]) > 0.5
        np.testing.assert_allclose(p[K["neck"], :2], (p[K["right_shoulder"], :2] + p[K["left_shoulder"], :2]) / 2, rtol=1e-5)
    # The body moves 2 px right per frame.
    assert np.median(np.diff(kp[:, K["neck"], 0])) == pytest.approx(2, abs=1)


def test_no_person_gives_invalid_rows_and_nothing_carries_over_between_videos(stage):
    person = run_frames(stage, [astronaut_frame()] * 5)
    assert person["valid"].all()
    empty = run_frames(stage, [np.full((360, 640, 3), 90, np.uint8)] * 5)
    assert not empty["valid"].any()
    assert np.isnan(empty["keypoints"]).all()


def test_mediapipe_33_to_coco18_mapping():
    lm = np.zeros((33, 3), np.float32)
    lm[:, 0] = np.arange(33)  # x = MediaPipe index
    lm[:, 1] = 100 + np.arange(33)
    lm[:, 2] = 0.9
    lm[11, 2], lm[12, 2] = 0.8, 0.6  # shoulders
    out = pose33_to_coco18(lm)
    expected = {"nose": 0, "right_shoulder": 12, "right_elbow": 14, "right_wrist": 16, "left_shoulder": 11,
                "left_elbow": 13, "left_wrist": 15, "right_hip": 24, "right_knee": 26, "right_ankle": 28,
                "left_hip": 23, "left_knee": 25, "left_ankle": 27, "right_eye": 5, "left_eye": 2,
                "right_ear": 8, "left_ear": 7}  # fmt: skip
    for name, mp_index in expected.items():
        assert out[K[name], 0] == mp_index, name
    np.testing.assert_allclose(out[K["neck"]], [11.5, 111.5, 0.6])


def test_bad_parameters_and_missing_model_are_explained(monkeypatch):
    with pytest.raises(ValueError, match="pose.model_complexity"):
        PoseStage(PoseParams(model_complexity=3))
    with pytest.raises(ValueError, match="pose.backend"):
        PoseStage(PoseParams(backend="openface"))

    # Complexity 0 needs a model MediaPipe downloads; offline, the error says what to do.
    import mediapipe.python.solutions.pose as mp_pose

    def offline(model_complexity):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(mp_pose, "_download_oss_pose_landmark_model", offline)
    stage = PoseStage(PoseParams(model_complexity=0))
    info = VideoInfo("m.mp4", "m", 0, 0.0, 64, 64, 25.0, 1, 0.04, 0, "h264", False)
    with pytest.raises(RuntimeError, match=r"pose_landmark_lite\.tflite.*pose\.model_complexity=1"):
        stage.open(info, Path("m.h5"))


# --- only what is there -------------------------------------------------------------


def horse_title_card() -> np.ndarray:
    """A title card: a horse silhouette logo (scikit-image's) and a title, no person.
    MediaPipe pose finds a 'body' with a visible face in it."""
    import cv2
    from skimage import data

    horse = ~data.horse()  # True on the horse
    scale = 240 / horse.shape[0]
    mask = cv2.resize(horse.astype(np.uint8), None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST).astype(bool)
    card = np.full((360, 640, 3), 128, np.uint8)
    card[60 : 60 + mask.shape[0], 200 : 200 + mask.shape[1]][mask] = (40, 40, 40)
    cv2.putText(card, "STABLE FILMS", (150, 345), cv2.FONT_HERSHEY_DUPLEX, 1.4, (230, 230, 230), 3, cv2.LINE_AA)
    return card


def test_a_title_card_has_no_person(media, tmp_path):
    from vidaffect.stages.mediapipe_solutions import mediapipe_solution

    card = horse_title_card()
    clip = make_video(media / "title.mp4", [card] * 8)
    raw = mediapipe_solution("pose.Pose", static_image_mode=False, model_complexity=1)
    try:
        # What MediaPipe alone says: a confident body with a face, where there is none.
        found = [raw.process(card).pose_landmarks for _ in range(3)]
    finally:
        raw.close()
    assert all(f is not None for f in found), "the card no longer fools MediaPipe: the test would prove nothing"
    assert min(found[-1].landmark[i].visibility for i in (0, 2, 5)) > 0.5  # nose and both eyes
    summary = extract([clip], tmp_path / "f", stages=["face", "pose"])
    assert summary.exit_code == 0, summary.report()
    with h5py.File(tmp_path / "f" / "title.h5") as h5:
        assert not h5["pose/valid"][()].any()
        assert np.isnan(h5["pose/keypoints"][()]).all()  # a frame without a person is NaN throughout
        assert h5["pose"].attrs["frames_without_face"] == 8
        assert "8 frame(s) with a body showing a face where no face was found" in h5["pose"].attrs["note"]


def close_up() -> np.ndarray:
    """The astronaut's face filling a 640x360 frame: the body is out of the picture."""
    import cv2
    from skimage import data

    x, y, w, h = ASTRONAUT_FACE
    cx, cy = x + w / 2, y + h / 2
    half_h = 0.8 * h
    half_w = half_h * 16 / 9
    crop = data.astronaut()[int(cy - half_h) : int(cy + half_h), int(cx - half_w) : int(cx + half_w)]
    return cv2.resize(crop, (640, 360), interpolation=cv2.INTER_LINEAR)


def test_a_close_up_reports_the_head_and_no_made_up_body(media, tmp_path):
    from vidaffect.stages.mediapipe_solutions import mediapipe_solution

    frame = close_up()
    pose = mediapipe_solution("pose.Pose", static_image_mode=False, model_complexity=1)
    try:
        result = [pose.process(frame) for _ in range(2)][-1]
    finally:
        pose.close()
    ys = np.array([lm.y for lm in result.pose_landmarks.landmark])
    assert ys.max() > 1.5, "MediaPipe extrapolates a body below the close-up"

    clip = make_video(media / "close.mp4", [frame] * 6)
    assert extract([clip], tmp_path / "f", stages=["face", "pose"]).exit_code == 0
    with h5py.File(tmp_path / "f" / "close.h5") as h5:
        kp, valid = h5["pose/keypoints"][()], h5["pose/valid"][()]
        assert h5["face/valid"][()].all()
    assert valid.all()
    present = np.isfinite(kp[..., 0])
    for name in ("nose", "right_eye", "left_eye"):
        assert present[:, K[name]].all(), name
    for name in ("right_hip", "left_hip", "right_knee", "left_knee", "right_ankle", "left_ankle", "right_wrist", "left_wrist"):
        assert not present[:, K[name]].any(), name
        assert (kp[:, K[name], 2] == 0).all()
    x, y, c = kp[present].T
    assert (c >= 0.5).all()
    assert (x >= -6.4).all() and (x <= 646.4).all() and (y >= -3.6).all() and (y <= 363.6).all()  # 1 % margin


def two_people() -> tuple[np.ndarray, list[np.ndarray]]:
    """Two astronauts side by side (0.6 scale) and their face boxes (x, y, w, h)."""
    photo = astronaut_frame((512, 512))
    import cv2

    small = cv2.resize(photo, None, fx=0.6, fy=0.6, interpolation=cv2.INTER_AREA)
    frame = np.full((360, 720, 3), 128, np.uint8)
    boxes = []
    for ox in (20, 400):
        frame[20 : 20 + small.shape[0], ox : ox + small.shape[1]] = small[: 340]
        x, y, w, h = ASTRONAUT_FACE
        boxes.append(np.array([ox + 0.6 * x, 20 + 0.6 * y, 0.6 * w, 0.6 * h], np.float32))
    return frame, boxes


def test_pose_follows_the_tracked_face(stage):
    frame, boxes = two_people()
    for box in boxes:
        frames = np.stack([frame] * 4)
        info = VideoInfo("m.mp4", "m", 0, 0.0, 720, 360, 25.0, 4, 0.16, 0, "h264", False)
        run = stage.open(info, Path("m.h5"))
        inputs = {"face/bbox": np.tile(box, (4, 1)), "face/valid": np.ones(4, bool)}
        rows = run.process(Batch(0, np.arange(4) / 25.0, frames, inputs))
        assert rows["valid"].all()
        x, y, w, h = box
        nose = rows["keypoints"][:, K["nose"], :2]
        assert ((nose[:, 0] > x) & (nose[:, 0] < x + w) & (nose[:, 1] > y) & (nose[:, 1] < y + h)).all()
        assert run.attrs["frames_not_tracked_face"] == 0


def test_keypoint_rules():
    p = PoseParams()
    kp = np.array([[10, 10, 0.9], [10, 10, 0.49], [-5, 10, 0.9], [-7, 10, 0.9], [50, 104, 0.8], [np.nan, np.nan, 0]], np.float32)
    kept = present_keypoints(np.vstack([kp, np.zeros((12, 3), np.float32)]), (0, 0, 640, 360), p.min_keypoint_confidence, p.outside_margin)[: len(kp)]
    # confident and inside; below the threshold; 5 px outside (within 1 % of 640); 7 px outside; inside; missing
    assert np.isfinite(kept[:, 0]).tolist() == [True, False, True, False, True, False]
    assert kept[~np.isfinite(kept[:, 0]), 2].tolist() == [0, 0, 0]


def run_batches(stage, frames, sizes):
    """Rows of ``frames`` fed in batches of ``sizes`` (then finish()), and how many times
    the model ran."""
    frames = np.stack(frames)
    n, h, w = frames.shape[:3]
    run = stage.open(VideoInfo("m.mp4", "m", 0, 0.0, w, h, 25.0, n, n / 25, 0, "h264", False), Path("m.h5"))
    calls = []
    model = run.pose.process
    run.pose.process = lambda image: calls.append(1) or model(image)  # counts, still the real model
    parts, start = [], 0
    for size in sizes:
        parts.append(run.process(Batch(start, np.arange(start, start + size) / 25.0, frames[start : start + size])))
        start += size
    parts.append(run.finish())
    del run.pose.process
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}, len(calls)


def test_every_n_frames_runs_the_model_on_keyframes_and_interpolates_between():
    frames = [astronaut_frame(offset=(0, 40 + 3 * i)) for i in range(10)]  # moves 3 px right per frame
    every1 = PoseStage(PoseParams(every=1))
    rows1, calls1 = run_batches(every1, frames, [4, 6])
    every1.close()
    assert calls1 == 10 and rows1["valid"].all() and not rows1["interpolated"].any()
    # every=1 is the plain MediaPipe solution, frame after frame, with the keypoint rules.
    from vidaffect.stages.mediapipe_solutions import mediapipe_solution

    p = PoseParams()
    raw = mediapipe_solution("pose.Pose", static_image_mode=False, model_complexity=1, smooth_landmarks=True,
                             enable_segmentation=False, min_detection_confidence=p.min_detection_confidence,
                             min_tracking_confidence=p.min_tracking_confidence)  # fmt: skip
    for t, image in enumerate(frames):
        lm = raw.process(image).pose_landmarks.landmark
        body = pose33_to_coco18(np.array([(q.x * 640, q.y * 360, q.visibility) for q in lm], np.float32))
        expected = present_keypoints(body, (0, 0, 640, 360), p.min_keypoint_confidence, p.outside_margin)
        np.testing.assert_allclose(rows1["keypoints"][t], expected, rtol=1e-5, atol=1e-3)
    raw.close()

    every3 = PoseStage(PoseParams(every=3))
    # Batches that split keyframe gaps; 10 frames: keyframes 0, 3, 6, 9 (the last).
    rows3, calls3 = run_batches(every3, frames, [2, 5, 3])
    assert isinstance(every3._pose._simulated_timestamp, int)  # the private clock pose.every sets
    assert calls3 == 4
    keys, between = [0, 3, 6, 9], [1, 2, 4, 5, 7, 8]
    assert rows3["valid"].all()
    assert not rows3["interpolated"][keys].any() and rows3["interpolated"][between].all()
    kp = rows3["keypoints"]
    for a, b in zip(keys, keys[1:], strict=False):
        for t in range(a + 1, b):
            w = (t - a) / (b - a)
            np.testing.assert_allclose(kp[t, :, :2], (1 - w) * kp[a, :, :2] + w * kp[b, :, :2], rtol=1e-5)
            np.testing.assert_array_equal(kp[t, :, 2], np.minimum(kp[a, :, 2], kp[b, :, 2]))
    # The first keyframe is the same call as every=1's; the others and the rows between
    # stay close to every=1's (the body moves 3 px a frame; shoulders about 180 px apart).
    np.testing.assert_array_equal(kp[0], rows1["keypoints"][0])
    torso = [K["neck"], K["right_shoulder"], K["left_shoulder"], K["nose"]]
    width = np.linalg.norm(rows1["keypoints"][:, K["right_shoulder"], :2] - rows1["keypoints"][:, K["left_shoulder"], :2], axis=1)
    error = np.linalg.norm(kp[:, torso, :2] - rows1["keypoints"][:, torso, :2], axis=2) / width[:, None]
    assert error.mean() < 0.02 and error.max() < 0.06, (error.mean(), error.max())

    # A last frame that is no keyframe is measured in finish(), not extrapolated.
    rows, calls = run_batches(every3, frames[:8], [8])
    assert calls == 4 and rows["valid"].all() and not rows["interpolated"][[0, 3, 6, 7]].any()
    assert rows["interpolated"][[1, 2, 4, 5]].all()

    # Nothing is interpolated across a keyframe without a body.
    blank = np.full((360, 640, 3), 90, np.uint8)
    rows, calls = run_batches(every3, frames[:4] + [blank] * 6, [10])
    assert calls == 4
    np.testing.assert_array_equal(rows["valid"], [True] * 4 + [False] * 6)
    np.testing.assert_array_equal(rows["interpolated"], [False, True, True] + [False] * 7)
    assert np.isnan(rows["keypoints"][4:]).all()
    every3.close()


def test_every_n_interpolates_only_keypoints_present_at_both_keyframes():
    stage = PoseStage(PoseParams(every=4))
    run = stage.open(VideoInfo("m.mp4", "m", 0, 0.0, 640, 360, 25.0, 8, 0.32, 0, "h264", False), Path("m.h5"))
    a, b = np.full((18, 3), np.nan, np.float32), np.full((18, 3), np.nan, np.float32)
    a[:, 2] = b[:, 2] = 0.0
    a[K["neck"]], b[K["neck"]] = (100, 200, 0.9), (140, 220, 0.7)
    a[K["nose"]] = (100, 150, 0.95)  # gone (below the threshold, out of frame) at the next keyframe
    b[K["right_hip"]] = (120, 330, 0.8)  # not there at the first
    run._key, run._pending = (0.0, a), [(1, 0.04), (2, 0.08), (3, 0.12)]
    rows = run._keyframe(b, 0.16)
    np.testing.assert_array_equal(rows["valid"], [True] * 4)
    np.testing.assert_array_equal(rows["interpolated"], [True, True, True, False])
    np.testing.assert_allclose(rows["keypoints"][:3, K["neck"]], [(110, 205, 0.7), (120, 210, 0.7), (130, 215, 0.7)], rtol=1e-6)
    for name in ("nose", "right_hip"):  # present at one end only: NaN, confidence 0
        assert np.isnan(rows["keypoints"][:3, K[name], :2]).all()
        np.testing.assert_array_equal(rows["keypoints"][:3, K[name], 2], 0.0)
    # No keypoint present at both ends: no person in between, NaN throughout.
    run._key, run._pending = (0.0, a), [(1, 0.04)]
    b[K["neck"]] = (np.nan, np.nan, 0.0)
    rows = run._keyframe(b, 0.08)
    np.testing.assert_array_equal(rows["valid"], [False, True])
    assert np.isnan(rows["keypoints"][0]).all() and not rows["interpolated"].any()
    stage.close()


def test_every_n_through_the_engine_flags_interpolated_rows(media, tmp_path):
    clip = make_video(media / "body_every.mp4", [astronaut_frame(offset=(0, 40 + 2 * i)) for i in range(7)])
    summary = extract([clip], tmp_path / "f", stages=["pose"], params={"pose": {"every": 2}})
    assert [r.status for r in summary.results] == ["done"], summary.report()
    with h5py.File(tmp_path / "f" / "body_every.h5", "r") as h5:
        assert h5["pose/keypoints"].shape == (7, 18, 3)
        np.testing.assert_array_equal(h5["pose/interpolated"][()], [False, True, False, True, False, True, False])
        assert h5["pose/valid"][()].all()
    with pytest.raises(ValueError, match=r"pose\.every"):
        PoseParams(every=0)
    with pytest.raises(ValueError, match=r"pose\.every applies to the mediapipe backend"):
        PoseParams(every=2, backend="openpose", import_dir=str(tmp_path))
