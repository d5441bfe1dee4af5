"""Training on feature stores written with the extract engine's own store writer
(`vidaffect.bench.media.write_store`), where arousal follows the loudness of the audio."""

import csv
import logging
import shutil

import h5py
import numpy as np
import pytest
import yaml
from media import smooth, tiny_recipe, write_annotation

from vidaffect.bench.media import random_arrays, write_store
from vidaffect.commands.train import make_splits, resume, train
from vidaffect.io.annotations import read_annotation
from vidaffect.learn.checkpoint import check_store, describe, load_model
from vidaffect.learn.inference import predict_video
from vidaffect.learn.metrics import summarize
from vidaffect.learn.modalities import load_inputs

FRAMES = 240


pytestmark = pytest.mark.usefixtures("one_thread")


def loud_video(rng, n=FRAMES):
    """Audio whose level (dB in every Mel band) rises with arousal, plus noise; valence
    unrelated to anything."""
    arousal = smooth(rng, n, 0.8)
    valence = smooth(rng, n, 0.8)
    spectrum = np.linspace(-20, -60, 128)  # a fixed spectral tilt
    mel = spectrum + 25 * arousal[:, None] + rng.normal(0, 3, (n, 128))
    return mel.astype(np.float32), np.c_[valence, arousal]


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


def held_out_metrics(run, project, held_out):
    """Pooled metrics of the best checkpoint on videos neither trained nor validated on,
    predicted as `vidaffect predict` does."""
    loaded = load_model(run / "best.ckpt")
    per_video = {}
    for vid in held_out:
        pred = predict_video(loaded, project / "features" / f"{vid}.h5")
        per_video[vid] = (pred, read_annotation(project / "all-annotations" / f"{vid}.txt", len(pred)))
    return summarize(per_video)["pooled"]


@pytest.mark.parametrize(
    "head, tiny",
    [("lstm", False), ("transformer", True), ("gru-attention", True)],  # the thesis's sizes; tiny ones for the new heads
)
def test_audio_net_learns_arousal_from_loudness_of_made_media(loud_project, tmp_path, head, tiny):
    (tmp_path / "annotations").mkdir()
    for i in range(7):
        shutil.copy(loud_project / "all-annotations" / f"c{i}.txt", tmp_path / "annotations" / f"c{i}.txt")
    run = train(
        store=loud_project / "features", annotations=tmp_path / "annotations", out=tmp_path / "runs" / "a", net="audio",
        head=head, seq_len=32, batch_size=8, epochs=10, seed=0, val_split=0.3, device="cpu", progress=False,
        recipe=tiny_recipe(tmp_path) if tiny else None,
    )  # recipe defaults otherwise: non-inertial loss, SGD lr 0.01
    held = held_out_metrics(run, loud_project, ["c7", "c8", "c9"])
    print(f"--net audio --head {head}: held-out arousal CCC {held['arousal_ccc']:.3f} (valence {held['valence_ccc']:.3f})")
    assert held["arousal_ccc"] >= 0.5
    assert abs(held["valence_ccc"]) < 0.3  # nothing to learn valence from


def write_face_stores(root, n_videos, rng, n=200):
    """Stores of a face mesh whose mouth rises with valence (three people, each a small
    variation of one face), while the face wanders across the frame and grows and
    shrinks (60-200 px), so only the face-normalised geometry carries valence; arousal
    is random and unrelated.  Annotations in ``root/all/``."""
    base = rng.uniform(-0.5, 0.5, (478, 3))  # a face, in face widths
    people = [base + rng.normal(0, 0.03, base.shape) for _ in range(3)]
    mouth = rng.choice(478, 40, replace=False)
    for i in range(n_videos):
        valence = smooth(rng, n, 0.8)
        shape = np.repeat(people[i % 3][None], n, axis=0)
        shape[:, mouth, 1] -= 0.08 * valence[:, None]
        shape += rng.normal(0, 0.01, shape.shape)
        width = 60 + 140 * (0.5 + 0.5 * smooth(rng, n, 1.0))
        centre = np.c_[320 + 200 * smooth(rng, n, 1.0), 180 + 100 * smooth(rng, n, 1.0)]
        mesh = shape * width[:, None, None]
        mesh[..., :2] += centre[:, None]
        lo, hi = mesh[..., :2].min(axis=1), mesh[..., :2].max(axis=1)
        arrays = {"face/mesh": mesh.astype(np.float16), "face/bbox": np.c_[lo, hi - lo].astype(np.float32)}
        write_store(root / "features" / f"f{i}.h5", arrays)
        write_annotation(root / "all" / f"f{i}.txt", np.c_[valence, smooth(rng, n, 0.8)], unannotated=range(5))


