"""The parts of the face stage on their own: the one-euro filter, the appearance
descriptors, the jaw model and its build script, and the face-accuracy benchmark's
reading of annotated faces."""

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest

from vidaffect.bench.face_accuracy import annotated_faces, measure_annotated, mirrored, read_pts
from vidaffect.bench.face_clips import MIRROR, background, photo, place_face
from vidaffect.errors import InputNotFound
from vidaffect.stages.appearance import EXEMPLARS, AppearanceModel, describe, distance
from vidaffect.stages.face_filter import MAX_GAP, FaceSmoother, OneEuro
from vidaffect.stages.face_tracker import FaceTracker
from vidaffect.stages.jaw import MODEL_FILE, JawMarcher, JawModel

ROOT = Path(__file__).parents[1]
DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="module")
def tracker():
    t = FaceTracker()
    yield t
    t.close()


def test_one_euro_step_matches_the_formula():
    # One point steps from 0 to 1 px after 40 ms, the face 1 px large, so its speed
    # is 25 face sizes/s.  The speed filter (1 Hz) gives a = 1 / (1 + 1 / (2 pi 0.04)).
    a_speed = 1 / (1 + 1 / (2 * math.pi * 1.0 * 0.04))
    for beta in (0.0, 3.0):
        cutoff = 1.0 + beta * a_speed * 25.0
        expected = 1 / (1 + 1 / (2 * math.pi * cutoff * 0.04))
        f = OneEuro(min_cutoff=1.0, beta=beta)
        assert f(np.zeros((1, 2)), 0.0, 1.0)[0, 0] == 0.0  # the first sample passes
        assert f(np.array([[1.0, 0.0]]), 0.04, 1.0)[0, 0] == pytest.approx(expected, rel=1e-12)
    assert expected == pytest.approx(0.8015, abs=1e-4)  # beta 3: the fast step mostly passes


def test_one_euro_restarts_after_a_gap_and_on_missing_input():
    f = OneEuro(1.0, 3.0)
    f(np.zeros((1, 2)), 0.0, 1.0)
    assert f(np.ones((1, 2)), MAX_GAP + 0.01, 1.0)[0, 0] == 1.0  # a long gap: restart
    assert np.isnan(f(np.full((1, 2), np.nan), MAX_GAP + 0.05, 1.0)).all()
    assert f(np.zeros((1, 2)), MAX_GAP + 0.09, 1.0)[0, 0] == 0.0  # after NaN: restart


def test_face_smoother_keeps_a_still_face_and_its_box():
    rng = np.random.default_rng(0)
    landmarks = rng.uniform(100, 200, (70, 2)).astype(np.float32)
    box = np.array([100, 100, 100, 100], np.float32)
    smoother = FaceSmoother(1.0, 3.0)
    for i in range(5):
        lm, bx = smoother(i / 25, landmarks, box)
    np.testing.assert_allclose(lm, landmarks, atol=1e-4)
    np.testing.assert_allclose(bx, box, atol=1e-4)


def test_appearance_tells_two_people_apart_and_knows_one_again(tracker):
    def look(name, height, centre):
        canvas = background()
        place_face(canvas, name, height, centre)
        tracker.reset()
        (face,) = tracker.step(canvas)
        return describe(canvas, face.mesh)

    astronaut, astronaut_small = look("astronaut", 110, (200, 170)), look("astronaut", 75, (450, 200))
    hopper = look("hopper", 110, (200, 170))
    same, different = distance(astronaut, astronaut_small), distance(astronaut, hopper)
    assert same < 1.0 < 2.0 < different  # 2 is the default re-identification threshold
    assert distance(astronaut, astronaut) == 0.0
    model = AppearanceModel()
    for _ in range(EXEMPLARS + 3):
        model.add(astronaut_small)
    model.add(hopper)
    assert len(model.exemplars) == EXEMPLARS  # bounded
    assert model.distance(astronaut) == pytest.approx(same)
    assert model.distance(hopper) == 0.0  # the most different look replaced a duplicate


def test_the_jaw_model_is_what_the_build_script_makes(tracker):
    spec = importlib.util.spec_from_file_location("build_jaw_model", ROOT / "scripts" / "build_jaw_model.py")
    assert spec is not None and spec.loader is not None
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    rebuilt, shipped = script.build(), JawModel.load()
    assert MODEL_FILE.stat().st_size < 20_000
    np.testing.assert_allclose(rebuilt.canonical, shipped.canonical, atol=1e-3)
    np.testing.assert_array_equal(rebuilt.offsets, shipped.offsets)
    # The jaw points they give on a face agree to a fraction of a pixel.
    tracker.reset()
    (face,) = tracker.step(photo("hopper" + MIRROR)[0])
    np.testing.assert_allclose(JawMarcher(rebuilt)(face.mesh), JawMarcher(shipped)(face.mesh), atol=0.5)


def test_annotated_faces_are_read_and_scored(tmp_path, tracker):
    import cv2
    from skimage import data

    points = np.array(json.loads((DATA / "astronaut_ibug68.json").read_text())["points"], float)
    cv2.imwrite(str(tmp_path / "astronaut.png"), cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR))
    body = "\n".join(f"{x + 1} {y + 1}" for x, y in points)  # .pts count pixels from 1
    (tmp_path / "astronaut.pts").write_text(f"version: 1\nn_points: 68\n{{\n{body}\n}}\n")
    (tmp_path / "broken.pts").write_text("version: 1\nn_points: 2\n{\n1 2\n3 4\n}\n")  # no image: skipped
    faces = annotated_faces(tmp_path)
    assert [f.name for f in faces] == ["astronaut"]
    np.testing.assert_allclose(faces[0].points, points + 0.5)  # pixel centres at .5
    flipped = mirrored(faces[0])
    assert flipped.points[36, 0] == pytest.approx(512 - faces[0].points[45, 0])  # right eye corner <- left
    result = measure_annotated(tracker, faces)
    assert set(result["annotated_faces"]) == {"astronaut", "astronaut (mirrored)"}
    assert result["nme_all"] < 0.04 and result["steadiness"] == 0.0
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputNotFound, match="no image with a 68-point"):
        annotated_faces(tmp_path / "empty")
    with pytest.raises(InputNotFound, match="no such folder"):
        annotated_faces(tmp_path / "missing")
    (tmp_path / "bad.pts").write_text("68 points, no braces")
    with pytest.raises(InputNotFound, match="not an iBUG .pts"):
        read_pts(tmp_path / "bad.pts")
