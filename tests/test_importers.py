"""Importing OpenFace CSVs and OpenPose JSON folders, from hand-made fixtures."""

import json
import logging
import os
from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner
from media import make_video, noise_frames

from vidaffect.cli import main
from vidaffect.commands.extract import extract
from vidaffect.io.video import VideoInfo
from vidaffect.stages.base import Batch
from vidaffect.stages.face import FaceParams, FaceStage
from vidaffect.stages.layouts import BODY25_TO_COCO18
from vidaffect.stages.openface import read_openface
from vidaffect.stages.openpose import read_openpose
from vidaffect.stages.pose import PoseParams, PoseStage

DATA = Path(__file__).parent / "data"
# A real 68-point face layout (pixels) to build rows from.
FACE68 = np.array(json.loads((DATA / "astronaut_ibug68.json").read_text())["points"], float)
RIGHT_EYE, LEFT_EYE = FACE68[36:42].mean(0), FACE68[42:48].mean(0)


def openface_csv(path, rows, eyes=True):
    """Write an OpenFace FeatureExtraction-style CSV (", "-separated header, extra
    columns around the ones vidaffect reads).  ``rows``: dicts with frame, face_id,
    timestamp, confidence, success, landmarks (68, 2) and optionally iris (2, 8, 2):
    OpenFace's first eye, then its second."""
    header = ["frame", "face_id", "timestamp", "confidence", "success", "gaze_0_x", "gaze_angle_x"]
    if eyes:
        header += [f"eye_lmk_x_{i}" for i in range(56)] + [f"eye_lmk_y_{i}" for i in range(56)]
        header += [f"eye_lmk_X_{i}" for i in range(56)]  # 3-D eye points: must not be mixed up
    header += ["pose_Tx"] + [f"x_{i}" for i in range(68)] + [f"y_{i}" for i in range(68)]
    header += [f"X_{i}" for i in range(68)] + ["p_scale", "AU01_r", "AU45_c"]
    lines = [", ".join(header)]
    for r in rows:
        values = [r["frame"], r.get("face_id", 0), r["timestamp"], r["confidence"], r["success"], 0.1, -0.2]
        if eyes:
            eye = np.full((56, 2), -1000.0)  # eyelid points: far away, must not be used
            eye[0:8], eye[28:36] = r["iris"][0], r["iris"][1]
            values += list(eye[:, 0]) + list(eye[:, 1]) + [9999.0] * 56
        lm = r["landmarks"]
        values += [5.0] + list(lm[:, 0]) + list(lm[:, 1]) + [7.0] * 68 + [1.5, 0.3, 1.0]
        lines.append(", ".join(f"{v:g}" for v in values))
    path.write_text("\n".join(lines) + "\n")
    return path


def iris_ring(centre, radius=3.0):
    angles = np.arange(8) * np.pi / 4
    return np.stack([centre[0] + radius * np.cos(angles), centre[1] + radius * np.sin(angles)], 1)


def face_row(frame, shift, confidence=0.95, success=1, fps=25.0, face_id=0):
    lm = FACE68 + shift
    # OpenFace's first eye here is the subject's LEFT one: the importer must assign it.
    return dict(frame=frame, face_id=face_id, timestamp=(frame - 1) / fps, confidence=confidence, success=success,
                landmarks=lm, iris=[iris_ring(LEFT_EYE + shift + (1, 0)), iris_ring(RIGHT_EYE + shift - (1, 0))])  # fmt: skip


def clip(media, name, n):
    return make_video(media / f"{name}.mp4", noise_frames(n), fps=25)


def read_group(path, group):
    with h5py.File(path, "r") as h5:
        return {k: h5[group][k][()] for k in h5[group]}, dict(h5[group].attrs)