def test_mesh_transformer_learns_valence_from_face_geometry(tmp_path):
    write_face_stores(tmp_path, 11, np.random.default_rng(0))
    (tmp_path / "ann").mkdir()
    for i in range(8):
        shutil.copy(tmp_path / "all" / f"f{i}.txt", tmp_path / "ann" / f"f{i}.txt")
    recipe = tiny_recipe(tmp_path, optimizer="adam", beta2=0.98, weight_decay=0.0)  # as thesis-transformer, at a test's lr
    run = train(
        store=tmp_path / "features", annotations=tmp_path / "ann", out=tmp_path / "run", net="mesh-transformer", loss="ccc",
        seq_len=32, batch_size=8, epochs=15, lr=1e-3, seed=0, val_split=0.25, device="cpu", progress=False, recipe=recipe,
    )  # fmt: skip
    loaded = load_model(run / "best.ckpt")
    assert (loaded.net, loaded.head, loaded.modalities) == ("mesh-transformer", "transformer", ["mesh", "face_box"])
    per_video = {}
    for vid in ("f8", "f9", "f10"):
        pred = predict_video(loaded, tmp_path / "features" / f"{vid}.h5")
        per_video[vid] = (pred, read_annotation(tmp_path / "all" / f"{vid}.txt", len(pred)))
    held = summarize(per_video)["pooled"]
    print(f"--net mesh-transformer: held-out valence CCC {held['valence_ccc']:.3f} (arousal {held['arousal_ccc']:.3f})")
    assert held["valence_ccc"] >= 0.5


def test_two_stores_of_one_source_video_are_refused(tmp_path, caplog):
    """`extract videos/` then `predict videos/test/` once made t00 and test/t00 from one
    file: training must not see that video twice (in training and validation)."""
    rng = np.random.default_rng(0)
    (tmp_path / "videos").mkdir()
    (tmp_path / "videos" / "t00.mp4").write_bytes(b"video")
    (tmp_path / "videos" / "same.mp4").symlink_to(tmp_path / "videos" / "t00.mp4")
    sources = {"t00": "t00.mp4", "test/t00": "t00.mp4", "t01": "t01.mp4", "t02": "t02.mp4", "t03": "same.mp4"}
    for vid, source in sources.items():
        path = write_store(tmp_path / "f" / f"{vid}.h5", {"audio/mel": rng.normal(size=(40, 128)).astype(np.float32)})
        with h5py.File(path, "r+") as h5:
            h5.attrs["path"] = str(tmp_path / "videos" / source)
    for vid in ("t00", "t01", "t02"):
        write_annotation(tmp_path / "a" / f"{vid}.txt", rng.uniform(-1, 1, (40, 2)))
    with pytest.raises(ValueError, match=r"2 annotated stores were made from the same video .*t00\.mp4: .*t00\.h5.*test/t00\.h5.*keep one store per source"):
        train(store=tmp_path / "f", annotations=tmp_path / "a", out=tmp_path / "r", epochs=1, **FAST)
    (tmp_path / "f" / "test" / "t00.h5").unlink()
    write_annotation(tmp_path / "a" / "t03.txt", rng.uniform(-1, 1, (40, 2)))  # t03's source is a link to t00's
    with pytest.raises(ValueError, match=r"same video .*t00\.h5.*t03\.h5"):
        train(store=tmp_path / "f", annotations=tmp_path / "a", out=tmp_path / "r", epochs=1, **FAST)
    (tmp_path / "a" / "t03.txt").unlink()
    run = train(store=tmp_path / "f", annotations=tmp_path / "a", out=tmp_path / "r", epochs=1, seed=0, val_split=0.3, **FAST)
    split = yaml.safe_load((run / "config.yaml").read_text())["split"]
    assert sorted(split["train"] + split["val"]) == ["t00", "t01", "t02"]


