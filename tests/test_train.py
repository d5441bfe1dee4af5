"""Training on feature stores written with the extract engine's own store writer
(`vidaffect.bench.media.write_store`), where arousal follows the loudness of the audio."""

import csv
import logging
import shutil

import h5py
import numpy as np
import pytest
import torch
import yaml
from media import make_video

from vidaffect.bench.media import random_arrays, write_store
from vidaffect.commands.extract import extract
from vidaffect.commands.train import make_splits, resume, train
from vidaffect.io.annotations import read_annotation
from vidaffect.learn.checkpoint import check_store, describe, load_model
from vidaffect.learn.metrics import summarize
from vidaffect.learn.modalities import load_inputs

FRAMES = 240


@pytest.fixture(autouse=True)
def one_thread():
    """These models are tiny; one thread avoids losing time to thread contention on a
    busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def smooth(rng, n, scale):
    """A slowly varying signal in about [-scale, scale]."""
    knots = rng.uniform(-scale, scale, n // 30 + 2)
    return np.interp(np.arange(n), np.arange(len(knots)) * 30, knots)


def loud_video(rng, n=FRAMES):
    """Audio whose level (dB in every Mel band) rises with arousal, plus noise; valence
    unrelated to anything."""
    arousal = smooth(rng, n, 0.8)
    valence = smooth(rng, n, 0.8)
    spectrum = np.linspace(-20, -60, 128)  # a fixed spectral tilt
    mel = spectrum + 25 * arousal[:, None] + rng.normal(0, 3, (n, 128))
    return mel.astype(np.float32), np.c_[valence, arousal]


def write_annotation(path, labels, unannotated=()):
    """Aff-Wild2 style, -5 on the ``unannotated`` frames."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = labels.copy()
    rows[list(unannotated)] = -5
    np.savetxt(path, rows, delimiter=",", header="valence,arousal", comments="", fmt="%.4f")


@pytest.fixture
def project(tmp_path):
    """12 videos with audio (two with an audio gap), annotations with a few -5 frames."""
    rng = np.random.default_rng(0)
    for i in range(12):
        mel, labels = loud_video(rng)
        valid = np.ones(FRAMES, bool)
        if i % 5 == 0:
            valid[100:120] = False
            mel[100:120] = np.nan
        write_store(tmp_path / "features" / f"clip{i:02d}.h5", {"audio/mel": mel, "audio/valid": valid})
        write_annotation(tmp_path / "annotations" / f"clip{i:02d}.txt", labels, unannotated=range(0, 10))
    return tmp_path


FAST = dict(net="audio", loss="ccc", seq_len=32, batch_size=8, device="cpu", progress=False, lr=0.05)


def read_metrics(run):
    with open(run / "metrics.csv") as fh:
        return list(csv.DictReader(fh))


