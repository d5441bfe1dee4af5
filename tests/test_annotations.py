import logging

import numpy as np
import pytest

from vidaffect.io.annotations import AnnotationIndex, read_annotation


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_affwild2_text_with_unannotated_frames(tmp_path):
    p = write(tmp_path / "v.txt", "valence,arousal\n0.5,-0.25\n-5,-5\n-0.1,0.9\n")
    labels = read_annotation(p)
    assert labels.dtype == np.float32 and labels.shape == (3, 2)
    np.testing.assert_allclose(labels[[0, 2]], [[0.5, -0.25], [-0.1, 0.9]])
    assert np.isnan(labels[1]).all()


def test_csv_with_frame_numbers(tmp_path):
    p = write(tmp_path / "v.csv", "frame,valence,arousal\n0,0.1,0.2\n3,-0.3,0.4\n2,-5,0.5\n")
    labels = read_annotation(p)
    assert labels.shape == (4, 2)
    np.testing.assert_allclose(labels[0], [0.1, 0.2])
    np.testing.assert_allclose(labels[3], [-0.3, 0.4])
    assert np.isnan(labels[1]).all() and np.isnan(labels[2]).all()  # not listed; -5
    # against a 6-frame video the tail is unannotated, and no warning is due
    assert read_annotation(p, 6).shape == (6, 2)


def test_length_mismatch_warns_and_keeps_common_frames(tmp_path, caplog):
    p = write(tmp_path / "v.txt", "valence,arousal\n" + "0.1,0.1\n" * 5)
    with caplog.at_level(logging.WARNING):
        labels = read_annotation(p, 3)
    assert labels.shape == (3, 2)
    assert "5 annotation lines but the video has 3 frames" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert read_annotation(p, 8).shape == (5, 2)
    assert "using the first 5" in caplog.text
    q = write(tmp_path / "w.csv", "frame,valence,arousal\n9,0.1,0.1\n")
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert read_annotation(q, 4).shape == (4, 2)
    assert "past the end" in caplog.text


@pytest.mark.parametrize(
    "text, message",
    [
        ("v,a\n0.1,0.2\n", "header"),
        ("valence,arousal\n0.1,1.5\n", "line 2.*outside"),
        ("valence,arousal\n0.1,oops\n", "v.txt"),
        ("frame,valence,arousal\n0,0.1,0.1\n0,0.2,0.2\n", "frame 0 appears more than once"),
    ],
)
def test_bad_files_are_clear_errors(tmp_path, text, message):
    with pytest.raises(ValueError, match=message):
        read_annotation(write(tmp_path / "v.txt", text))


def test_lookup_direct_nested_and_ambiguous(tmp_path):
    root = tmp_path / "ann"
    write(root / "sub" / "clip.txt", "valence,arousal\n0,0\n")  # mirrors the video folder
    write(root / "Train_Set" / "video5.txt", "valence,arousal\n0,0\n")  # Aff-Wild2 layout
    write(root / "Train_Set" / "dup.txt", "valence,arousal\n0,0\n")
    write(root / "Validation_Set" / "dup.csv", "frame,valence,arousal\n0,0,0\n")
    index = AnnotationIndex(root)
    assert index.find("sub/clip") == root / "sub" / "clip.txt"
    assert index.find("video5") == root / "Train_Set" / "video5.txt"
    assert index.find("other/video5") == root / "Train_Set" / "video5.txt"
    assert index.find("nothing") is None
    with pytest.raises(ValueError, match="ambiguous.*dup"):
        index.find("dup")


def test_none_found_says_where_it_looked(tmp_path):
    root = tmp_path / "ann"
    write(root / "x.txt", "valence,arousal\n0,0\n")
    with pytest.raises(ValueError, match=r"no annotations for any of the 2 video\(s\) in .*ann.*a/b\.txt.*b\.txt anywhere"):
        AnnotationIndex(root).find_all(["a/b", "c"])
    with pytest.raises(FileNotFoundError, match="does not exist"):
        AnnotationIndex(tmp_path / "missing")


def test_two_person_videos_have_left_and_right_files(tmp_path):
    (tmp_path / "Train_Set").mkdir()
    for name in ("10-60-1280x720_left", "10-60-1280x720_right", "solo", "half_left"):
        (tmp_path / "Train_Set" / f"{name}.txt").write_text("valence,arousal\n0.1,0.2\n")
    index = AnnotationIndex(tmp_path)
    sides = index.find_sides("10-60-1280x720")
    assert {k: p.name for k, p in sides.items()} == {"left": "10-60-1280x720_left.txt", "right": "10-60-1280x720_right.txt"}
    assert index.find("10-60-1280x720") is None  # not a one-person video
    assert index.find_sides("solo") == {}
    with pytest.raises(ValueError, match="half_left.txt: the left person's annotation has no right counterpart"):
        index.find_sides("half")
