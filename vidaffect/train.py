"""`vidaffect train`: fit a fusion network on feature stores and annotations.

The flow, top to bottom:

1. hyper-parameters: the recipe's ``train:`` section, overridden by the arguments;
2. videos: every store in ``store`` with an annotation file (``annotations``, and
   ``val_annotations`` for an official validation set), checked for the stages the
   network needs;
3. splits by video, or by subject with a grouping file, never by frame: one
   validation split, an official validation set, or K folds;
4. per split, :func:`fit`: normalisation statistics from the training videos, then
   epochs of SGD over shuffled windows, every loss and metric logged on train and
   validation, ``best.ckpt`` (validation CCC mean) and ``last.ckpt``,
   ReduceLROnPlateau and early stopping on the same number.

Lightning Fabric places the model and batches on the device and, with several GPUs,
runs data-parallel (DDP: each GPU gets ``batch_size`` windows per step; every process
validates on the whole validation set so they agree on the schedule and on stopping;
training metrics are those of process 0's share).
"""

from __future__ import annotations

import csv
import importlib.util
import json
import logging
import math
import os
import random
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from datetime import datetime
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
import yaml
from lightning.fabric import Fabric
from lightning.fabric.loggers import CSVLogger, TensorBoardLogger
from lightning.fabric.utilities.seed import seed_everything
from torch.utils.data import DataLoader

from vidaffect import __version__
from vidaffect.annotations import AnnotationIndex, read_annotation
from vidaffect.checkpoint import random_encoder, read, save, stage_provenance
from vidaffect.dataset import (
    VideoData,
    WindowDataset,
    compute_stats,
    feature_dim,
    frame_count,
    missing_stages,
    stages_for,
)
from vidaffect.losses import LOSSES, get_loss, noninertial_terms
from vidaffect.metrics import summarize
from vidaffect.networks import NETWORKS, AffectNet, net_modalities
from vidaffect.progress import progress_bar
from vidaffect.recipe import load_recipe
from vidaffect.store import list_stores

log = logging.getLogger(__name__)

GPU_WORKERS = 4  # default DataLoader processes when training on a GPU


@dataclass
class Hyper:
    """Training hyper-parameters; their defaults live in the recipe's ``train:`` section."""

    net: str
    loss: str
    optimizer: str
    lr: float
    momentum: float
    weight_decay: float
    plateau_patience: int  # epochs without improvement before the learning rate drops 10x
    early_stopping: int  # epochs without improvement before training stops
    epochs: int
    batch_size: int  # windows per step (per GPU under DDP)
    seq_len: int  # frames per window
    val_split: float  # fraction of videos (or subjects) held out

    def __post_init__(self) -> None:
        for f in fields(self):
            setattr(self, f.name, {"str": str, "float": float, "int": int}[f.type](getattr(self, f.name)))
        if self.net not in NETWORKS:
            raise ValueError(f"unknown network {self.net!r}; choose one of: {', '.join(NETWORKS)}")
        get_loss(self.loss)
        if self.optimizer != "sgd":
            raise ValueError(f"optimizer {self.optimizer!r} is not supported; use sgd")
        if not 0 <= self.val_split < 1:
            raise ValueError(f"val_split must be in [0, 1), got {self.val_split}")


def resolve_hyper(recipe: str | Path | None, overrides: dict[str, Any]) -> Hyper:
    """The default recipe's ``train:`` section, then ``recipe``'s, then ``overrides``
    (None values ignored)."""
    merged = dict(load_recipe(None)["train"])
    if recipe:
        merged.update(load_recipe(recipe)["train"])
    merged.update({k: v for k, v in overrides.items() if v is not None})
    known = {f.name for f in fields(Hyper)}
    unknown = sorted(set(merged) - known)
    if unknown:
        raise ValueError(f"unknown training option(s) {', '.join(unknown)} in the recipe; known: {', '.join(sorted(known))}")
    missing = sorted(known - set(merged))
    if missing:
        raise ValueError(f"the recipe's train: section lacks {', '.join(missing)}")
    return Hyper(**merged)


