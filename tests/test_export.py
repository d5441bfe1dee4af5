"""`vidaffect export` and `vidaffect.load`: tables with one row per frame; the OpenFace
CSV reads back through vidaffect's own OpenFace importer to the same landmarks; a
parquet file round-trips to what `load` gives."""

import h5py
import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from media import astronaut_frame, make_video, tone

import vidaffect
from vidaffect.cli import main
from vidaffect.commands.export import export
from vidaffect.commands.extract import extract
from vidaffect.io.openface_csv import WRITTEN, openface_columns


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A clip with a face in 6 frames and none in 2, extracted with face, head, gaze."""
    root = tmp_path_factory.mktemp("export")
    photo = astronaut_frame()
    blank = np.full_like(photo, 128)
    make_video(root / "videos" / "clip.mp4", [photo] * 3 + [blank] * 2 + [photo] * 3, audio=tone(0.32))
    summary = extract([root / "videos"], root / "features", ["face", "head", "gaze", "mel"])
    assert summary.exit_code == 0, summary.report()
    return root


def test_openface_csv_reimports_to_the_same_landmarks(project, tmp_path):
    summary = export(project / "features", "openface", tmp_path / "of")
    assert summary.exit_code == 0 and summary.written == [tmp_path / "of" / "clip.csv"]
    text = (tmp_path / "of" / "clip.csv").read_text().splitlines()
    header = text[0].split(",")
    assert header == list(WRITTEN) and len(header) == 267
    assert header == [c for c in openface_columns() if c in header]  # OpenFace's order
    assert len(text) == 1 + 8
    no_face = text[4].split(",")
    assert no_face[:5] == ["4", "0", "0.120", "0.00", "0"] and set(no_face[5:]) == {""}
    face = dict(zip(header, text[1].split(","), strict=True))
    assert face["success"] == "1" and len(face["x_0"].split(".")[1]) == 1 and len(face["pose_Rx"].split(".")[1]) == 3

    # vidaffect's own OpenFace importer reads it back
    reimport = extract(
        [project / "videos"], tmp_path / "imported", ["head"], params={"face": {"backend": "openface", "import_dir": str(tmp_path / "of")}}
    )
    assert reimport.exit_code == 0, reimport.report()
    with h5py.File(project / "features" / "clip.h5") as a, h5py.File(tmp_path / "imported" / "clip.h5") as b:
        valid = a["face/valid"][:]
        assert (b["face/valid"][:] == valid).all()
        la, lb = a["face/landmarks"][:], b["face/landmarks"][:]
        assert np.abs(la[valid, :68] - lb[valid, :68]).max() <= 0.05 + 1e-4  # one decimal
        assert np.abs(la[valid, 68:] - lb[valid, 68:]).max() <= 0.05 + 1e-4  # pupils: the centres of the exported iris contours
        assert np.isnan(lb[~valid]).all()
        # without a mesh the head pose comes from the 51 inner landmarks, close to the mesh's
        assert (b["head/valid"][:] == valid).all() and "inner landmarks" in b["head"].attrs["note"]
        assert np.abs(b["head/angles"][valid] - a["head/angles"][valid]).max() < 8
        pose = pd.read_csv(tmp_path / "of" / "clip.csv")
        assert np.allclose(pose["pose_Ry"][valid], np.radians(a["head/angles"][valid, 1]), atol=6e-4)


def test_openface_2_0_style_separates_fields_with_comma_space(project, tmp_path):
    export(project / "features", "openface", tmp_path / "of", stages=["face"], openface_style="2.0")
    lines = (tmp_path / "of" / "clip.csv").read_text().splitlines()
    assert lines[0].startswith("frame, face_id, timestamp, confidence, success, eye_lmk_x_0, ") and "pose_Rx" not in lines[0]
    table = pd.read_csv(tmp_path / "of" / "clip.csv", sep=", ", engine="python")
    assert len(table) == 8 and table["success"].tolist() == [1, 1, 1, 0, 0, 1, 1, 1]


def test_parquet_round_trip_and_load(project, tmp_path):
    table = vidaffect.load(project / "features" / "clip.h5")
    assert len(table) == 8 and list(table["frame"]) == list(range(8))
    assert table.attrs["video_id"] == "clip" and table.attrs["stages"]["head"]["depth_weight"] == 0.5
    with h5py.File(project / "features" / "clip.h5") as h5:
        assert np.array_equal(table["x_3"].to_numpy(), h5["face/landmarks"][:, 3, 0], equal_nan=True)
        assert np.array_equal(table["y_69"].to_numpy(), h5["face/landmarks"][:, 69, 1], equal_nan=True)
        assert np.array_equal(table["head_yaw"].to_numpy(), h5["head/angles"][:, 1], equal_nan=True)
        assert np.array_equal(table["mesh_z_1"].to_numpy(), h5["face/mesh"][:, 1, 2].astype(np.float32), equal_nan=True)
        assert table["face_valid"].dtype == bool and (table["face_valid"].to_numpy() == h5["face/valid"][:]).all()
    gaze = [c for c in table.columns if c.startswith("gaze_")]
    assert gaze == ["gaze_0_x", "gaze_0_y", "gaze_0_z", "gaze_1_x", "gaze_1_y", "gaze_1_z", "gaze_angle_x_deg", "gaze_angle_y_deg", "gaze_valid"]

    assert export(project / "features", "parquet", tmp_path / "pq").exit_code == 0
    back = pd.read_parquet(tmp_path / "pq" / "clip.parquet")
    pd.testing.assert_frame_equal(back, table, check_like=False)
    arrays = vidaffect.load_arrays(project / "features" / "clip.h5", ["head"])
    assert set(arrays) == {"frames/timestamp", "head/angles", "head/translation", "head/scale", "head/origin", "head/residual", "head/valid"}


def test_csv_has_one_row_per_frame_with_named_columns(project, tmp_path):
    assert export(project / "features" / "clip.h5", "csv", tmp_path / "csv", stages=["face", "mel"]).exit_code == 0
    table = pd.read_csv(tmp_path / "csv" / "clip.csv")
    assert len(table) == 8 and list(table.columns[:4]) == ["frame", "timestamp", "x_0", "x_1"]
    assert "mel_127" in table and "head_yaw" not in table
    assert table["face_valid"].tolist() == [1, 1, 1, 0, 0, 1, 1, 1]
    assert table["x_0"][3:5].isna().all() and table["timestamp"][1] == pytest.approx(0.04)


def test_a_missing_stage_names_the_extract_command(project, tmp_path):
    result = CliRunner().invoke(main, ["export", str(project / "features" / "clip.h5"), "--format", "csv", "--out", str(tmp_path), "--stages", "egemaps"])
    assert result.exit_code == 2
    assert "no egemaps stage" in result.output and "vidaffect extract VIDEOS --store" in result.output and "--stages egemaps" in result.output
    assert not list(tmp_path.glob("*.csv*"))
    result = CliRunner().invoke(main, ["export", str(project / "features"), "--format", "csv", "--out", str(tmp_path), "--stages", "heads"])
    assert result.exit_code == 2 and "unknown stage(s) heads" in result.output
