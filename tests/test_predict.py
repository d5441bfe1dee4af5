"""`vidaffect predict` on made media with a model trained here (audio network on Mel
features of made clips; a full network on synthetic stores for the face column and the
random-encoder warning)."""

import csv
import logging
import os
import shutil

import h5py
import numpy as np
import pytest
from click.testing import CliRunner
from media import astronaut_frame, make_video, noise_frames, tone, write_annotation

from vidaffect.bench.media import random_arrays, write_store
from vidaffect.cli import main
from vidaffect.commands.extract import extract
from vidaffect.commands.predict import predict
from vidaffect.commands.train import train
from vidaffect.io.annotations import read_annotation
from vidaffect.io.predictions import COLUMNS, CsvWriter, read_predictions
from vidaffect.learn.checkpoint import load_model
from vidaffect.learn.inference import predict_video
from vidaffect.learn.runs import find_best as find_model

FPS = 25
LENGTHS = {"c0": 40, "c1": 55, "c2": 70, "sub/c3": 130}  # video id -> frames
SILENT = 30  # frames of a clip without an audio track


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """videos/ (four clips with audio, one in a sub-folder, one silent clip),
    annotations/ for the four, features/ with Mel stores, and runs/audio/best.ckpt: an
    audio network trained for one epoch."""
    root = tmp_path_factory.mktemp("project")
    rng = np.random.default_rng(0)
    for i, (vid, n) in enumerate(LENGTHS.items()):
        level = np.interp(np.arange(int(n / FPS * 22050)), [0, n / FPS * 22050], rng.uniform(0.02, 0.5, 2))
        make_video(root / "videos" / f"{vid}.mp4", noise_frames(n, 32, 32, seed=i), fps=FPS, audio=tone(n / FPS, amplitude=level))
        labels = np.clip(np.cumsum(rng.normal(0, 0.05, (n, 2)), axis=0), -1, 1)
        write_annotation(root / "annotations" / f"{vid.split('/')[-1]}.txt", labels, unannotated=range(3))
    make_video(root / "videos" / "silent.mp4", noise_frames(SILENT, 32, 32, seed=9), fps=FPS)
    assert extract([root / "videos"], root / "features", stages=["mel"], device="cpu").exit_code == 0
    train(
        store=root / "features", annotations=root / "annotations", out=root / "runs" / "audio", net="audio", loss="ccc",
        seq_len=16, batch_size=4, epochs=1, seed=0, device="cpu", progress=False,
    )
    return root


def read_rows(path):
    with open(path, newline="") as fh:
        reader = csv.reader(fh)
        assert tuple(next(reader)) == COLUMNS
        return list(reader)


def test_csv_has_one_ordered_row_per_decoded_frame(project, monkeypatch):
    monkeypatch.chdir(project)  # the newest runs/*/best.ckpt is found from here
    summary = predict(["videos"], out="results.csv", device="cpu")
    assert summary.exit_code == 0 and not summary.failed, summary.report()
    assert "predicted 5 video(s)" in summary.report() and "0 extracted now, 5 cached" in summary.report()
    rows = read_rows(project / "results.csv")
    expected = {**LENGTHS, "silent": SILENT}
    assert [r[0] for r in rows] == [vid for vid in sorted(expected) for _ in range(expected[vid])]
    loaded = load_model(project / "runs" / "audio" / "best.ckpt")
    for vid, n in expected.items():
        mine = [r for r in rows if r[0] == vid]
        assert [int(r[1]) for r in mine] == list(range(n))
        with h5py.File(project / "features" / f"{vid}.h5") as h5:
            np.testing.assert_allclose([float(r[2]) for r in mine], h5["frames/timestamp"][()], atol=1e-6)
        values = np.array([[float(r[3]), float(r[4])] for r in mine])
        assert np.abs(values).max() <= 1
        assert all(len(r[2].split(".")[1]) == 6 and len(r[3].split(".")[1]) == 6 for r in mine)  # fixed decimals
        # the written values are the network's output on that video (to the six decimals)
        np.testing.assert_allclose(values, predict_video(loaded, project / "features" / f"{vid}.h5"), atol=2e-6)
        assert all(r[5] == "" for r in mine)  # Mel-only stores know nothing about faces
    silent = np.array([[float(r[3]), float(r[4])] for r in rows if r[0] == "silent"])
    assert np.isfinite(silent).all()  # no audio at all: still one prediction per frame


