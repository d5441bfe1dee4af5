"""Training, validation and predict run a video through a network in one way: for the
validation videos of a run, `vidaffect evaluate` on `vidaffect predict`'s CSV gives the
validation metrics the run logged for its best checkpoint, for every head."""

import csv
import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner
from media import tiny_recipe

from vidaffect.cli import main
from vidaffect.commands.train import train
from vidaffect.learn.checkpoint import load_model
from vidaffect.learn.heads import HEADS

SEQ = 16
TRAIN = ["c0", "c1", "c2", "c3", "c4", "c10"]  # c10: 12 frames, a padded training window
VAL = ["c5", "c6", "c11"]  # c6: annotation ends before the video; c11: 20 frames


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def folders(loud_project, tmp_path_factory):
    root = tmp_path_factory.mktemp("split")
    for part, vids in (("train", TRAIN), ("val", VAL)):
        (root / part).mkdir()
        for vid in vids:
            shutil.copy(loud_project / "all-annotations" / f"{vid}.txt", root / part / f"{vid}.txt")
    lines = (root / "val" / "c6.txt").read_text().splitlines()
    (root / "val" / "c6.txt").write_text("\n".join(lines[:151]) + "\n")  # 150 of 200 frames annotated
    return root


@pytest.mark.parametrize("head", HEADS)
def test_evaluate_on_predict_output_reproduces_the_logged_validation(loud_project, folders, tmp_path, head):
    run = train(
        store=loud_project / "features", annotations=folders / "train", val_annotations=folders / "val", out=tmp_path / "run",
        net="audio", head=head, seq_len=SEQ, batch_size=4, epochs=3, seed=0, device="cpu", progress=False,
        recipe=tiny_recipe(tmp_path),
    )  # fmt: skip
    with open(run / "metrics.csv") as fh:
        logged = [{k: float(v) for k, v in row.items() if v} for row in csv.DictReader(fh)]
    best = load_model(run / "best.ckpt")
    assert best.head == head and best.seq_len == SEQ
    best_row = next(r for r in logged if r["epoch"] == best.epoch)
    assert best_row["val_ccc_mean"] == max(r["val_ccc_mean"] for r in logged) == best.metrics["val_ccc_mean"]

    videos = [str(loud_project / "videos" / f"{vid}.mp4") for vid in VAL]
    runner = CliRunner()
    predicted = runner.invoke(
        main,
        ["-q", "predict", *videos, "--model", str(run / "best.ckpt"), "--store", str(loud_project / "features"),
         "--out", str(tmp_path / "val.csv"), "--device", "cpu"],
    )  # fmt: skip
    assert predicted.exit_code == 0, predicted.output
    assert "0 extracted now, 3 cached" in predicted.output  # the very stores validation read
    evaluated = runner.invoke(main, ["evaluate", str(tmp_path / "val.csv"), "--annotations", str(folders / "val"), "--json", str(tmp_path / "m.json")])
    assert evaluated.exit_code == 0, evaluated.output
    result = json.loads((tmp_path / "m.json").read_text())
    assert result["videos"] == 3 and result["frames"] == 195 + 145 + 15  # annotated frames: 5 unannotated at each start
    print(f"{head}: logged val_ccc_mean {best_row['val_ccc_mean']:.6f}, evaluate {result['abaw_score']:.6f}")
    assert result["abaw_score"] == pytest.approx(best_row["val_ccc_mean"], abs=1e-4)
    for dim in ("valence", "arousal"):
        for metric in ("ccc", "pcc", "rmse", "sagr"):
            assert result["pooled"][f"{dim}_{metric}"] == pytest.approx(best_row[f"val_{dim}_{metric}"], abs=1e-4)
            assert result["video_mean"][f"{dim}_{metric}"] == pytest.approx(best_row[f"val_video_{dim}_{metric}"], abs=1e-4)
    assert np.isfinite(best_row["val_noninertial_loss"])