def make_fabric(device: str = "auto", single: bool = False) -> Fabric:
    """Fabric for ``device`` ("auto", "cpu", "cuda", "cuda:N"): every visible GPU with
    DDP for "auto"/"cuda" when there are several (one when ``single``)."""
    from vidaffect.extract import resolve_device

    device = resolve_device(device)
    # Values decaying into the denormal range (LSTM gradients do) make x86 CPU
    # arithmetic an order of magnitude slower; training gains nothing from them.
    torch.set_flush_denormal(True)
    if device == "cpu":
        return Fabric(accelerator="cpu", devices=1)
    if ":" in device:
        return Fabric(accelerator="cuda", devices=[int(device.split(":", 1)[1])])
    n = 1 if single else torch.cuda.device_count()
    return Fabric(accelerator="cuda", devices=n, strategy="ddp" if n > 1 else "auto")


# ---------------------------------------------------------------------------------------
# videos and splits


@dataclass
class Pool:
    """The annotated videos found, with what the checkpoint must remember about them."""

    train: list[VideoData]
    val: list[VideoData]  # from --val-annotations, else empty
    dims: dict[str, int]
    provenance: dict[str, dict[str, Any]]


def gather(store: Path, annotations: Path, val_annotations: Path | None, net: str) -> Pool:
    """Stores with annotations, checked for the stages ``net`` needs and for equal
    feature sizes; annotations read and cut to the video's frames."""
    stores = list_stores(store)
    modalities = net_modalities(net)
    stages = stages_for(modalities)
    if not stores:
        raise ValueError(f"no feature stores in {store}; run `vidaffect extract VIDEOS --store {store} --stages {','.join(stages)}`")
    found = AnnotationIndex(annotations).find_all(list(stores))
    val_found = AnnotationIndex(val_annotations).find_all(list(stores)) if val_annotations else {}
    overlap = set(found) & set(val_found)
    if overlap:
        log.warning("%d video(s) have annotations in both folders; they are used for validation only", len(overlap))
    pool = Pool([], [], {}, {})
    lacking: dict[str, list[str]] = {}
    hashes: dict[str, set[str]] = {}
    for vid in sorted(set(found) | set(val_found)):
        with h5py.File(stores[vid], "r") as h5:
            missing = missing_stages(h5, modalities)
            if missing:
                for stage in missing:
                    lacking.setdefault(stage, []).append(vid)
                continue
            dims = {m: feature_dim(h5, m) for m in modalities}
            if pool.dims and dims != pool.dims:
                raise ValueError(f"{stores[vid]}: feature sizes {dims} differ from other stores' {pool.dims}; re-extract with one recipe")
            pool.dims = dims
            prov = stage_provenance(h5, stages)
            pool.provenance = pool.provenance or prov
            for stage, p in prov.items():
                hashes.setdefault(stage, set()).add(p["params_hash"])
            n = frame_count(h5)
        path = val_found.get(vid) or found[vid]
        video = VideoData(vid, stores[vid], read_annotation(path, n))
        if not np.isfinite(video.labels).all(axis=1).any():
            log.warning("%s: no annotated frame within the video's %d frames; not used", path, n)
            continue
        (pool.val if vid in val_found else pool.train).append(video)
    if lacking:
        stages_needed = sorted(lacking, key=stages.index)
        example = lacking[stages_needed[0]][0]
        raise ValueError(
            f"--net {net} needs {', '.join(stages_needed)} features that {max(map(len, lacking.values()))} store(s) in "
            f"{store} lack (e.g. {stores[example]}); run `vidaffect extract VIDEOS --store {store} --stages {','.join(stages_needed)}`"
        )
    for stage, variants in hashes.items():
        if len(variants) > 1:
            log.warning("the stores hold %s features made with %d different parameter sets; mixing them may hurt", stage, len(variants))
    if not pool.train:
        raise ValueError(f"no annotated training videos: stores in {store}, annotations in {annotations}")
    return pool


def read_groups(path: str | Path) -> dict[str, str]:
    """A ``video,subject`` CSV (header line first) -> {video id: subject}."""
    with open(path, newline="", encoding="utf-8-sig") as fh:
        rows = list(csv.reader(fh))
    if not rows or [c.strip().lower() for c in rows[0][:2]] != ["video", "subject"]:
        raise ValueError(f"{path}: expected a CSV with the header 'video,subject'")
    out = {}
    for line, row in enumerate(rows[1:], start=2):
        if len(row) < 2 or not row[0].strip():
            raise ValueError(f"{path}: line {line}: expected video,subject")
        out[row[0].strip()] = row[1].strip()
    return out