def test_multi_transformer_reads_pose_and_mel_only_when_every_store_has_them(tmp_path, caplog):
    rng = np.random.default_rng(0)
    for i in range(3):
        arrays = random_arrays(40, rng)
        if i == 2:
            del arrays["audio/mel"]
        write_store(tmp_path / "f" / f"v{i}.h5", arrays)
        write_annotation(tmp_path / "a" / f"v{i}.txt", rng.uniform(-1, 1, (40, 2)))
    common = dict(store=tmp_path / "f", annotations=tmp_path / "a", epochs=1, seed=0, recipe=tiny_recipe(tmp_path))
    with caplog.at_level(logging.INFO):
        run = train(out=tmp_path / "r", **{**FAST, "net": "multi-transformer", "seq_len": 16}, **common)
    assert "not reading mel, which not every store has" in caplog.text
    loaded = load_model(run / "best.ckpt")
    assert loaded.modalities == ["mesh", "face_box", "evm", "embed", "pose"] and loaded.stages == ["face", "evm", "embed", "pose"]
    assert loaded.model.head.project.in_features == 1434 + 4 + 2048 + 2048 + 36 + 4 + 18
    (tmp_path / "a" / "v2.txt").unlink()
    run = train(out=tmp_path / "r2", **{**FAST, "net": "multi-transformer", "seq_len": 16}, **common)
    assert load_model(run / "best.ckpt").modalities == ["mesh", "face_box", "evm", "embed", "pose", "mel"]


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
    inputs = loaded.prepare(features, valid)
    assert inputs["mel"].shape == (1, FRAMES, 129) and float(inputs["mel"].min()) >= 0 and float(inputs["mel"].max()) <= 1
    assert (inputs["mel"][0, 100:120] == 0).all()  # missing audio reads as zeros, validity flag 0
    assert (inputs["mel"][0, :100, -1] == 1).all()
    whole = predict_video(loaded, project / "features" / "clip05.h5")
    again = predict_video(load_model(run / "last.ckpt"), project / "features" / "clip05.h5")
    np.testing.assert_array_equal(again, whole)
    assert whole.shape == (FRAMES, 2) and np.abs(whole).max() <= 1
    assert "network   audio, head lstm" in describe(run / "last.ckpt")

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


def test_head_and_recipe_from_the_command_line(project, tmp_path):
    from click.testing import CliRunner

    from vidaffect.cli import main

    args = ["-q", "train", "--net", "audio", "--head", "gru", "--recipe", tiny_recipe(tmp_path, optimizer="adam"),
            "--store", str(project / "features"), "--annotations", str(project / "annotations"), "--epochs", "1",
            "--seq-len", "32", "--batch-size", "8", "--device", "cpu", "--seed", "0", "--out", str(tmp_path / "r")]  # fmt: skip
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    config = yaml.safe_load((tmp_path / "r" / "config.yaml").read_text())
    assert (config["head"], config["optimizer"], config["model"]["rnn_hidden"]) == ("gru", "adam", 16)
    info = CliRunner().invoke(main, ["info", str(tmp_path / "r" / "best.ckpt")])
    assert "network   audio, head gru (dropout 0.5, rnn_hidden 16)" in info.output and "mel 128 + validity 1" in info.output
    result = CliRunner().invoke(main, [*args[:5], "lstmm", *args[6:]])
    assert result.exit_code == 2 and "'lstmm' is not one of 'lstm', 'gru', 'gru-attention', 'transformer'" in result.output


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
    with pytest.raises(ValueError, match=r"--net multi-transformer needs face, evm, embed features.*--stages face,evm,embed"):
        train(store=project / "features", annotations=project / "annotations", **{**FAST, "net": "multi-transformer"}, epochs=1)


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


def test_audio_features_choose_what_the_audio_input_reads(project, tmp_path):
    """--audio-features egemaps reads the egemaps stage where the network reads mel,
    both reads the two in one layer, and stores without egemaps name the stage to extract."""
    from vidaffect.stages.smile import LLD_NAMES

    with pytest.raises(Exception, match=r"needs egemaps features .*--stages egemaps"):
        train(store=project / "features", annotations=project / "annotations", out=tmp_path / "none", audio_features="egemaps", epochs=1, **FAST)
    rng = np.random.default_rng(1)
    loudness = LLD_NAMES.index("Loudness_sma3")
    for path in sorted((project / "features").glob("*.h5")):
        with h5py.File(path, "r") as h5:
            mel, valid = h5["audio/mel"][:], h5["audio/valid"][:]
        lld = rng.normal(0, 1, (len(mel), len(LLD_NAMES))).astype(np.float32)
        lld[:, loudness] = mel.mean(axis=1)  # the loudness follows the level, as the Mel bands do
        write_store(path, {"audio/mel": mel, "audio/valid": valid, "egemaps/lld": lld, "egemaps/voiced": np.ones(len(mel), np.float32)})
    for choice, modalities in (("egemaps", ["egemaps"]), ("both", ["mel", "egemaps"])):
        run = train(store=project / "features", annotations=project / "annotations", out=tmp_path / choice, audio_features=choice, epochs=1, seed=0, **FAST)
        loaded = load_model(run / "best.ckpt")
        assert loaded.model.modalities == modalities
        assert yaml.safe_load((run / "config.yaml").read_text())["audio_features"] == choice
        assert loaded.model.layers["mel"].linear.in_features == sum(d + 1 for d in (loaded.model.dims[m] for m in modalities))
        pred = predict_video(loaded, project / "features" / "clip00.h5")
        assert pred.shape == (FRAMES, 2) and np.isfinite(pred).all()
