"""Data-parallel training (DDP) as users start it: `vidaffect train --devices 2 --device
cpu` runs two processes (gloo) on made stores, and must train as one process with the
same global batch does (2 x 4 windows = 1 x 8), with one process writing the run."""

import csv
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner
from media import tiny_recipe, write_annotation

from vidaffect.bench.media import write_store
from vidaffect.cli import main
from vidaffect.commands.train import train
from vidaffect.errors import ParameterError
from vidaffect.learn.checkpoint import read
from vidaffect.learn.loop import make_fabric

# Training losses computed over a batch as a whole (the CCC of the batch; the |mean| terms
# of noninertial-ext) are logged as the mean over each process's batches: 4 windows'
# CCC, not 8 windows', so they differ from the 1-process run's by the batch size.
BATCH_STATISTICS = ("train_ccc_loss", "train_noninertial_ext_loss")
FRAMES = 200  # 12 windows of 32 frames (hop 16, the last aligned to the end) per video


@pytest.fixture
def face_project(tmp_path):
    """Six face-mesh stores, every frame annotated: four to train on (48 windows, six
    global batches of 8) and two to validate on."""
    rng = np.random.default_rng(0)
    for i in range(6):
        mesh = rng.normal(0, 1, (FRAMES, 478, 3)).cumsum(axis=0) * 0.05
        box = np.c_[mesh[:, :, :2].min(axis=1), np.ptp(mesh[:, :, :2], axis=1)]
        write_store(tmp_path / "features" / f"f{i}.h5", {"face/mesh": mesh.astype(np.float16), "face/bbox": box.astype(np.float32)})
        labels = np.c_[np.tanh(mesh[:, 0, 1]), np.tanh(mesh[:, 1, 0])]
        write_annotation(tmp_path / ("val" if i >= 4 else "ann") / f"f{i}.txt", labels)
    return tmp_path


def cli(*args):
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "vidaffect", "-q", "train", *args], capture_output=True, text=True, timeout=300)
    print(f"{' '.join(args[:2])}...: {time.perf_counter() - started:.1f} s")
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def numbers(run):
    with open(run / "metrics.csv") as fh:
        return [{k: float(v) for k, v in row.items() if k != "seconds"} for row in csv.DictReader(fh)]


def written(run):
    """The run's files, TensorBoard event files counted rather than named."""
    files = sorted(str(p.relative_to(run)) for p in run.rglob("*") if p.is_file())
    events = [f for f in files if "tfevents" in f]
    return [f for f in files if f not in events], len(events)


def test_two_cpu_processes_train_as_one_with_the_same_global_batch_and_resume(face_project, tmp_path):
    # A network without BatchNorm or dropout (a transformer net's projection into an
    # LSTM head) and the MSE over fully annotated windows: the mean of the two
    # processes' gradients is then the gradient of the 8 windows together, so the
    # weights agree up to float rounding (summation order, the cores' threads).
    recipe = tiny_recipe(tmp_path)
    common = ["--net", "mesh-transformer", "--head", "lstm", "--loss", "mse", "--recipe", recipe, "--seq-len", "32",
              "--store", str(face_project / "features"), "--annotations", str(face_project / "ann"),
              "--val-annotations", str(face_project / "val"), "--device", "cpu", "--seed", "0"]  # fmt: skip
    ddp = tmp_path / "ddp"
    first = cli(*common, "--devices", "2", "--batch-size", "4", "--epochs", "1", "--out", str(ddp))
    assert first.stdout.count("run saved in") == 1 and "Traceback" not in first.stderr
    # continued on two processes, as a killed run would be
    cli("--resume", str(ddp), "--epochs", "2", "--device", "cpu", "--devices", "2")

    single = train(
        store=face_project / "features", annotations=face_project / "ann", val_annotations=face_project / "val",
        net="mesh-transformer", head="lstm", loss="mse", recipe=recipe, seq_len=32, batch_size=8, epochs=2,
        device="cpu", seed=0, out=tmp_path / "single", progress=False,
    )  # fmt: skip

    # process 0 alone wrote the run: one row per epoch, the files of a 1-process run,
    # and (when TensorBoard is installed) one event file per launch
    (files, events), (files_single, events_single) = written(ddp), written(single)
    assert files == files_single and events == 2 * events_single
    assert yaml.safe_load((ddp / "config.yaml").read_text())["processes"] == 2
    rows, rows_single = numbers(ddp), numbers(single)
    assert [r["epoch"] for r in rows] == [1, 2]
    for row, row_single in zip(rows, rows_single, strict=True):
        assert row.keys() == row_single.keys()
        different = {
            k: (row[k], row_single[k]) for k in row if k not in BATCH_STATISTICS and row[k] != pytest.approx(row_single[k], rel=1e-4, abs=1e-6)
        }
        assert not different, different
    weights, weights_single = read(ddp / "last.ckpt")["state_dict"], read(single / "last.ckpt")["state_dict"]
    for name, value in weights.items():
        torch.testing.assert_close(value, weights_single[name], rtol=1e-4, atol=1e-6)


def test_impossible_requests_are_one_line_errors(face_project, monkeypatch):
    args = ["train", "--store", str(face_project / "features"), "--annotations", str(face_project / "ann")]
    for name in ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "SLURM_NTASKS", "TORCHELASTIC_RUN_ID", "LSB_JOBID"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MASTER_ADDR", "10.0.0.1")
    result = CliRunner().invoke(main, [*args, "--device", "cpu", "--num-nodes", "2"])
    assert result.exit_code == 2 and "MASTER_PORT, NODE_RANK not set here" in result.output, result.output
    # one GPU seen, four asked for (PyTorch's answers stand in for a GPU machine)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    result = CliRunner().invoke(main, [*args, "--device", "cuda", "--devices", "4"])
    assert result.exit_code == 2 and "--devices 4: PyTorch sees 1 CUDA device(s) on this machine" in result.output, result.output
    with pytest.raises(ParameterError, match="cuda:0 is one GPU; for 2 GPUs use --device cuda --devices 2"):
        make_fabric("cuda:0", devices=2)
