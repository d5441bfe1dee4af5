"""The MediaPipe face stage on clips made from real face photographs: scikit-image's
astronaut and matplotlib's Grace Hopper."""

import json
from pathlib import Path

import cv2
import h5py
import numpy as np
import pytest
from media import astronaut_frame, make_video

from vidaffect.commands.extract import extract
from vidaffect.io.video import VideoInfo
from vidaffect.stages.base import Batch
from vidaffect.stages.face import FaceParams, FaceStage
from vidaffect.stages.layouts import MESH_TO_FACE70

DATA = Path(__file__).parent / "data"
# Face boxes (x, y, w, h) of the photographs, from MediaPipe's detector.
ASTRONAUT_FACE = (173.7, 67.8, 103.9, 103.9)
HOPPER_FACE = (165.9, 128.4, 200.4, 200.4)


@pytest.fixture(scope="module")
def stage():
    s = FaceStage()
    yield s
    s.close()


def photo(name):
    if name == "astronaut":
        from skimage import data

        return data.astronaut(), ASTRONAUT_FACE
    import matplotlib.cbook
    import matplotlib.image

    return matplotlib.image.imread(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)), HOPPER_FACE


def place_face(canvas, name, height, centre):
    """Paste the photograph's face region (1.8 x its face box) so that the face is
    ``height`` px high and centred on ``centre`` (x, y); returns the face's box."""
    image, (fx, fy, fw, fh) = photo(name)
    s = height / fh
    half = 0.9 * fh
    cx, cy = fx + fw / 2, fy + fh / 2
    region = image[int(max(cy - half, 0)) : int(cy + half), int(max(cx - half, 0)) : int(cx + half)]
    region = cv2.resize(region, None, fx=s, fy=s, interpolation=cv2.INTER_AREA)
    ox = int(round(centre[0] - (cx - max(cx - half, 0)) * s))
    oy = int(round(centre[1] - (cy - max(cy - half, 0)) * s))
    h, w = canvas.shape[:2]
    x0, y0 = max(ox, 0), max(oy, 0)
    x1, y1 = min(ox + region.shape[1], w), min(oy + region.shape[0], h)
    if x1 > x0 and y1 > y0:
        canvas[y0:y1, x0:x1] = region[y0 - oy : y1 - oy, x0 - ox : x1 - ox]
    return np.array([centre[0] - fw * s / 2, centre[1] - height / 2, fw * s, height])


