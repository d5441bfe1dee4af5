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
