"""The training loop, readable in one sitting: :func:`fit` trains one model (one run,
or one fold), :func:`train_epoch` goes once over the training windows,
:func:`train_step` is one optimizer step, and :func:`validate` predicts the validation
videos whole, through the same code as ``vidaffect predict``.

Lightning Fabric places the model and batches on the device and, with several
processes (``devices`` per node times ``num_nodes``; gloo on the CPU, NCCL on GPUs),
runs data-parallel (DDP): each process takes ``batch_size`` windows per step, and a
global step takes the same windows whatever the process count (see :func:`fit`), so
2 processes x B windows train as 1 process x 2B does.  The training metrics cover every
process's windows; process 0 validates, and writes metrics, config and checkpoints.
"""

from __future__ import annotations

import importlib.util
import logging
import math
import os
import time
import warnings
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import torch
import yaml
from lightning.fabric import Fabric
from lightning.fabric.loggers import CSVLogger, TensorBoardLogger
from lightning.fabric.plugins.environments import LSFEnvironment, SLURMEnvironment, TorchElasticEnvironment
from lightning.fabric.utilities.rank_zero import rank_zero_only
from lightning.fabric.utilities.seed import seed_everything
from torch.utils.data import DataLoader

from vidaffect.errors import ParameterError
from vidaffect.learn.checkpoint import LoadedModel, build_network, save
from vidaffect.learn.dataset import EpochShuffle, FeatureSet, VideoData, WindowDataset, compute_stats
from vidaffect.learn.heads import Sizes
from vidaffect.learn.hyper import Hyper
from vidaffect.learn.inference import predict_video
from vidaffect.learn.losses import LOSSES, get_loss, noninertial_terms
from vidaffect.learn.metrics import summarize
from vidaffect.learn.modalities import stages_for
from vidaffect.learn.networks import AffectNet
from vidaffect.learn.runs import RunDir
from vidaffect.learn.windows import hop_for
from vidaffect.util.device import resolve_device
from vidaffect.util.terminal import progress_bar

log = logging.getLogger(__name__)


# What each node's command needs to find the others when no cluster launcher (torchrun,
# SLURM's srun, LSF's jsrun) started it: Lightning's own environment.
NODE_VARIABLES = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK")


def make_fabric(device: str = "auto", devices: int | None = None, num_nodes: int = 1) -> Fabric:
    """Fabric for ``device`` ("auto", "cpu", "cuda", "cuda:N") with ``devices``
    processes on each of ``num_nodes`` machines, data-parallel (DDP) when there are
    several.  ``devices`` None: 1 on the CPU, every visible GPU for "cuda" (and "auto"
    on a GPU machine), 1 for "cuda:N".  Requests this machine cannot serve are a
    :class:`ParameterError`.  Call ``launch()`` on it before training."""
    device = resolve_device(device)
    # Values decaying into the denormal range (LSTM gradients do) make x86 CPU
    # arithmetic an order of magnitude slower; training gains nothing from them.
    torch.set_flush_denormal(True)
    if num_nodes > 1 and not any(env.detect() for env in (TorchElasticEnvironment, SLURMEnvironment, LSFEnvironment)):
        missing = [name for name in NODE_VARIABLES if name not in os.environ]
        if missing:
            raise ParameterError(
                f"--num-nodes {num_nodes}: run the same command on every node with MASTER_ADDR (node 0's address), "
                f"MASTER_PORT (a free port on node 0) and NODE_RANK (0 to {num_nodes - 1}) set, or start it with torchrun or "
                f"srun; {', '.join(missing)} not set here"
            )
    which: int | list[int]
    if device == "cpu":
        which = n = devices or 1
        if n > 1:  # the processes share the cores; a pool of every core each would oversubscribe them
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // n))
    elif ":" in device:
        if devices not in (None, 1):
            raise ParameterError(f"--device {device} is one GPU; for {devices} GPUs use --device cuda --devices {devices}")
        which, n = [int(device.split(":", 1)[1])], 1
    else:
        visible = torch.cuda.device_count()
        which = n = devices or visible
        if n > visible:
            raise ParameterError(f"--devices {n}: PyTorch sees {visible} CUDA device(s) on this machine")
    parallel = n * num_nodes > 1
    return Fabric(accelerator=device.split(":")[0], devices=which, num_nodes=num_nodes, strategy="ddp" if parallel else "auto")


def is_main_process() -> bool:
    """False in every process of a data-parallel run but the first (after its launch),
    which alone writes files and reports."""
    return getattr(rank_zero_only, "rank", 0) == 0


def gather_objects(fabric: Fabric, obj: Any) -> list[Any]:
    """``obj`` of every process, in rank order (``[obj]`` in a single process)."""
    if fabric.world_size == 1:
        return [obj]
    every: list[Any] = [None] * fabric.world_size
    torch.distributed.all_gather_object(every, obj)
    return every