def background(h=360, w=640):
    """A textured, face-free backdrop (the skimage coffee photograph, tiled)."""
    from skimage import data

    coffee = data.coffee()
    reps = (-(-h // coffee.shape[0]), -(-w // coffee.shape[1]), 1)
    return np.ascontiguousarray(np.tile(coffee, reps)[:h, :w])


def run_frames(stage, frames):
    frames = np.stack(frames)
    n, h, w = frames.shape[:3]
    info = VideoInfo("made.mp4", "made", 0, 0.0, w, h, 25.0, n, n / 25, 0, "h264", False)
    run = stage.open(info, Path("made.h5"))
    return run.process(Batch(0, np.arange(n) / 25.0, frames))


def inside(points, box, grow=0.0):
    x, y, w, h = box
    return (
        (points[:, 0] >= x - grow * w) & (points[:, 0] <= x + w * (1 + grow))
        & (points[:, 1] >= y - grow * h) & (points[:, 1] <= y + h * (1 + grow))
    )  # fmt: skip


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
        "landmarks": ((20, 70, 2), "f4"), "bbox": ((20, 4), "f4"), "score": ((20,), "f4"),
        "count": ((20,), "i4"), "mesh": ((20, 478, 3), "f2"), "valid": ((20,), "b1"),
    }  # fmt: skip
    assert face["valid"].all()
    assert (face["count"] == 1).all()
    assert (face["score"] > 0.5).all()
    # The box follows the face: 4 px right, 1 px down per frame.
    assert np.median(np.diff(face["bbox"][:, 0])) == pytest.approx(4, abs=1)
    assert np.median(np.diff(face["bbox"][:, 1])) == pytest.approx(1, abs=1)
    for t in (0, 19):
        lm = face["landmarks"][t]
        x, y, w, h = ASTRONAUT_FACE
        known = (x + 20 + 4 * t, y + 10 + t, w, h)  # the face's box in frame t
        assert inside(lm, known, grow=0.15).all()
        assert inside(lm[68:], face["bbox"][t]).all()  # pupils inside the 68-point box
        brows, eyes, nose, mouth = lm[17:27, 1].mean(), lm[36:48, 1].mean(), lm[30, 1], lm[48:68, 1].mean()
        assert brows < eyes < nose < mouth < lm[8, 1]  # chin lowest
        assert lm[36:42, 0].mean() < lm[42:48, 0].mean()  # subject's right eye on the image's left
        for pupil, eye in ((lm[68], lm[36:42]), (lm[69], lm[42:48])):
            assert np.linalg.norm(pupil - eye.mean(axis=0)) < 0.1 * w
        # Landmarks are read off the stored mesh.
        np.testing.assert_allclose(face["mesh"][t][list(MESH_TO_FACE70), :2], lm, atol=0.6)


def test_landmarks_agree_with_an_independent_68_point_detector(stage):
    from skimage import data

    reference = np.array(json.loads((DATA / "astronaut_ibug68.json").read_text())["points"], float)
    out = run_frames(stage, [data.astronaut()] * 3)
    assert out["valid"].all()
    ours = out["landmarks"][0, :68]
    iod = np.linalg.norm(reference[36:42].mean(0) - reference[42:48].mean(0))
    error = np.linalg.norm(ours - reference, axis=1) / iod
    assert error.mean() < 0.07, error.round(3)
    assert error.max() < 0.25, int(error.argmax())


@pytest.mark.parametrize("size, face_height", [((1080, 1920), 60), ((360, 640), 55)])
def test_small_face_in_a_wide_shot_is_found(stage, size, face_height):
    h, w = size
    frames, boxes = [], []
    for i in range(12):
        canvas = background(h, w)
        boxes.append(place_face(canvas, "astronaut", face_height, (w * 0.6 + 3 * i, h * 0.4 + i)))
        frames.append(canvas)
    out = run_frames(stage, frames)
    assert out["valid"].mean() >= 0.9, out["valid"]
    for t in np.flatnonzero(out["valid"]):
        assert inside(out["landmarks"][t, :68], boxes[t], grow=0.2).all()
        assert 0.7 * face_height < out["bbox"][t, 3] < 1.3 * face_height


def test_two_faces_are_counted_and_one_identity_is_followed(stage):
    # The astronaut starts as the more prominent face, then Grace Hopper grows larger;
    # the stage must keep following the astronaut and count both faces.
    frames, astronaut_boxes = [], []
    for i in range(20):
        canvas = background()
        astronaut_boxes.append(place_face(canvas, "astronaut", 110, (170 + i, 180)))
        place_face(canvas, "hopper", 70 + 5 * i, (470, 180))
        frames.append(canvas)
    out = run_frames(stage, frames)
    assert out["valid"].all()
    assert (out["count"] == 2).all(), out["count"]
    for t in range(20):
        assert inside(out["landmarks"][t, :68], astronaut_boxes[t], grow=0.15).all(), t


def test_frames_after_the_face_leaves_are_invalid_not_stale(stage):
    frames = [astronaut_frame(offset=(10, 20 + 2 * i)) for i in range(10)] + [background()] * 8
    frames += [astronaut_frame(offset=(10, 60))] * 4  # the face comes back
    out = run_frames(stage, frames)
    assert out["valid"][:10].all()
    assert not out["valid"][10:18].any()
    assert np.isnan(out["landmarks"][10:18]).all() and np.isnan(out["mesh"][10:18].astype(np.float32)).all()
    assert np.isnan(out["bbox"][10:18]).all() and np.isnan(out["score"][10:18]).all()
    assert (out["count"][10:18] == 0).all()
    assert out["valid"][18:].all()  # found again


def test_a_face_sliding_out_of_the_frame(stage):
    # 30 px per frame to the right; the face (100 px) has left the frame by frame 16.
    frames = []
    for i in range(20):
        canvas = background()
        place_face(canvas, "astronaut", 100, (220 + 30 * i, 180))
        frames.append(canvas)
    out = run_frames(stage, frames)
    assert out["valid"][:8].all()
    assert not out["valid"][16:].any()
    assert np.isnan(out["landmarks"][16:]).all()
    assert (np.diff(out["bbox"][out["valid"], 0]) > 0).all()  # never a repeated (stale) box


def test_bad_parameters_are_named():
    with pytest.raises(ValueError, match="face.backend"):
        FaceStage(FaceParams(backend="dlib"))
    with pytest.raises(ValueError, match="face.detect_every"):
        FaceStage(FaceParams(detect_every=0))
    with pytest.raises(ValueError, match="face.import_dir"):
        FaceStage(FaceParams(backend="openface"))