def test_affwild2_files_read_back(project, tmp_path):
    ckpt = project / "runs" / "audio" / "best.ckpt"
    csv_summary = predict([project / "videos"], out=tmp_path / "r.csv", model=ckpt, store=project / "features", device="cpu")
    summary = predict([project / "videos"], out=tmp_path / "aw", fmt="affwild2", model=ckpt, store=project / "features", device="cpu")
    assert summary.exit_code == 0 == csv_summary.exit_code
    files = sorted(p.relative_to(tmp_path / "aw").as_posix() for p in (tmp_path / "aw").rglob("*") if p.is_file())
    assert files == ["c0.txt", "c1.txt", "c2.txt", "silent.txt", "sub/c3.txt"]
    from_csv = read_predictions(tmp_path / "r.csv")
    from_folder = read_predictions(tmp_path / "aw")
    assert set(from_folder) == set(from_csv)
    for vid, p in from_folder.items():
        text = (tmp_path / "aw" / f"{vid}.txt").read_text().splitlines()
        assert text[0] == "valence,arousal" and len(text) == 1 + len(from_csv[vid])
        np.testing.assert_allclose(p.values, from_csv[vid].values, atol=1e-7)  # float32 via the annotation reader
        # an ABAW file is read like an Aff-Wild2 annotation file
        np.testing.assert_allclose(read_annotation(tmp_path / "aw" / f"{vid}.txt"), p.values, atol=1e-6)
    with pytest.raises(ValueError, match="folder"):
        predict([project / "videos"], out=tmp_path / "x.csv", fmt="affwild2", model=ckpt, store=project / "features", device="cpu")


def test_store_with_other_parameters_is_recomputed_to_match_the_model(project, tmp_path):
    store = tmp_path / "f"
    clip = project / "videos" / "c1.mp4"
    extract([clip], store, stages=["mel"], params={"mel": {"n_mels": 64, "fmax": 4000.0}}, device="cpu")
    loaded = load_model(project / "runs" / "audio" / "best.ckpt")
    summary = predict([clip], out=tmp_path / "r.csv", model=loaded.path, store=store, device="cpu")
    assert summary.exit_code == 0 and "1 extracted now" in summary.report()
    with h5py.File(store / "c1.h5") as h5:
        assert h5["audio"].attrs["params_hash"] == loaded.provenance["mel"]["params_hash"]
        assert h5["audio/mel"].shape == (LENGTHS["c1"], 128)
    values = read_predictions(tmp_path / "r.csv")["c1"].values
    np.testing.assert_allclose(values, predict_video(loaded, project / "features" / "c1.h5"), atol=2e-6)


def test_bad_inputs_are_listed_and_the_batch_goes_on(project, tmp_path, media):
    shutil.copy(project / "videos" / "c0.mp4", media / "good.mp4")
    (media / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + os.urandom(2000))
    (media / "empty.mp4").write_bytes(b"")
    runner = CliRunner()
    result = runner.invoke(
        main,
        ["-q", "predict", str(media), str(tmp_path / "missing.mp4"), "--out", str(tmp_path / "r.csv"),
         "--model", str(project / "runs" / "audio" / "best.ckpt"), "--store", str(tmp_path / "f"), "--device", "cpu"],
    )
    assert result.exit_code == 1, result.output
    assert "predicted 1 video(s)" in result.output and "3 failed" in result.output
    for name in ("broken.mp4", "empty.mp4", "missing.mp4"):
        assert any(name in line and "FAILED" in line for line in result.output.splitlines()), result.output
    assert "Traceback" not in result.output
    assert {r[0] for r in read_rows(tmp_path / "r.csv")} == {"good"}