def make_loud_media(root, n_videos, rng, sr=22050, fps=25, n=200):
    """Videos whose audio is noise at a level (dB) that follows arousal; annotations
    with a random, unrelated valence."""
    for i in range(n_videos):
        arousal = smooth(rng, n, 0.8)
        gain = 10 ** ((30 * arousal - 30) / 20)
        per_sample = np.interp(np.arange(n * sr // fps) * fps / sr, np.arange(n), gain)
        audio = np.clip(rng.normal(0, 0.3, len(per_sample)) * per_sample, -1, 1).astype(np.float32)
        make_video(root / "videos" / f"c{i}.mp4", [np.full((32, 32, 3), 100, np.uint8)] * n, fps=fps, audio=audio, sr=sr)
        write_annotation(root / "all-annotations" / f"c{i}.txt", np.c_[smooth(rng, n, 0.8), arousal], unannotated=range(5))


def test_audio_net_learns_arousal_from_loudness_of_made_media(tmp_path):
    rng = np.random.default_rng(0)
    make_loud_media(tmp_path, 10, rng)
    summary = extract([tmp_path / "videos"], store=tmp_path / "features", stages=["mel"], device="cpu")
    assert summary.exit_code == 0
    held_out = ["c7", "c8", "c9"]  # neither trained nor validated on
    (tmp_path / "annotations").mkdir()
    for i in range(7):
        shutil.copy(tmp_path / "all-annotations" / f"c{i}.txt", tmp_path / "annotations" / f"c{i}.txt")
    run = train(
        store=tmp_path / "features", annotations=tmp_path / "annotations", out=tmp_path / "runs" / "a",
        net="audio", seq_len=32, batch_size=8, epochs=10, seed=0, val_split=0.3, device="cpu", progress=False,
    )  # recipe defaults otherwise: non-inertial loss, SGD lr 0.01
    loaded = load_model(run / "best.ckpt")
    per_video = {}
    for vid in held_out:
        with h5py.File(tmp_path / "features" / f"{vid}.h5") as h5:
            check_store(loaded, h5)
            features, _ = load_inputs(h5, loaded.modalities)
        with torch.no_grad():
            pred, _ = loaded.model(loaded.prepare(features))
        per_video[vid] = (pred[0].numpy(), read_annotation(tmp_path / "all-annotations" / f"{vid}.txt", len(features["mel"])))
    held = summarize(per_video)["pooled"]
    print(f"held-out arousal CCC {held['arousal_ccc']:.3f} (valence {held['valence_ccc']:.3f})")
    assert held["arousal_ccc"] >= 0.5
    assert abs(held["valence_ccc"]) < 0.3  # nothing to learn valence from


def test_every_epoch_logs_all_losses_and_metrics(project):
    run = train(store=project / "features", annotations=project / "annotations", out=project / "runs" / "m", epochs=2, seed=0, **FAST)
    rows = read_metrics(run)
    assert [r["epoch"] for r in rows] == ["1", "2"]
    for phase in ("train", "val"):
        for loss in ("mse", "ccc", "noninertial", "noninertial_ext"):
            assert np.isfinite(float(rows[-1][f"{phase}_{loss}_loss"]))
        for term in ("distance", "velocity", "direction"):
            assert f"{phase}_{term}" in rows[-1]
        for dim in ("valence", "arousal"):
            for metric in ("ccc", "pcc", "rmse", "mse", "sagr"):
                assert f"{phase}_{dim}_{metric}" in rows[-1] and f"{phase}_video_{dim}_{metric}" in rows[-1]
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["net"] == "audio" and config["momentum"] == 0.9 and config["seed"] == 0
    assert len(config["split"]["val"]) == 1 and not set(config["split"]["val"]) & set(config["split"]["train"])
    best = load_model(run / "best.ckpt")
    assert best.metrics["val_ccc_mean"] == max(float(r["val_ccc_mean"]) for r in rows)


def test_checkpoint_round_trip_and_wrong_shapes(project, tmp_path):
    run = train(store=project / "features", annotations=project / "annotations", out=tmp_path / "r", epochs=1, seed=3, **FAST)
    loaded = load_model(run / "last.ckpt")
    assert loaded.net == "audio" and loaded.modalities == ["mel"] and loaded.stages == ["mel"]
    assert not loaded.model.training
    with h5py.File(project / "features" / "clip05.h5") as h5:
        check_store(loaded, h5)
        features, valid = load_inputs(h5, loaded.modalities)
    assert features["mel"].shape == (FRAMES, 128) and valid["mel"].sum() == FRAMES - 20
    inputs = loaded.prepare(features)
    assert inputs["mel"].shape == (1, FRAMES, 128) and float(inputs["mel"].min()) >= 0 and float(inputs["mel"].max()) <= 1
    assert (inputs["mel"][0, 100:120] == 0).all()  # missing audio reads as zeros
    with torch.no_grad():
        whole, _ = loaded.model(inputs)
        # window by window with the LSTM state carried over gives the same answer
        first, state = loaded.model({"mel": inputs["mel"][:, :100]})
        second, _ = loaded.model({"mel": inputs["mel"][:, 100:]}, state)
        again, _ = load_model(run / "last.ckpt").model(inputs)
    torch.testing.assert_close(torch.cat([first, second], dim=1), whole)
    torch.testing.assert_close(again, whole)
    assert whole.abs().max() <= 1
    assert "network   audio" in describe(run / "last.ckpt")

    rng = np.random.default_rng(1)
    write_store(tmp_path / "other" / "x.h5", {"audio/mel": rng.normal(size=(50, 64)).astype(np.float32)})
    with h5py.File(tmp_path / "other" / "x.h5") as h5, pytest.raises(ValueError, match="64 values per frame.*trained on 128"):
        check_store(loaded, h5)
    write_store(tmp_path / "other" / "y.h5", {"pose/keypoints": rng.normal(size=(50, 18, 3)).astype(np.float32)})
    with h5py.File(tmp_path / "other" / "y.h5") as h5, pytest.raises(ValueError, match="--stages mel"):
        check_store(loaded, h5)
    (tmp_path / "junk.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="junk.ckpt"):
        load_model(tmp_path / "junk.ckpt")


def test_same_seed_same_metrics(project, tmp_path):
    a = train(store=project / "features", annotations=project / "annotations", out=tmp_path / "a", epochs=2, seed=7, **FAST)
    b = train(store=project / "features", annotations=project / "annotations", out=tmp_path / "b", epochs=2, seed=7, **FAST)
    drop = ("seconds",)
    rows_a = [{k: v for k, v in r.items() if k not in drop} for r in read_metrics(a)]
    rows_b = [{k: v for k, v in r.items() if k not in drop} for r in read_metrics(b)]
    assert rows_a == rows_b


def test_resumed_run_continues_exactly_where_it_stopped(project, tmp_path):
    common = dict(store=project / "features", annotations=project / "annotations", seed=3, **FAST)
    straight = train(out=tmp_path / "straight", epochs=4, **common)
    stopped = train(out=tmp_path / "stopped", epochs=2, **common)  # as if killed after epoch 2
    assert resume(stopped, epochs=4, device="cpu", progress=False) == stopped

    def numbers(run):
        return [{k: float(v) for k, v in r.items() if k != "seconds"} for r in read_metrics(run)]

    a, b = numbers(straight), numbers(stopped)
    assert [r["epoch"] for r in b] == [1, 2, 3, 4]
    for row_a, row_b in zip(a, b, strict=True):
        assert row_a.keys() == row_b.keys()
        assert all(row_a[k] == pytest.approx(row_b[k], rel=1e-5, abs=1e-7) for k in row_a), row_b["epoch"]
    assert load_model(stopped / "last.ckpt").epoch == 4
    # A finished run has nothing left to do.
    before = (stopped / "metrics.csv").read_text()
    resume(stopped, device="cpu", progress=False)
    assert (stopped / "metrics.csv").read_text() == before


def test_resume_continues_every_fold(project, tmp_path):
    root = train(store=project / "features", annotations=project / "annotations", out=tmp_path / "k", folds=2, epochs=1, seed=0, **FAST)
    (root / "folds.csv").unlink()
    resume(root, epochs=2, device="cpu", progress=False)
    for fold in ("fold-1", "fold-2"):
        assert [r["epoch"] for r in read_metrics(root / fold)] == ["1", "2"]
    with open(root / "folds.csv") as fh:
        assert [r["fold"] for r in csv.DictReader(fh)] == ["1", "2", "mean", "std"]


def test_resume_refuses_other_options_and_non_runs(project, tmp_path):
    from click.testing import CliRunner

    from vidaffect.cli import main

    result = CliRunner().invoke(main, ["train", "--resume", str(project), "--net", "pose"])
    assert result.exit_code == 2 and "drop --net" in result.output
    result = CliRunner().invoke(main, ["train", "--resume", str(project)])
    assert result.exit_code == 2 and "no config.yaml" in result.output


def test_k_fold_runs_and_summary(project, tmp_path):
    root = train(store=project / "features", annotations=project / "annotations", out=tmp_path / "k", folds=3, epochs=1, seed=0, **FAST)
    folds = sorted(p.name for p in root.iterdir() if p.is_dir())
    assert folds == ["fold-1", "fold-2", "fold-3"]
    held = []
    for fold in folds:
        assert (root / fold / "best.ckpt").is_file()
        held += yaml.safe_load((root / fold / "config.yaml").read_text())["split"]["val"]
    assert sorted(held) == [f"clip{i:02d}" for i in range(12)]  # every video validated exactly once
    with open(root / "folds.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["fold"] for r in rows] == ["1", "2", "3", "mean", "std"]


def test_splits_never_share_videos_or_subjects():
    ids = [f"v{i}" for i in range(10)]
    groups = {f"v{i}": f"s{i // 2}" for i in range(10)}  # two videos per subject
    for train_ids, val_ids in make_splits(ids, 0.1, 5, groups, seed=1):
        assert {groups[v] for v in train_ids}.isdisjoint({groups[v] for v in val_ids})
        assert len(val_ids) == 2
    (train_ids, val_ids), = make_splits(ids, 0.3, None, None, seed=1)
    assert len(val_ids) == 3 and sorted(train_ids + val_ids) == sorted(ids)
    with pytest.raises(ValueError, match="at least 11 videos"):
        make_splits(ids, 0.1, 11, None, seed=1)


def test_missing_stage_names_the_extract_command(project):
    with pytest.raises(ValueError, match=r"--net full needs embed, face, pose features.*vidaffect extract VIDEOS --store .*--stages embed,face,pose"):
        train(store=project / "features", annotations=project / "annotations", **{**FAST, "net": "full"}, epochs=1)


def test_random_encoder_features_warn(tmp_path, caplog):
    rng = np.random.default_rng(0)
    for i in range(3):
        arrays = random_arrays(64, rng)
        write_store(tmp_path / "f" / f"v{i}.h5", arrays, params={"embed": {"encoder": "resnet50", "weights": "random"}})
        write_annotation(tmp_path / "a" / f"v{i}.txt", rng.uniform(-1, 1, (64, 2)))
    with caplog.at_level(logging.WARNING):
        run = train(store=tmp_path / "f", annotations=tmp_path / "a", out=tmp_path / "r", **{**FAST, "net": "full"}, epochs=1, seed=0)
    assert "RANDOM (untrained) encoder" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        loaded = load_model(run / "best.ckpt")
    assert "RANDOM" in caplog.text
    assert loaded.stages == ["embed", "face", "pose", "mel"]
    assert loaded.dims == {"embed": 2048, "landmarks": 140, "pose": 36, "mel": 128}


def test_official_validation_set_and_other_stage_parameters(project, tmp_path, caplog):
    ann = project / "annotations"
    for i in range(12):
        part = "Validation_Set" if i >= 9 else "Train_Set"
        (ann / part).mkdir(exist_ok=True)
        (ann / f"clip{i:02d}.txt").rename(ann / part / f"clip{i:02d}.txt")
    run = train(
        store=project / "features", annotations=ann / "Train_Set", val_annotations=ann / "Validation_Set",
        out=tmp_path / "r", epochs=1, seed=0, **FAST,
    )
    split = yaml.safe_load((run / "config.yaml").read_text())["split"]
    assert split["val"] == ["clip09", "clip10", "clip11"] and len(split["train"]) == 9
    loaded = load_model(run / "best.ckpt")
    mel = np.random.default_rng(2).normal(size=(40, 128)).astype(np.float32)
    write_store(tmp_path / "other" / "z.h5", {"audio/mel": mel}, params={"mel": {"hop_length": 256}})
    with h5py.File(tmp_path / "other" / "z.h5") as h5, caplog.at_level(logging.WARNING):
        check_store(loaded, h5)
    assert "other parameters" in caplog.text and "hop_length: None -> 256" in caplog.text


def test_grouping_file(tmp_path, project):
    groups = tmp_path / "groups.csv"
    groups.write_text("video,subject\n" + "".join(f"clip{i:02d},s{i // 4}\n" for i in range(12)))
    run = train(store=project / "features", annotations=project / "annotations", groups=groups, out=tmp_path / "g", epochs=1, seed=0, val_split=0.3, **FAST)
    split = yaml.safe_load((run / "config.yaml").read_text())["split"]
    assert len(split["val"]) == 4  # one whole subject of three
    assert {int(v[4:]) // 4 for v in split["val"]}.isdisjoint({int(v[4:]) // 4 for v in split["train"]})
    (tmp_path / "bad.csv").write_text("a,b\n")
    with pytest.raises(ValueError, match="video,subject"):
        train(store=project / "features", annotations=project / "annotations", groups=tmp_path / "bad.csv", **FAST)