def make_splits(
    video_ids: list[str], val_split: float, folds: int | None, groups: dict[str, str] | None, seed: int
) -> list[tuple[list[str], list[str]]]:
    """(train ids, validation ids) per run.  Whole videos, or whole subjects when
    ``groups`` maps videos to subjects (videos it does not list are their own
    subject), shuffled with ``seed``; K folds or one ``val_split`` hold-out."""
    groups = groups or {}
    unit_of = {v: groups.get(v, v) for v in video_ids}
    units = sorted(set(unit_of.values()))
    random.Random(seed).shuffle(units)
    what = "subjects" if groups else "videos"
    if folds:
        if folds > len(units):
            raise ValueError(f"--folds {folds} needs at least {folds} {what}, found {len(units)}")
        held = [set(part) for part in np.array_split(np.array(units, dtype=object), folds)]
    elif val_split > 0:
        n_val = max(1, round(val_split * len(units)))
        if n_val >= len(units):
            raise ValueError(f"--val-split {val_split} leaves no training {what} out of {len(units)}")
        held = [set(units[:n_val])]
    else:
        held = [set()]
    return [([v for v in video_ids if unit_of[v] not in h], [v for v in video_ids if unit_of[v] in h]) for h in held]


# ---------------------------------------------------------------------------------------
# the loop


def train_step(
    fabric: Fabric, model: torch.nn.Module, batch: dict, loss_fn: Callable, optimizer: torch.optim.Optimizer
) -> tuple[torch.Tensor, torch.Tensor]:
    """One SGD step on a batch of windows; returns the prediction and the loss."""
    pred, _ = model(batch["inputs"])
    loss = loss_fn(pred, batch["target"], batch["mask"])
    optimizer.zero_grad(set_to_none=True)
    fabric.backward(loss)
    optimizer.step()
    return pred, loss


def run_epoch(
    fabric: Fabric,
    model: torch.nn.Module,
    loader: DataLoader,
    videos: list[VideoData],
    loss_fn: Callable,
    optimizer: torch.optim.Optimizer | None,
    progress: bool,
    desc: str,
) -> dict[str, float]:
    """Train (``optimizer`` given) or evaluate over ``loader``.  Returns every loss of
    :data:`vidaffect.losses.LOSSES` (``mse_loss``, ..., ``noninertial_ext_loss``) and
    the non-inertial terms (``distance``, ``velocity``, ``direction``) (averaged over batches,
    weighted by annotated frames), the pooled metrics (``valence_ccc``, ...) and the
    per-video means (``video_valence_ccc``, ...)."""
    model.train(optimizer is not None)
    sums: dict[str, torch.Tensor] = {}
    frames = 0
    collected: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
    with progress_bar(len(loader), desc, "batch", progress, position=1) as bar:
        for batch in loader:
            if optimizer is not None:
                pred, loss = train_step(fabric, model, batch, loss_fn, optimizer)
            else:
                with torch.no_grad():
                    pred, _ = model(batch["inputs"])
            pred, target, mask = pred.detach(), batch["target"], batch["mask"]
            n = int(mask.sum())
            terms = {f"{name.replace('-', '_')}_loss": fn(pred, target, mask) for name, fn in LOSSES.items()}
            terms.update(noninertial_terms(pred, target, mask))
            for name, value in terms.items():
                sums[name] = sums.get(name, 0.0) + value * n
            frames += n
            video = batch["video"][:, None].expand(mask.shape)
            collected.append((video[mask], pred[mask], target[mask]))
            bar.update()
    row = {name: float(total) / max(frames, 1) for name, total in sums.items()}
    video, pred, target = (torch.cat(parts).cpu().numpy() for parts in zip(*collected, strict=True))
    per_video = {videos[i].video_id: (pred[video == i], target[video == i]) for i in np.unique(video)}
    summary = summarize(per_video)
    row.update(summary["pooled"])
    row.update({f"video_{k}": v for k, v in summary["video_mean"].items()})
    return row