def test_a_video_that_fails_half_way_leaves_no_rows(tmp_path):
    writer = CsvWriter(tmp_path / "r.csv")
    pred = np.zeros((3, 2), np.float32)
    with writer.video("a") as write:
        write(0, np.arange(3) / 25, pred, None)
    with pytest.raises(RuntimeError), writer.video("b") as write:
        write(0, np.arange(3) / 25, pred, np.ones(3, bool))
        raise RuntimeError("the store broke")
    with writer.video("c") as write:
        write(0, np.arange(3) / 25, pred + 0.5, np.array([1, 0, 1], bool))
    assert not (tmp_path / "r.csv").exists()  # published only on close
    writer.close()
    rows = read_rows(tmp_path / "r.csv")
    assert [r[0] for r in rows] == ["a"] * 3 + ["c"] * 3
    assert [r[5] for r in rows] == ["", "", "", "1", "0", "1"]
    assert rows[3][3:5] == ["0.500000", "0.500000"]


def test_newest_checkpoint_is_found_and_missing_one_is_explained(project, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"vidaffect train.*--model"):
        find_model()
    result = CliRunner().invoke(main, ["predict", str(project / "videos")])
    assert result.exit_code == 2 and "vidaffect train" in result.output
    ckpt = project / "runs" / "audio" / "best.ckpt"
    for place, mtime in [("runs/a/best.ckpt", 1e9), ("runs/k/fold-2/best.ckpt", 1e9 + 200), ("runs/b/best.ckpt", 1e9 + 100)]:
        (tmp_path / place).parent.mkdir(parents=True)
        shutil.copy(ckpt, tmp_path / place)
        os.utime(tmp_path / place, (mtime, mtime))
    assert find_model().as_posix() == "runs/k/fold-2/best.ckpt"


def test_full_network_face_column_and_random_encoder_warning(tmp_path, media, caplog):
    """A full network trained on stores from a random encoder: predict extracts every
    stage it needs (face, pose, embed with the recorded random weights, mel), warns
    loudly, predicts frames without a face too, and the face column is face/valid."""
    rng = np.random.default_rng(0)
    for i in range(3):
        write_store(tmp_path / "train" / f"v{i}.h5", random_arrays(48, rng), params={"embed": {"encoder": "resnet50", "weights": "random"}})
        write_annotation(tmp_path / "ann" / f"v{i}.txt", rng.uniform(-1, 1, (48, 2)))
    run = train(
        store=tmp_path / "train", annotations=tmp_path / "ann", out=tmp_path / "run", net="full", loss="mse",
        seq_len=16, batch_size=4, epochs=1, seed=0, device="cpu", progress=False,
    )
    face, grey = astronaut_frame((240, 320)), np.full((240, 320, 3), 128, np.uint8)
    frames = [face] * 5 + [grey] * 4 + [face] * 5
    make_video(media / "astro.mp4", frames, fps=FPS, audio=tone(len(frames) / FPS))
    with caplog.at_level(logging.WARNING):
        summary = predict([media], out=tmp_path / "r.csv", model=run / "best.ckpt", store=tmp_path / "f", device="cpu")
    assert summary.exit_code == 0, summary.report()
    assert "RANDOM (untrained) encoder" in caplog.text  # loading the model and checking the store
    assert "other parameters" in caplog.text  # the synthetic training stores recorded none usable
    rows = read_rows(tmp_path / "r.csv")
    assert len(rows) == len(frames)
    with h5py.File(tmp_path / "f" / "astro.h5") as h5:
        assert h5["embed"].attrs["params"].count('"random"') == 1
        valid = h5["face/valid"][()]
    assert [int(r[5]) for r in rows] == valid.astype(int).tolist()
    assert valid[:5].all() and not valid[5:9].any()  # the test media has frames with and without a face
    values = np.array([[float(r[3]), float(r[4])] for r in rows])
    assert np.isfinite(values).all() and np.abs(values).max() <= 1


def test_predicting_a_sub_folder_reuses_the_stores_of_the_whole_folder(project, tmp_path):
    before = sorted(p.relative_to(project / "features").as_posix() for p in (project / "features").rglob("*.h5"))
    ckpt = project / "runs" / "audio" / "best.ckpt"
    summary = predict([project / "videos" / "sub"], out=tmp_path / "r.csv", model=ckpt, store=project / "features", device="cpu")
    assert summary.exit_code == 0 and summary.extracted == 0 and summary.cached == 1, summary.report()
    assert {r[0] for r in read_rows(tmp_path / "r.csv")} == {"sub/c3"}  # the id the store has
    after = sorted(p.relative_to(project / "features").as_posix() for p in (project / "features").rglob("*.h5"))
    assert after == before  # no second store (c3.h5) of the same video
