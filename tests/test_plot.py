"""`vidaffect plot`: PNG files with the prediction (and annotation) actually drawn."""

import struct

import numpy as np
from click.testing import CliRunner
from matplotlib.image import imread

from vidaffect.cli import main
from vidaffect.commands.plot import ANNOTATION_COLOR, DPI, NO_FACE_COLOR, PLANE_SIZE, PREDICTION_COLOR, TIME_SIZE, plot
from vidaffect.io.predictions import CsvWriter

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
N = 200


def png_size(path):
    """(width, height) from the IHDR chunk, which must come first."""
    head = path.read_bytes()[:24]
    assert head[:8] == PNG_SIGNATURE and head[12:16] == b"IHDR"
    return struct.unpack(">II", head[16:24])


def pixels_of(image, color, tol=0.03):
    """How many pixels have (about) this colour; ``color`` as '#rrggbb' or a grey level."""
    rgb = np.full(3, float(color)) if not color.startswith("#") else np.array([int(color[i : i + 2], 16) / 255 for i in (1, 3, 5)])
    return int((np.abs(image[..., :3] - rgb) < tol).all(axis=-1).sum())


def make_predictions(tmp_path):
    t = np.arange(N) / 25
    writer = CsvWriter(tmp_path / "r.csv")
    with writer.video("talk") as write:
        pred = np.c_[0.6 * np.sin(t), 0.4 * np.cos(0.5 * t)]
        face = np.ones(N, bool)
        face[80:120] = False
        write(0, t, pred, face)
    with writer.video("folder/other") as write:
        write(0, t, np.c_[-0.3 * np.ones(N), np.linspace(-0.5, 0.5, N)], None)
    writer.close()
    ann = tmp_path / "ann"
    ann.mkdir()
    rows = np.c_[0.5 * np.sin(t + 0.3), 0.3 * np.cos(0.5 * t)]
    rows[:10] = -5
    np.savetxt(ann / "talk.txt", rows, delimiter=",", header="valence,arousal", comments="", fmt="%.4f")
    return tmp_path / "r.csv", ann


def test_figures_are_png_of_the_right_size_with_the_curves_drawn(tmp_path):
    csv_path, ann = make_predictions(tmp_path)
    paths = plot(csv_path, annotations=ann, out=tmp_path / "plots")
    names = sorted(p.relative_to(tmp_path / "plots").as_posix() for p in paths)
    assert names == ["folder/other.time.png", "folder/other.va.png", "talk.time.png", "talk.va.png"]
    for p in paths:
        expected = TIME_SIZE if p.name.endswith(".time.png") else PLANE_SIZE
        assert png_size(p) == (int(expected[0] * DPI), int(expected[1] * DPI))
    talk = imread(tmp_path / "plots" / "talk.time.png")
    other = imread(tmp_path / "plots" / "folder" / "other.time.png")
    assert talk.shape[:2] == (int(TIME_SIZE[1] * DPI), int(TIME_SIZE[0] * DPI))
    assert pixels_of(talk, PREDICTION_COLOR) > 500 and pixels_of(other, PREDICTION_COLOR) > 500
    assert pixels_of(talk, ANNOTATION_COLOR) > 500  # the annotated video shows its annotation
    assert pixels_of(other, ANNOTATION_COLOR) < 50  # (only the legend swatch could be that colour)
    assert pixels_of(talk, NO_FACE_COLOR, tol=0.01) > 2000  # frames 80-119 had no face
    assert pixels_of(other, NO_FACE_COLOR, tol=0.01) < 100
    plane = imread(tmp_path / "plots" / "talk.va.png")
    assert pixels_of(plane, ANNOTATION_COLOR, tol=0.25) > 100


def test_without_annotations_and_from_the_cli(tmp_path):
    csv_path, _ = make_predictions(tmp_path)
    result = CliRunner().invoke(main, ["plot", str(csv_path), "--out", str(tmp_path / "p")])
    assert result.exit_code == 0, result.output
    assert "wrote 4 figure(s)" in result.output
    image = imread(tmp_path / "p" / "talk.time.png")
    assert pixels_of(image, ANNOTATION_COLOR) < 50