def test_openface_csv_fills_the_face_datasets(media, tmp_path):
    imports = tmp_path / "openface"
    imports.mkdir()
    shifts = [np.array([2.0 * f, 1.0 * f]) for f in range(4)]
    rows = [face_row(f + 1, shifts[f], confidence=0.9 - 0.1 * f) for f in range(4)]
    rows[2]["success"] = 0  # OpenFace lost the face in frame 3 (index 2)
    openface_csv(imports / "talk.csv", rows)
    video = clip(media, "talk", 4)
    params = {"face": {"backend": "openface", "import_dir": str(imports)}}
    summary = extract([video], tmp_path / "f", stages=["face"], params=params)
    assert [r.status for r in summary.results] == ["done"], summary.report()
    face, attrs = read_group(tmp_path / "f" / "talk.h5", "face")

    assert face["valid"].tolist() == [True, True, False, True]
    assert face["count"].tolist() == [1, 1, 0, 1]
    np.testing.assert_allclose(face["score"], [0.9, 0.8, np.nan, 0.6], rtol=1e-6)
    for t in (0, 1, 3):
        expected = np.vstack([FACE68 + shifts[t], RIGHT_EYE + shifts[t] - (1, 0), LEFT_EYE + shifts[t] + (1, 0)])
        np.testing.assert_allclose(face["landmarks"][t], expected, atol=1e-4)
        lo, hi = (FACE68 + shifts[t]).min(0), (FACE68 + shifts[t]).max(0)
        np.testing.assert_allclose(face["bbox"][t], [*lo, *(hi - lo)], atol=1e-4)
    assert np.isnan(face["landmarks"][2]).all() and np.isnan(face["bbox"][2]).all()
    assert np.isnan(face["mesh"].astype(np.float32)).all()  # OpenFace has no dense mesh
    assert attrs["import_match"] == "index" and "note" not in attrs


def test_openface_without_eye_landmarks_has_nan_pupils(tmp_path):
    path = openface_csv(tmp_path / "a.csv", [face_row(1, np.zeros(2))], eyes=False)
    rows = read_openface(path).rows
    np.testing.assert_allclose(rows["landmarks"][0, :68], FACE68, atol=1e-4)
    assert np.isnan(rows["landmarks"][0, 68:]).all()


def test_openface_with_several_faces_follows_one(tmp_path):
    far = np.array([300.0, 0.0])
    rows = []
    for f in (1, 2, 3):
        # face 1 is the more confident in frame 1 only; it must still be followed.
        rows.append(face_row(f, np.zeros(2), confidence=0.6 if f == 1 else 0.99, face_id=0))
        rows.append(face_row(f, far, confidence=0.9, face_id=1))
    imported = read_openface(openface_csv(tmp_path / "two.csv", rows))
    assert imported.frames.tolist() == [0, 1, 2]
    assert imported.rows["count"].tolist() == [2, 2, 2]
    np.testing.assert_allclose(imported.rows["landmarks"][:, 0], np.tile(FACE68[0] + far, (3, 1)), atol=1e-4)


def test_fewer_imported_frames_than_decoded_leaves_the_rest_invalid(media, tmp_path, caplog):
    imports = tmp_path / "of"
    imports.mkdir()
    openface_csv(imports / "short.csv", [face_row(f, np.zeros(2)) for f in (1, 2, 3)])
    video = clip(media, "short", 5)
    params = {"face": {"backend": "openface", "import_dir": str(imports), "import_match": "index"}}
    with caplog.at_level(logging.WARNING, logger="vidaffect.importers"):
        summary = extract([video], tmp_path / "f", stages=["face"], params=params)
    assert summary.results[0].status == "done"
    face, attrs = read_group(tmp_path / "f" / "short.h5", "face")
    assert face["valid"].tolist() == [True, True, True, False, False]
    assert np.isnan(face["landmarks"][3:]).all()
    assert "has 3 frames, the decoded video 5" in caplog.text
    assert "2 frame(s) without an imported row are invalid" in attrs["note"]


def test_rows_at_another_frame_rate_are_matched_by_timestamp(media, tmp_path, caplog):
    # OpenFace ran on a 50 fps version: 12 rows for the 6 frames of the 25 fps video.
    imports = tmp_path / "of"
    imports.mkdir()
    rows = [face_row(f, np.array([10.0 * f, 0.0]), fps=50.0) for f in range(1, 13)]
    openface_csv(imports / "fast.csv", rows)
    video = clip(media, "fast", 6)
    with caplog.at_level(logging.WARNING, logger="vidaffect.importers"):
        extract([video], tmp_path / "f", stages=["face"], params={"face": {"backend": "openface", "import_dir": str(imports)}})
    face, attrs = read_group(tmp_path / "f" / "fast.h5", "face")
    assert attrs["import_match"] == "timestamp"
    assert face["valid"].all()
    # Frame t (t/25 s) takes the row at 2t/50 s, which is OpenFace frame 2t+1.
    np.testing.assert_allclose(face["landmarks"][:, 0, 0], FACE68[0, 0] + 10.0 * (2 * np.arange(6) + 1), atol=1e-3)
    assert "has 12 frames, the decoded video 6" in caplog.text and "6 imported row(s) were dropped" in caplog.text