def make_optimizer(hyper: Hyper, params: Iterable[torch.nn.Parameter]) -> torch.optim.Optimizer:
    """The recipe's optimizer: SGD with momentum (thesis §4.2) or Adam (betas
    ``momentum``, ``beta2``)."""
    if hyper.optimizer == "adam":
        return torch.optim.Adam(params, lr=hyper.lr, betas=(hyper.momentum, hyper.beta2), weight_decay=hyper.weight_decay)
    return torch.optim.SGD(params, lr=hyper.lr, momentum=hyper.momentum, weight_decay=hyper.weight_decay)


def train_step(
    fabric: Fabric, model: torch.nn.Module, batch: dict, loss_fn: Callable, optimizer: torch.optim.Optimizer
) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimizer step on a batch of windows; returns the prediction and the loss."""
    pred = model(batch["inputs"], batch["frames"])
    loss = loss_fn(pred, batch["target"], batch["mask"])
    optimizer.zero_grad(set_to_none=True)
    fabric.backward(loss)
    optimizer.step()
    return pred, loss


def loss_terms(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every loss of :data:`vidaffect.losses.LOSSES` (``mse_loss``, ...,
    ``noninertial_ext_loss``) and the non-inertial terms (``distance``, ``velocity``,
    ``direction``) of (B, S, 2) predictions."""
    terms = {f"{name.replace('-', '_')}_loss": fn(pred, target, mask) for name, fn in LOSSES.items()}
    terms.update(noninertial_terms(pred, target, mask))
    return terms


