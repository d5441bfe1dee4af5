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
    # every=1 is the plain MediaPipe solution, frame after frame, as before the option.
    from vidaffect.stages.mediapipe_solutions import mediapipe_solution

    p = PoseParams()
    raw = mediapipe_solution("pose.Pose", static_image_mode=False, model_complexity=1, smooth_landmarks=True,
                             enable_segmentation=False, min_detection_confidence=p.min_detection_confidence,
                             min_tracking_confidence=p.min_tracking_confidence)  # fmt: skip
    for t, image in enumerate(frames):
        lm = raw.process(image).pose_landmarks.landmark
        expected = pose33_to_coco18(np.array([(q.x * 640, q.y * 360, q.visibility) for q in lm], np.float32))
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