def test_missing_or_malformed_imports_are_clear_errors(media, tmp_path):
    imports = tmp_path / "of"
    imports.mkdir()
    video = clip(media, "lonely", 3)
    params = {"face": {"backend": "openface", "import_dir": str(imports)}}
    result = extract([video], tmp_path / "f", stages=["face"], params=params).results[0]
    assert result.status == "failed"
    assert str(imports / "lonely.csv") in result.reason

    (imports / "lonely.csv").write_text("frame, success, confidence, x_0\n1, 1, 0.9, 3\n")
    result = extract([video], tmp_path / "f", stages=["face"], params=params).results[0]
    assert result.status == "failed" and "lonely.csv: not an OpenFace FeatureExtraction CSV" in result.reason

    with pytest.raises(ValueError, match="face.import_dir"):
        FaceStage(FaceParams(backend="openpose", import_dir=str(tmp_path / "nowhere")))


def test_openface_import_from_the_command_line(media, tmp_path):
    imports = tmp_path / "of"
    imports.mkdir()
    openface_csv(imports / "cli.csv", [face_row(f, np.zeros(2)) for f in (1, 2)])
    clip(media, "cli", 2)
    args = ["extract", str(media), "--store", str(tmp_path / "f"), "--stages", "face",
            "--set", "face.backend=openface", "--set", f"face.import_dir={imports}"]  # fmt: skip
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    face, _ = read_group(tmp_path / "f" / "cli.h5", "face")
    assert face["valid"].all()


# --- OpenPose -----------------------------------------------------------------------


def person(pose=None, face=None):
    return {"person_id": [-1], "pose_keypoints_2d": [] if pose is None else np.asarray(pose).ravel().tolist(),
            "face_keypoints_2d": [] if face is None else np.asarray(face).ravel().tolist()}  # fmt: skip


def write_openpose(folder, frames):
    """One ``<name>_<frame:012d>_keypoints.json`` per frame; ``frames``: {number: people}."""
    folder.mkdir(parents=True, exist_ok=True)
    for number, people in frames.items():
        (folder / f"{folder.name}_{number:012d}_keypoints.json").write_text(json.dumps({"version": 1.3, "people": people}))
    return folder


def body(n, origin, scale=1.0, confidence=0.8):
    """n keypoints (x, y, c) spread around ``origin``; point k at origin + scale*(k, 2k)."""
    k = np.arange(n)
    return np.stack([origin[0] + scale * k, origin[1] + 2 * scale * k, np.full(n, confidence)], 1)


def pose_run(folder, n, size=(640, 480), match="auto"):
    """The pose stage's run over an OpenPose import folder for an ``n``-frame video."""
    params = PoseParams(backend="openpose", import_dir=str(folder.parent))
    info = VideoInfo(str(folder) + ".mp4", folder.name, 0, 0.0, *size, 25.0, n, n / 25, 0, "h264", False,
                     decoded_timestamps=np.arange(n) / 25)  # fmt: skip
    return PoseStage(params).open(info, folder.parent / "x.h5")


def run_frames(run, n, faces=None):
    """Rows for frames 0..n-1, with the tracked face's box per frame (None: no face)."""
    inputs = {}
    if faces is not None:
        inputs = {"face/bbox": np.array([f if f is not None else [np.nan] * 4 for f in faces], np.float32),
                  "face/valid": np.array([f is not None for f in faces])}  # fmt: skip
    return run.process(Batch(0, np.arange(n) / 25, np.empty((n, 0, 0, 3), np.uint8), inputs))


def test_openpose_without_a_face_keeps_following_one_person(tmp_path):
    small_then_big = [body(18, (400, 50), scale=2 + 4 * f) for f in range(3)]
    followed = [body(18, (100 + 3 * f, 50), scale=5) for f in range(3)]
    followed[1][4] = (0, 0, 0)  # OpenPose did not find this wrist
    frames = {f: [person(pose=small_then_big[f]), person(pose=followed[f])] for f in range(3)}
    rows = run_frames(pose_run(write_openpose(tmp_path / "walk", frames), 3), 3)
    assert rows["valid"].all()
    for f in range(3):
        expected = followed[f].copy()
        if f == 1:
            expected[4] = (np.nan, np.nan, 0)
        np.testing.assert_allclose(rows["keypoints"][f], expected, atol=1e-4)


def body_with_nose_at(nose, confidence=0.8):
    kp = body(18, (nose[0] - 40, nose[1] + 60), scale=4, confidence=confidence)
    kp[0, :2] = nose
    return kp