def _row(sums: dict[str, Any], frames: int, per_video: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict[str, float]:
    """Losses averaged over annotated frames, then the pooled metrics (``valence_ccc``,
    ...) and the per-video means (``video_valence_ccc``, ...)."""
    row = {name: float(total) / max(frames, 1) for name, total in sums.items()}
    summary = summarize(per_video)
    row.update(summary["pooled"])
    row.update({f"video_{k}": v for k, v in summary["video_mean"].items()})
    return row


def train_epoch(
    fabric: Fabric,
    model: torch.nn.Module,
    loader: DataLoader,
    videos: list[VideoData],
    loss_fn: Callable,
    optimizer: torch.optim.Optimizer,
    progress: bool,
) -> dict[str, float]:
    """One pass of training over the windows of ``loader``.  Returns the losses (each
    batch weighted by its annotated frames) and the metrics over the windows' annotated
    frames (a frame in two windows counts twice), of every process's windows: the same
    row in every process."""
    model.train()
    sums: dict[str, Any] = {}
    frames = 0
    collected: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
    with progress_bar(len(loader), "train", "batch", progress, position=1) as bar:
        for batch in loader:
            pred, _ = train_step(fabric, model, batch, loss_fn, optimizer)
            pred, target, mask = pred.detach(), batch["target"], batch["mask"]
            n = int(mask.sum())
            for name, value in loss_terms(pred, target, mask).items():
                sums[name] = sums.get(name, 0.0) + value * n
            frames += n
            video = batch["video"][:, None].expand(mask.shape)
            collected.append((video[mask], pred[mask], target[mask]))
            bar.update()
    arrays = [torch.cat(parts).cpu().numpy() for parts in zip(*collected, strict=True)]
    shares = gather_objects(fabric, ({name: float(total) for name, total in sums.items()}, frames, arrays))
    sums = {name: sum(share[0][name] for share in shares) for name in sums}
    frames = sum(share[1] for share in shares)
    video_of, preds, targets = (np.concatenate(parts) for parts in zip(*(share[2] for share in shares), strict=True))
    return _row(sums, frames, {videos[i].video_id: (preds[video_of == i], targets[video_of == i]) for i in np.unique(video_of)})


def validate(runner: LoadedModel, videos: list[VideoData], progress: bool) -> dict[str, float]:
    """Predict every validation video whole, exactly as ``vidaffect predict`` does
    (:func:`vidaffect.learn.inference.predict_video`), and score the per-frame output:
    the metrics are those ``vidaffect evaluate`` gives on ``predict``'s CSV, and the
    losses are computed on each whole video (weighted by its annotated frames)."""
    runner.model.eval()
    sums: dict[str, Any] = {}
    frames = 0
    per_video = {}
    with progress_bar(len(videos), "validate", "video", progress, position=1) as bar:
        for v in videos:
            pred, target = predict_video(runner, v.store), v.targets()
            per_video[v.video_id] = (pred, target)
            mask = np.isfinite(target).all(axis=1)
            n = int(mask.sum())
            pred_t, target_t = (torch.from_numpy(np.asarray(a, np.float32))[None] for a in (pred, np.nan_to_num(target)))
            for name, value in loss_terms(pred_t, target_t, torch.from_numpy(mask)[None]).items():
                sums[name] = sums.get(name, 0.0) + float(value) * n
            frames += n
            bar.update()
    return _row(sums, frames, per_video)


def fit(
    fabric: Fabric,
    hyper: Hyper,
    sizes: Sizes,
    train_videos: list[VideoData],
    val_videos: list[VideoData],
    features: FeatureSet,
    run: RunDir,
    config: dict[str, Any],
    seed: int,
    workers: int = 0,
    progress: bool = False,
    last: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Train one model; writes the run folder's config, metrics, best and last
    checkpoints (:class:`~vidaffect.learn.runs.RunDir`) and returns the best epoch's
    row.  ``features`` describes the stores' inputs (they go into the checkpoints);
    ``last`` (a ``last.ckpt`` read back) continues an interrupted run after its last
    finished epoch, with the network it describes."""
    seed_everything(seed, workers=True, verbose=False)
    if last is not None:
        net = build_network(last)
    else:
        net = AffectNet(hyper.net, hyper.head, sizes, features.dims, features.validity)
    stats = compute_stats([v.store for v in train_videos], net.modalities)
    optimizer = make_optimizer(hyper, net.parameters())
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="max", patience=hyper.plateau_patience)
    first, best_score, best_row, stale, history = 1, -math.inf, {}, 0, []
    if last is not None:
        net.load_state_dict(last["state_dict"])
        optimizer.load_state_dict(last["resume"]["optimizer"])
        scheduler.load_state_dict(last["resume"]["scheduler"])
        first, best_score, stale = last["epoch"] + 1, last["resume"]["best_score"], last["resume"]["stale"]
        torch.set_rng_state(last["resume"]["torch_rng"])
        history = [row for row in run.read_metrics() if row["epoch"] < first]  # the logger rewrites the file
        best_row = next(row for row in history if row["epoch"] == last["resume"]["best_epoch"])
    model, optimizer = fabric.setup(net, optimizer)
    # Validation runs the network exactly as `vidaffect predict` runs a checkpoint: the
    # module itself (on the device now), not its DDP wrapper, which would join
    # collectives that only process 0, the one that validates, reaches.
    runner = LoadedModel(
        path=run.best, net=net.net, head=net.head_name, model=net, modalities=net.modalities, dims=net.dims,
        validity=net.validity, seq_len=hyper.seq_len, hop=hop_for(hyper.seq_len), stages=stages_for(net.modalities),
        stats=stats, provenance=features.provenance, device=str(fabric.device),
    )  # fmt: skip
    data = WindowDataset(train_videos, net.modalities, stats, hyper.seq_len, net.validity)
    # the processes' shares of one shuffle per epoch: 2 processes x B windows a step
    # train on the windows 1 process x 2B does
    sampler = EpochShuffle(len(data), seed, fabric.world_size, fabric.global_rank)
    loader: Any = fabric.setup_dataloaders(
        DataLoader(data, batch_size=hyper.batch_size, sampler=sampler, num_workers=workers, persistent_workers=workers > 0),
        use_distributed_sampler=False,
    )
    monitor = "val_ccc_mean" if val_videos else "train_ccc_mean"
    if not val_videos:
        log.warning("no validation videos: best.ckpt is chosen by the training CCC")
    loss_fn = get_loss(hyper.loss)
    loggers: list[CSVLogger | TensorBoardLogger] = []
    if fabric.is_global_zero:
        run.root.mkdir(parents=True, exist_ok=True)
        loggers.append(CSVLogger(run.root, name="", version=""))
        if importlib.util.find_spec("tensorboard") is not None:
            loggers.append(TensorBoardLogger(run.root, name=RunDir.TENSORBOARD, version=""))
        with warnings.catch_warnings():
            if history:  # resuming: the old rows are logged again just below
                warnings.filterwarnings("ignore", message="Experiment logs directory")
            for logger in loggers:
                logger.experiment  # noqa: B018 - creates the log files before config.yaml joins them
        run.config.write_text(yaml.safe_dump(config, sort_keys=False))
        for old in history:
            loggers[0].log_metrics(old, step=old["epoch"])

    with progress_bar(hyper.epochs, f"training {run.root.name}", "epoch", progress and fabric.is_global_zero, initial=first - 1) as bar:
        for epoch in range(first, hyper.epochs + 1):
            started = time.perf_counter()
            batches = progress and fabric.is_global_zero
            row: dict[str, Any] = {"epoch": epoch, "lr": optimizer.param_groups[0]["lr"]}
            sampler.epoch = epoch
            for k, v in train_epoch(fabric, model, loader, train_videos, loss_fn, optimizer, batches).items():
                row[f"train_{k}"] = v
            if val_videos:
                # Process 0 validates and hands its numbers to the others (who wait):
                # under DDP each process keeps BatchNorm running statistics of its own
                # batches, and process 0's network is the one the checkpoints hold, so
                # these are the numbers `vidaffect predict` gives with best.ckpt.
                # Validation predicts each video once without gradients, a fraction of an
                # epoch's work, so sharing it out would gain little.
                scores = validate(runner, val_videos, batches) if fabric.is_global_zero else {}
                row.update({f"val_{k}": v for k, v in fabric.broadcast(scores).items()})
            row["seconds"] = time.perf_counter() - started
            # the row is the same in every process, so they decide, and stop, together
            score = row[monitor] if math.isfinite(row[monitor]) else -math.inf
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
                    "torch_rng": torch.get_rng_state(),  # dropout continues as if never stopped
                }
                save(run.last, net, stats, features.provenance, config, epoch, metrics, hyper.seq_len, resume)
                if improved:
                    save(run.best, net, stats, features.provenance, config, epoch, metrics, hyper.seq_len)
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
    data.close()
    return best_row