def fit(
    fabric: Fabric,
    hyper: Hyper,
    train_videos: list[VideoData],
    val_videos: list[VideoData],
    pool: Pool,
    run_dir: Path,
    config: dict[str, Any],
    seed: int,
    workers: int = 0,
    progress: bool = False,
    last: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Train one model; writes ``run_dir``/{config.yaml, metrics.csv, best.ckpt,
    last.ckpt} and returns the best epoch's row.  ``last`` (a ``last.ckpt`` read back)
    continues an interrupted run after its last finished epoch."""
    seed_everything(seed, workers=True, verbose=False)
    modalities = net_modalities(hyper.net)
    stats = compute_stats([v.store for v in train_videos], modalities)
    net = AffectNet(hyper.net, pool.dims)
    optimizer = torch.optim.SGD(net.parameters(), lr=hyper.lr, momentum=hyper.momentum, weight_decay=hyper.weight_decay)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="max", patience=hyper.plateau_patience)
    first, best_score, best_row, stale, history = 1, -math.inf, {}, 0, []
    if last is not None:
        net.load_state_dict(last["state_dict"])
        optimizer.load_state_dict(last["resume"]["optimizer"])
        scheduler.load_state_dict(last["resume"]["scheduler"])
        first, best_score, stale = last["epoch"] + 1, last["resume"]["best_score"], last["resume"]["stale"]
        torch.set_rng_state(last["resume"]["torch_rng"])
        history = [row for row in read_metrics(run_dir) if row["epoch"] < first]  # the logger rewrites the file
        best_row = next(row for row in history if row["epoch"] == last["resume"]["best_epoch"])
    model, optimizer = fabric.setup(net, optimizer)

    def loader(data: WindowDataset, shuffle: bool) -> DataLoader:
        dl = DataLoader(data, batch_size=hyper.batch_size, shuffle=shuffle, num_workers=workers, persistent_workers=workers > 0)
        return fabric.setup_dataloaders(dl, use_distributed_sampler=shuffle)

    datasets = [WindowDataset(videos, modalities, stats, hyper.seq_len) for videos in (train_videos, val_videos)]
    train_loader = loader(datasets[0], shuffle=True)
    val_loader = loader(datasets[1], shuffle=False) if val_videos else None
    monitor = "val_ccc_mean" if val_videos else "train_ccc_mean"
    if not val_videos:
        log.warning("no validation videos: best.ckpt is chosen by the training CCC")
    loss_fn = get_loss(hyper.loss)
    loggers = []
    if fabric.is_global_zero:
        run_dir.mkdir(parents=True, exist_ok=True)
        loggers.append(CSVLogger(run_dir, name="", version=""))
        if importlib.util.find_spec("tensorboard") is not None:
            loggers.append(TensorBoardLogger(run_dir, name="tensorboard", version=""))
        with warnings.catch_warnings():
            if history:  # resuming: the old rows are logged again just below
                warnings.filterwarnings("ignore", message="Experiment logs directory")
            for logger in loggers:
                logger.experiment  # noqa: B018 - creates the log files before config.yaml joins them
        (run_dir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        for row in history:
            loggers[0].log_metrics(row, step=row["epoch"])

    with progress_bar(hyper.epochs, f"training {run_dir.name}", "epoch", progress and fabric.is_global_zero, initial=first - 1) as bar:
        for epoch in range(first, hyper.epochs + 1):
            started = time.perf_counter()
            batches = progress and fabric.is_global_zero
            row: dict[str, Any] = {"epoch": epoch, "lr": optimizer.param_groups[0]["lr"]}
            for k, v in run_epoch(fabric, model, train_loader, train_videos, loss_fn, optimizer, batches, "train").items():
                row[f"train_{k}"] = v
            if val_loader is not None:
                for k, v in run_epoch(fabric, model, val_loader, val_videos, loss_fn, None, batches, "validate").items():
                    row[f"val_{k}"] = v
            row["seconds"] = time.perf_counter() - started
            # every process decides on the same number, so they stop together under DDP
            score = fabric.broadcast(row[monitor] if math.isfinite(row[monitor]) else -math.inf)
            improved = score > best_score or not best_row
            if improved:
                best_score, best_row, stale = score, row, 0
            else:
                stale += 1
            scheduler.step(score if math.isfinite(score) else -1.0)
            metrics = {k: v for k, v in row.items() if k.startswith("val_" if val_videos else "train_")}
            if fabric.is_global_zero:
                for logger in loggers:
                    logger.log_metrics(row, step=epoch)
                    logger.save()
                resume = {
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "best_score": float(best_score),
                    "best_epoch": int(best_row["epoch"]),
                    "stale": stale,
                    "torch_rng": torch.get_rng_state(),  # shuffling and dropout continue as if never stopped
                }
                save(run_dir / "last.ckpt", net, stats, pool.provenance, config, epoch, metrics, resume)
                if improved:
                    save(run_dir / "best.ckpt", net, stats, pool.provenance, config, epoch, metrics)
            log.info(
                "epoch %d: train %s %.4f, %s %.4f%s",
                epoch, hyper.loss, row[f"train_{hyper.loss.replace('-', '_')}_loss"], monitor, row[monitor],
                " (best)" if improved else "",
            )
            bar.update()
            bar.set_postfix({monitor: f"{row[monitor]:.3f}"})
            if stale >= hyper.early_stopping:
                log.info("early stopping: %s has not improved for %d epochs", monitor, stale)
                break
    for logger in loggers:
        logger.finalize("success")
    for data in datasets:
        data.close()
    return best_row


def run_name(hyper: Hyper) -> Path:
    """``runs/<net>-<loss>-<time>``, numbered when that exists."""
    base = Path("runs") / f"{hyper.net}-{hyper.loss}-{datetime.now():%Y%m%d-%H%M%S}"
    path, k = base, 1
    while path.exists():
        k += 1
        path = base.with_name(f"{base.name}-{k}")
    return path


def train(
    store: str | Path = "features",
    annotations: str | Path = "annotations",
    net: str | None = None,
    loss: str | None = None,
    out: str | Path | None = None,
    val_annotations: str | Path | None = None,
    val_split: float | None = None,
    folds: int | None = None,
    seq_len: int | None = None,
    batch_size: int | None = None,
    epochs: int | None = None,
    lr: float | None = None,
    device: str = "auto",
    seed: int | None = None,
    recipe: str | Path | None = None,
    groups: str | Path | None = None,
    progress: bool = True,
    workers: int | None = None,
    **hyper_overrides: Any,
) -> Path:
    """Train a network; returns the run folder.

    Parameters
    ----------
    store : str or Path, default "features"
        Folder of feature stores (``vidaffect extract --store``).
    annotations : str or Path, default "annotations"
        Folder of per-video annotation files (see :mod:`vidaffect.annotations`).
    net, loss : str or None, default None
        Network (``full``, ``without-mel``, ``audio``, ``pose``) and loss (``mse``,
        ``ccc``, ``noninertial``, ``noninertial-ext``); None = the recipe's.
    out : str, Path or None, default None
        Run folder; None = ``runs/<net>-<loss>-<time>``.  With ``folds`` it holds
        ``fold-<k>/`` runs and ``folds.csv``/``folds.json``.
    val_annotations : str, Path or None, default None
        Annotations of an official validation set (its videos must be in ``store``);
        replaces ``val_split``.
    val_split : float or None, default None
        Fraction of videos (subjects with ``groups``) held out; recipe default 0.1;
        0 = no validation.
    folds : int or None, default None
        K-fold cross-validation: K runs, each validating on one fold.
    seq_len, batch_size, epochs, lr : None = the recipe's (256 frames, 64 windows, 70, 0.01)
    device : str, default "auto"
        "auto" (all GPUs when there are any), "cpu", "cuda" or "cuda:N".
    seed : int or None, default None
        Seeds weights, shuffling and dropout (a CPU run repeats exactly) and the split.
        None = a random training seed; the split then uses seed 0, so runs without a
        seed share their validation videos.  The seeds used are in ``config.yaml``.
    recipe : str, Path or None, default None
        Recipe name or YAML file whose ``train:`` section gives the defaults.
    groups : str, Path or None, default None
        ``video,subject`` CSV: split by subject.
    progress : bool, default True
        Progress bars over epochs and batches.
    workers : int or None, default None
        DataLoader worker processes reading the stores (0 = in the main process);
        None = 0 on the CPU (reading is a few percent of a step there) and
        :data:`GPU_WORKERS` on a GPU, which one reading process cannot keep busy.
    **hyper_overrides
        Other ``train:`` recipe keys: momentum, weight_decay, plateau_patience,
        early_stopping, optimizer.
    """
    hyper = resolve_hyper(
        recipe,
        dict(net=net, loss=loss, val_split=val_split, seq_len=seq_len, batch_size=batch_size, epochs=epochs, lr=lr, **hyper_overrides),
    )
    if folds and val_annotations:
        raise ValueError("--folds and --val-annotations exclude each other")
    store, annotations = Path(store), Path(annotations)
    fabric = make_fabric(device)
    fabric.launch()
    if workers is None:
        workers = 0 if fabric.device.type == "cpu" else min(GPU_WORKERS, os.cpu_count() or 1)
    pool = gather(store, annotations, Path(val_annotations) if val_annotations else None, hyper.net)
    randoms = random_encoder(pool.provenance)
    if randoms:
        log.warning("training on features from a RANDOM (untrained) encoder (%s): the model will learn little from them", ", ".join(randoms))
    train_seed = seed if seed is not None else random.randrange(2**31)
    split_seed = seed if seed is not None else 0
    if val_annotations:
        splits = [([v.video_id for v in pool.train], [v.video_id for v in pool.val])]
        how = f"official validation set {val_annotations}"
    else:
        grouping = read_groups(groups) if groups else None
        splits = make_splits([v.video_id for v in pool.train], hyper.val_split, folds, grouping, split_seed)
        unit = "subject" if grouping else "video"
        how = f"{folds} folds by {unit}" if folds else f"{hyper.val_split:g} of {unit}s held out"
    videos = {v.video_id: v for v in pool.train + pool.val}
    root = Path(fabric.broadcast(str(Path(out) if out else run_name(hyper))))

    base_config = {
        **asdict(hyper),
        "seed": train_seed,
        "split_seed": split_seed,
        "store": str(store),
        "annotations": str(annotations),
        "val_annotations": str(val_annotations) if val_annotations else None,
        "recipe": str(recipe) if recipe else load_recipe(None)["name"],
        "device": str(fabric.device),
        "processes": fabric.world_size,
        "workers": workers,
        "modalities": net_modalities(hyper.net),
        "dims": pool.dims,
        "vidaffect_version": __version__,
    }
    results = []
    for k, (train_ids, val_ids) in enumerate(splits):
        run_dir = root / f"fold-{k + 1}" if folds else root
        config = {**base_config, "split": {"how": how, "fold": k + 1 if folds else None, "train": train_ids, "val": val_ids}}
        log.info("%s: %d training and %d validation videos (%s)", run_dir, len(train_ids), len(val_ids), how)
        best = fit(
            fabric, hyper, [videos[v] for v in train_ids], [videos[v] for v in val_ids], pool,
            run_dir, config, train_seed + k, workers, progress,
        )
        results.append({"fold": k + 1, **best})
    if folds and fabric.is_global_zero:
        write_fold_summary(root, results)
    return root


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """The rows of a run's ``metrics.csv``, numbers parsed (``epoch`` as int)."""
    path = run_dir / "metrics.csv"
    if not path.is_file():
        return []
    with open(path, newline="") as fh:
        rows = [{k: float(v) for k, v in row.items() if v not in ("", None)} for row in csv.DictReader(fh)]
    for row in rows:
        row["epoch"] = int(row["epoch"])
    return rows


def resume(run: str | Path, epochs: int | None = None, device: str = "auto", workers: int | None = None, progress: bool = True) -> Path:
    """Continue an interrupted ``train`` run from its ``last.ckpt``, with the same
    configuration and split (``config.yaml``); for a k-fold run, every fold that has
    not finished.  ``epochs`` raises the epoch limit.  Returns the run folder."""
    root = Path(run)
    folds = sorted(root.glob("fold-*/config.yaml"), key=lambda p: int(p.parent.name.split("-")[1]))
    configs = folds or [root / "config.yaml"]
    if not configs[0].is_file():
        raise FileNotFoundError(f"{root}: no config.yaml; --resume takes a run folder made by `vidaffect train`")
    fabric = make_fabric(device)
    fabric.launch()
    results = []
    for path in configs:
        run_dir = path.parent
        config = yaml.safe_load(path.read_text())
        hyper = Hyper(**{f.name: config[f.name] for f in fields(Hyper)})
        if epochs is not None:
            hyper.epochs = config["epochs"] = epochs
        last = read(run_dir / "last.ckpt") if (run_dir / "last.ckpt").is_file() else None
        if last is not None and "resume" not in last:
            raise ValueError(f"{run_dir / 'last.ckpt'} holds no optimizer state (made by an older vidaffect); it cannot be resumed")
        if last is not None and (last["epoch"] >= hyper.epochs or last["resume"]["stale"] >= hyper.early_stopping):
            log.info("%s: finished at epoch %d; nothing to resume", run_dir, last["epoch"])
            results.append({"fold": config["split"]["fold"], **next(r for r in read_metrics(run_dir) if r["epoch"] == last["resume"]["best_epoch"])})
            continue
        pool = gather(Path(config["store"]), Path(config["annotations"]), Path(config["val_annotations"]) if config["val_annotations"] else None, hyper.net)
        videos = {v.video_id: v for v in pool.train + pool.val}
        missing = sorted(set(config["split"]["train"] + config["split"]["val"]) - set(videos))
        if missing:
            raise ValueError(f"{run_dir}: videos of its split are no longer in {config['store']}: {', '.join(missing[:5])}")
        log.info("%s: resuming after epoch %d of %d", run_dir, last["epoch"] if last else 0, hyper.epochs)
        n_workers = workers if workers is not None else config["workers"]
        best = fit(
            fabric, hyper, [videos[v] for v in config["split"]["train"]], [videos[v] for v in config["split"]["val"]], pool,
            run_dir, config, config["seed"] + (config["split"]["fold"] or 1) - 1, n_workers, progress, last,
        )
        results.append({"fold": config["split"]["fold"], **best})
    if folds and fabric.is_global_zero:
        write_fold_summary(root, results)
    return root


def write_fold_summary(root: Path, results: list[dict[str, Any]]) -> None:
    """``folds.csv`` (one row per fold's best epoch, then mean and std) and ``folds.json``."""
    keys = ["fold"] + sorted({k for r in results for k in r if k != "fold"})
    stats = {}
    for name, fn in (("mean", np.nanmean), ("std", np.nanstd)):
        stats[name] = {k: float(fn([r.get(k, np.nan) for r in results])) for k in keys[1:]}
    with open(root / "folds.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=keys)
        writer.writeheader()
        writer.writerows(results)
        for name, row in stats.items():
            writer.writerow({"fold": name, **row})
    (root / "folds.json").write_text(json.dumps({"folds": results, **stats}, indent=2, default=float))


# ---------------------------------------------------------------------------------------
# throughput (used by `vidaffect bench`)


def measure_throughput(
    net: str = "full", seq_len: int = 256, batch_size: int = 64, batches: int = 5, device: str = "cpu", workers: int = 0
) -> dict[str, float]:
    """Training speed in windows (sequences) per second on synthetic stores.

    Returns ``train_seq_per_s`` (windows read from HDF5 stores through the training
    DataLoader) and ``train_seq_per_s_inmemory`` (the same batches held in memory, so
    the difference is the cost of reading).  Each is timed over ``batches`` SGD steps
    after one warm-up step, with the non-inertial loss.
    """
    from vidaffect.synthetic import random_arrays, write_store

    fabric = make_fabric(device, single=True)
    modalities = net_modalities(net)
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        per_video = 8  # windows per synthetic video
        videos = []
        for i in range(math.ceil(batch_size / per_video)):
            n = per_video * seq_len
            path = write_store(Path(tmp) / f"v{i}.h5", random_arrays(n, rng))
            videos.append(VideoData(f"v{i}", path, rng.uniform(-1, 1, (n, 2)).astype(np.float32)))
        stats = compute_stats([v.store for v in videos], modalities)
        seed_everything(0, verbose=False)
        model = AffectNet(net)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        model, optimizer = fabric.setup(model, optimizer)
        model.train()
        data = WindowDataset(videos, modalities, stats, seq_len)
        loader = fabric.setup_dataloaders(DataLoader(data, batch_size=batch_size, shuffle=True, drop_last=True, num_workers=workers))
        loss_fn = get_loss("noninertial")

        def timed(batch_source: Callable[[], Any]) -> float:
            done = steps = 0
            started = None
            while steps <= batches:
                for batch in batch_source():
                    pred, loss = train_step(fabric, model, batch, loss_fn, optimizer)
                    loss.item()  # wait for the device
                    if started is None:  # the first step warms up
                        started = time.perf_counter()
                    else:
                        done += len(batch["mask"])
                    steps += 1
                    if steps > batches:
                        break
            return done / (time.perf_counter() - started)

        from_store = timed(lambda: loader)
        cached = list(loader)
        in_memory = timed(lambda: cached)
        data.close()
    return {"train_seq_per_s": from_store, "train_seq_per_s_inmemory": in_memory}