def test_openpose_takes_the_person_of_the_tracked_face_with_the_keypoint_rules(tmp_path):
    # A big, confident person on the left and the tracked face's person on the right.
    other = body_with_nose_at((150, 100), confidence=0.95)
    tracked = body_with_nose_at((450, 120))
    tracked[4] = (700, 300, 0.9)  # a wrist beyond the 640 px frame: not there
    tracked[6] = (400, 300, 0.3)  # an elbow below the confidence threshold: not there
    folder = write_openpose(tmp_path / "two", {f: [person(pose=other * (1, 1, 1)), person(pose=tracked)] for f in range(3)})
    face = np.array([420.0, 90, 60, 60])  # the face stage's box around the right person's nose
    rows = run_frames(pose_run(folder, 3), 3, faces=[face, face, None])
    assert rows["valid"].tolist() == [True, True, True]
    expected = tracked.copy()
    expected[[4, 6]] = (np.nan, np.nan, 0)
    for f in range(3):  # frame 2 has no face: the person followed so far is kept
        np.testing.assert_allclose(rows["keypoints"][f], expected, atol=1e-4)

    run = pose_run(folder, 1)
    elsewhere = run_frames(run, 1, faces=[np.array([10.0, 400, 40, 40])])  # a face where nobody's head is
    assert not elsewhere["valid"].any() and run.attrs["frames_not_tracked_face"] == 1


def test_openpose_body25_is_mapped_to_coco18(tmp_path):
    b25 = body(25, (10, 20))
    b25[:, 0] = np.arange(25) + 100  # x tells the BODY_25 index
    imported = read_openpose(write_openpose(tmp_path / "b25", {0: [person(pose=b25)]}), "pose")
    coco = imported.people[0][0]
    assert (coco[:, 0] - 100).astype(int).tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18]
    assert list(BODY25_TO_COCO18) == (coco[:, 0] - 100).astype(int).tolist()


def test_openpose_face_keypoints_and_gaps_through_the_engine(media, tmp_path, caplog):
    face70 = np.vstack([np.c_[FACE68, np.full(68, 0.7)], [[*RIGHT_EYE, 0.5], [*LEFT_EYE, 0.5]]])
    other = face70 + (250, 0, 0)
    frames = {0: [person(pose=body_with_nose_at(FACE68[30]), face=face70), person(face=other)], 1: [person(face=face70)], 3: []}
    imports = tmp_path / "op"
    write_openpose(imports / "gap", frames)
    video = make_video(media / "gap.mp4", noise_frames(4, 480, 640), fps=25)
    params = {name: {"backend": "openpose", "import_dir": str(imports)} for name in ("face", "pose")}
    with caplog.at_level(logging.WARNING, logger="vidaffect.importers"):
        summary = extract([video], tmp_path / "f", stages=["face", "pose"], params=params)
    assert summary.results[0].status == "done", summary.report()
    face, _ = read_group(tmp_path / "f" / "gap.h5", "face")
    pose, pose_attrs = read_group(tmp_path / "f" / "gap.h5", "pose")
    assert face["valid"].tolist() == [True, True, False, False]  # frame 2 has no file, frame 3 nobody
    assert face["count"].tolist() == [2, 1, 0, 0]
    np.testing.assert_allclose(face["landmarks"][0], face70[:, :2], atol=1e-4)
    np.testing.assert_allclose(face["score"][:2], (68 * 0.7 + 2 * 0.5) / 70, rtol=1e-5)
    assert pose["valid"].tolist() == [True, False, False, False]
    assert "has 3 frames, the decoded video 4" in pose_attrs["note"]


def test_openpose_numbered_from_an_offset_and_without_the_keypoints_suffix(media, tmp_path):
    imports = tmp_path / "op"
    folder = imports / "late"
    folder.mkdir(parents=True)
    for k in range(6):  # --frame_first 100 on the longer video this clip was cut from
        kp = body_with_nose_at((300 + 10 * k, 100))
        (folder / f"frame{100 + k:06d}.json").write_text(json.dumps({"people": [person(pose=kp)]}))
    video = make_video(media / "late.mp4", noise_frames(6, 480, 640), fps=25)
    params = {"pose": {"backend": "openpose", "import_dir": str(imports)}}
    summary = extract([video], tmp_path / "f", stages=["pose"], params=params)
    assert summary.results[0].status == "done", summary.report()
    pose, attrs = read_group(tmp_path / "f" / "late.h5", "pose")
    assert pose["valid"].all() and attrs["import_offset"] == 100
    np.testing.assert_allclose(pose["keypoints"][:, 0, 0], 300 + 10 * np.arange(6))  # frame k took file k+100
    assert "numbered from 100" in attrs["note"]

    (folder / "frame000106.json").write_text(json.dumps({"people": []}))  # 7 files for 6 frames: no offset fits
    result = extract([video], tmp_path / "f", stages=["pose"], params=params).results[0]
    assert result.status == "failed"
    assert "pose: " in result.reason and "numbered 100..106 match only 0 of the 6 decoded frames" in result.reason


def test_a_failed_face_import_leaves_pose_stored(media, tmp_path):
    imports = tmp_path / "op"
    write_openpose(imports / "noface", {k: [person(pose=body_with_nose_at((300, 100)))] for k in range(3)})  # run without --face
    video = make_video(media / "noface.mp4", noise_frames(3, 480, 640), fps=25)
    args = ["-q", "extract", str(video), "--store", str(tmp_path / "f"), "--stages", "face,pose"]
    for stage in ("face", "pose"):
        args += ["--set", f"{stage}.backend=openpose", "--set", f"{stage}.import_dir={imports}"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1
    assert "face: " in result.output and "--face" in result.output and "(pose stored)" in result.output
    with h5py.File(tmp_path / "f" / "noface.h5") as h5:
        assert "face" not in h5
        assert h5["pose/valid"][()].all()
        assert "made without face" in h5["pose"].attrs["note"]
    result = CliRunner().invoke(main, args)
    assert "0 done, 0 skipped (up to date), 1 failed" in result.output  # pose is redone with the face, which fails again


def test_edited_imports_rerun_and_the_folder_is_stored_resolved(media, tmp_path, monkeypatch):
    imports = tmp_path / "of"
    imports.mkdir()
    csv_file = openface_csv(imports / "edit.csv", [face_row(f, np.zeros(2)) for f in (1, 2, 3)])
    video = clip(media, "edit", 3)
    store = tmp_path / "f"

    def run(import_dir):
        params = {"face": {"backend": "openface", "import_dir": str(import_dir)}}
        return extract([video], store, stages=["face"], params=params).results[0].status

    assert run(imports) == "done"
    monkeypatch.chdir(tmp_path)
    assert run("of") == "skipped"  # the same folder typed differently
    assert run(Path("of") / ".." / "of") == "skipped"
    openface_csv(csv_file, [face_row(f, np.array([5.0, 0.0])) for f in (1, 2, 3)])
    os.utime(csv_file, (1e9, 1e9))
    assert run(imports) == "done"
    face, attrs = read_group(store / "edit.h5", "face")
    np.testing.assert_allclose(face["landmarks"][0, 0], FACE68[0] + (5, 0), atol=1e-4)
    assert attrs["params"].count(str(imports.resolve())) == 1


def test_timestamps_that_are_not_video_time_fail_instead_of_matching_a_few_frames(media, tmp_path):
    # An OpenFace CSV of an image sequence: rows 1 ms apart, one row more than the video.
    imports = tmp_path / "of"
    imports.mkdir()
    rows = [face_row(f, np.zeros(2), fps=1000.0) for f in range(1, 12)]
    openface_csv(imports / "seq.csv", rows)
    video = clip(media, "seq", 10)

    def run(match):
        params = {"face": {"backend": "openface", "import_dir": str(imports), "import_match": match}}
        return extract([video], tmp_path / "f", stages=["face"], params=params, force=True).results[0]

    result = run("timestamp")
    assert result.status == "failed" and "match only 1 of the 10 decoded frames" in result.reason
    assert run("auto").status == "done"  # auto counts frames: frame k takes row k
    face, attrs = read_group(tmp_path / "f" / "seq.h5", "face")
    assert face["valid"].all() and attrs["import_match"] == "index"


def test_openpose_errors_name_the_file(tmp_path):
    bad = write_openpose(tmp_path / "bad", {0: [person(pose=body(15, (0, 0)))]})  # MPI-15: not supported
    with pytest.raises(ValueError, match=r"bad_000000000000_keypoints\.json: pose_keypoints_2d has 45 numbers"):
        read_openpose(bad, "pose")
    no_face = write_openpose(tmp_path / "noface", {0: [person(pose=body(18, (0, 0)))]})
    with pytest.raises(ValueError, match="--face"):
        read_openpose(no_face, "face")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no OpenPose"):
        read_openpose(tmp_path / "empty", "pose")
