"""`vidaffect train`: fit a network on feature stores and annotations.

The flow, top to bottom:

1. hyper-parameters and network sizes: the recipe's ``train:`` and ``model:``
   sections, overridden by the arguments (:mod:`vidaffect.learn.hyper`);
2. videos: every store in ``store`` with an annotation file (``annotations``, and
   ``val_annotations`` for an official validation set), checked for the stages the
   network needs and for one store per source video (:func:`gather`);
3. splits by video, or by subject with a grouping file, never by frame: one
   validation split, an official validation set, or K folds
   (:mod:`vidaffect.learn.splits`);
4. per split, :func:`vidaffect.learn.loop.fit`: normalisation statistics from the
   training videos, then epochs over shuffled windows, every loss and metric logged
   on train and validation (the validation videos predicted whole, as ``vidaffect
   predict`` does), ``best.ckpt`` (validation CCC mean) and ``last.ckpt``,
   ReduceLROnPlateau and early stopping on the same number.

:func:`resume` continues an interrupted run (every unfinished fold of a k-fold run)
from its ``last.ckpt`` with its own configuration and split.
"""

from __future__ import annotations

import logging
import os
import random
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import yaml

from vidaffect import __version__
from vidaffect.errors import InputNotFound, ParameterError
from vidaffect.io.annotations import AnnotationIndex, read_annotation
from vidaffect.io.recipe import DEFAULT_RECIPE
from vidaffect.io.store import list_stores
from vidaffect.io.store_lookup import file_key
from vidaffect.learn.checkpoint import random_encoder, read, stage_provenance
from vidaffect.learn.dataset import FeatureSet, VideoData
from vidaffect.learn.heads import Sizes
from vidaffect.learn.hyper import Hyper, recipe_section, resolve_hyper, resolve_sizes
from vidaffect.learn.loop import fit, make_fabric
from vidaffect.learn.modalities import extract_hint, feature_dim, frame_count, missing_stages, stages_for, validity_dim
from vidaffect.learn.networks import net_spec
from vidaffect.learn.runs import RunDir, fold_seed
from vidaffect.learn.splits import make_splits, read_groups

log = logging.getLogger(__name__)

GPU_WORKERS = 4  # default DataLoader processes when training on a GPU


@dataclass
class Pool:
    """The annotated videos found, with what the checkpoint must remember about them."""

    train: list[VideoData]
    val: list[VideoData]  # from --val-annotations, else empty
    features: FeatureSet


def _refuse_shared_sources(sources: dict[str, list[str]], stores: dict[str, Path], annotation_of: dict[str, Path]) -> None:
    """One source video, one annotated store: two stores of one video would let that
    video be trained and validated on at once (e.g. ``t00`` and ``test/t00`` after
    extracting ``videos/`` and then ``videos/test/``)."""
    shared = [vids for vids in sources.values() if len(vids) > 1]
    if not shared:
        return
    vids = shared[0]
    with h5py.File(stores[vids[0]], "r") as h5:
        source = h5.attrs.get("path", "?")
    listed = ", ".join(f"{stores[v]} (annotation {annotation_of[v]})" for v in vids)
    raise ParameterError(
        f"{len(vids)} annotated stores were made from the same video {source}: {listed}"
        + (f", and {len(shared) - 1} more such video(s)" if len(shared) > 1 else "")
        + "; keep one store per source video (delete the others), so that no video is both trained and validated on"
    )


def gather(store: Path, annotations: Path, val_annotations: Path | None, net: str, audio: str = "mel") -> Pool:
    """Stores with annotations, checked for the stages ``net`` needs (with ``audio``
    as its audio features, :data:`vidaffect.learn.networks.AUDIO_FEATURES`), for equal
    feature sizes and for one store per source video; annotations read and cut to the
    video's frames.  A network's optional modalities are read when every store has
    them."""
    stores = list_stores(store)
    spec = net_spec(net, audio)
    required, optional = spec.required(), list(spec.optional)
    stages = stages_for(required)
    if not stores:
        raise ParameterError(f"no feature stores in {store}; {extract_hint(store, stages)}")
    found = AnnotationIndex(annotations).find_all(list(stores))
    val_found = AnnotationIndex(val_annotations).find_all(list(stores)) if val_annotations else {}
    overlap = set(found) & set(val_found)
    if overlap:
        log.warning("%d video(s) have annotations in both folders; they are used for validation only", len(overlap))
    train_videos: list[VideoData] = []
    val_videos: list[VideoData] = []
    lacking: dict[str, list[str]] = {}
    widths: dict[str, dict[str, tuple[int, int]]] = {}  # video -> modality -> (dim, validity)
    provenance: dict[str, dict[str, Any]] = {}
    hashes: dict[str, set[str]] = {}
    sources: dict[str, list[str]] = {}
    annotation_of = {**found, **val_found}
    for vid in sorted(annotation_of):
        with h5py.File(stores[vid], "r") as h5:
            missing = missing_stages(h5, required)
            if missing:
                for stage in missing:
                    lacking.setdefault(stage, []).append(vid)
                continue
            present = required + [m for m in optional if not missing_stages(h5, [m])]
            prov = stage_provenance(h5, stages_for(present))
            for stage, p in prov.items():
                provenance.setdefault(stage, p)
                hashes.setdefault(stage, set()).add(p["params_hash"])
            n = frame_count(h5)
            key = file_key(h5.attrs["path"]) if h5.attrs.get("path") else ""
            here = {m: (feature_dim(h5, m), validity_dim(h5, m)) for m in present}
        labels = read_annotation(annotation_of[vid], n)
        if not np.isfinite(labels).all(axis=1).any():
            log.warning("%s: no annotated frame within the video's %d frames; not used", annotation_of[vid], n)
            continue
        widths[vid] = here
        sources.setdefault(key or vid, []).append(vid)
        (val_videos if vid in val_found else train_videos).append(VideoData(vid, stores[vid], labels, n))
    if lacking:
        stages_needed = sorted(lacking, key=stages.index)
        example = lacking[stages_needed[0]][0]
        raise ParameterError(
            f"--net {net} needs {', '.join(stages_needed)} features that {max(map(len, lacking.values()))} store(s) in "
            f"{store} lack (e.g. {stores[example]}); {extract_hint(store, stages_needed)}"
        )
    if not train_videos:
        raise ParameterError(f"no annotated training videos: stores in {store}, annotations in {annotations}")
    _refuse_shared_sources(sources, stores, annotation_of)
    modalities = required + [m for m in optional if all(m in w for w in widths.values())]
    skipped = [m for m in optional if m not in modalities]
    if skipped:
        log.info("--net %s: not reading %s, which not every store has", net, ", ".join(skipped))
    for m in modalities:
        variants = {w[m] for w in widths.values()}
        if len(variants) > 1:
            example = next(vid for vid, w in widths.items() if w[m] != next(iter(widths.values()))[m])
            raise ParameterError(
                f"{stores[example]}: {m} features have another size than other stores' ({sorted(d for d, _ in variants)} "
                "values per frame); re-extract with one recipe"
            )
    for stage, hashed in hashes.items():
        if len(hashed) > 1:
            log.warning("the stores hold %s features made with %d different parameter sets; mixing them may hurt", stage, len(hashed))
    first = next(iter(widths.values()))
    features = FeatureSet(
        modalities,
        {m: first[m][0] for m in modalities},
        {m: first[m][1] for m in modalities},
        {s: p for s, p in provenance.items() if s in stages_for(modalities)},
    )
    return Pool(train_videos, val_videos, features)


def train(
    store: str | Path = "features",
    annotations: str | Path = "annotations",
    net: str | None = None,
    loss: str | None = None,
    out: str | Path | None = None,
    head: str | None = None,
    audio_features: str | None = None,
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
    devices: int | None = None,
    num_nodes: int = 1,
    **hyper_overrides: Any,
) -> Path:
    """Train a network; returns the run folder.

    Parameters
    ----------
    store : str or Path, default "features"
        Folder of feature stores (``vidaffect extract --store``).
    annotations : str or Path, default "annotations"
        Folder of per-video annotation files (see :mod:`vidaffect.io.annotations`).
    net, loss : str or None, default None
        Network (:data:`vidaffect.learn.networks.NETWORKS`: ``full``, ``without-mel``,
        ``audio``, ``pose``, ``mesh-transformer``, ``evm-transformer``,
        ``feature-transformer``, ``multi-transformer``) and loss (``mse``, ``ccc``,
        ``noninertial``, ``noninertial-ext``); None = the recipe's.
    out : str, Path or None, default None
        Run folder; None = ``runs/<net>-<loss>-<time>``.  With ``folds`` it holds
        ``fold-<k>/`` runs and ``folds.csv``/``folds.json``.
    head : str or None, default None
        Temporal head (``lstm``, ``gru``, ``gru-attention``, ``transformer``); None =
        the recipe's, whose ``auto`` is the network's own (lstm for the fusion
        networks, transformer for the transformer networks).
    audio_features : str or None, default None
        What the network's audio input reads: ``mel``, ``egemaps`` (openSMILE's
        eGeMAPSv02 low-level descriptors, stage ``egemaps``) or ``both``; None = the
        recipe's (``mel``, as the thesis).
    val_annotations : str, Path or None, default None
        Annotations of an official validation set (its videos must be in ``store``);
        replaces ``val_split``.
    val_split : float or None, default None
        Fraction of videos (subjects with ``groups``) held out; recipe default 0.1;
        0 = no validation.
    folds : int or None, default None
        K-fold cross-validation: K runs, each validating on one fold.
    seq_len, batch_size, epochs, lr : int, int, int, float or None, default None
        Frames per window (:mod:`vidaffect.learn.windows`), windows per batch,
        maximum epochs, learning rate; None = the recipe's.
    device : str, default "auto"
        "auto" (the GPUs when there are any), "cpu", "cuda" or "cuda:N".
    devices, num_nodes : int or None, int, default None, 1
        Processes per node (None: 1 on the CPU, every visible GPU on CUDA) and nodes;
        several train data-parallel (DDP, gloo on the CPU), each with ``batch_size``
        windows per step.  Lightning starts this node's other processes by running
        the same command line again (a script calling this runs again in each); other
        nodes run the same command (README: "Several GPUs, processes and nodes").
    seed : int or None, default None
        Seeds weights, shuffling and dropout (a CPU run repeats exactly) and the split.
        None = a random training seed; the split then uses seed 0, so runs without a
        seed share their validation videos.  The seeds used are in ``config.yaml``.
    recipe : str, Path or None, default None
        Recipe name or YAML file whose ``train:`` and ``model:`` sections give the
        defaults (e.g. ``thesis-transformer``).
    groups : str, Path or None, default None
        ``video,subject`` CSV: split by subject.
    progress : bool, default True
        Progress bars over epochs and batches.
    workers : int or None, default None
        DataLoader worker processes reading the stores (0 = in the main process);
        None = 0 on the CPU (reading is a few percent of a step there) and
        :data:`GPU_WORKERS` on a GPU, which one reading process cannot keep busy.
    **hyper_overrides
        Other ``train:`` recipe keys: optimizer, momentum, beta2, weight_decay,
        plateau_patience, early_stopping.
    """
    hyper = resolve_hyper(
        recipe,
        dict(
            net=net, head=head, audio_features=audio_features, loss=loss, val_split=val_split, seq_len=seq_len, batch_size=batch_size, epochs=epochs, lr=lr,
            **hyper_overrides,
        ),
    )  # fmt: skip
    sizes = resolve_sizes(recipe)
    if folds and val_annotations:
        raise ParameterError("--folds and --val-annotations exclude each other")
    store, annotations = Path(store), Path(annotations)
    # every check before the launch, so a mistake is reported once, not by every process
    fabric = make_fabric(device, devices, num_nodes)
    pool = gather(store, annotations, Path(val_annotations) if val_annotations else None, hyper.net, hyper.audio_features)
    fabric.launch()
    if workers is None:
        workers = 0 if fabric.device.type == "cpu" else min(GPU_WORKERS, os.cpu_count() or 1)
    randoms = random_encoder(pool.features.provenance)
    if randoms and fabric.is_global_zero:
        log.warning("training on features from a RANDOM (untrained) encoder (%s): the model will learn little from them", ", ".join(randoms))
    # the processes must shuffle alike (and they use process 0's seeds, the ones recorded)
    train_seed = fabric.broadcast(seed if seed is not None else random.randrange(2**31))
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
    root = RunDir(Path(fabric.broadcast(str(Path(out) if out else RunDir.new(hyper.net, hyper.loss).root))))

    base_config = {
        **asdict(hyper),
        "seed": train_seed,
        "split_seed": split_seed,
        "store": str(store),
        "annotations": str(annotations),
        "val_annotations": str(val_annotations) if val_annotations else None,
        "recipe": str(recipe) if recipe else DEFAULT_RECIPE,
        "device": str(fabric.device),
        "processes": fabric.world_size,
        "workers": workers,
        "model": asdict(sizes),
        "modalities": pool.features.modalities,
        "dims": pool.features.dims,
        "validity": pool.features.validity,
        "vidaffect_version": __version__,
    }
    results = []
    for k, (train_ids, val_ids) in enumerate(splits):
        fold = k + 1 if folds else None
        run = root.fold(k + 1) if folds else root
        config = {**base_config, "split": {"how": how, "fold": fold, "train": train_ids, "val": val_ids}}
        log.info("%s: %d training and %d validation videos (%s)", run.root, len(train_ids), len(val_ids), how)
        best = fit(
            fabric, hyper, sizes, [videos[v] for v in train_ids], [videos[v] for v in val_ids], pool.features,
            run, config, fold_seed(train_seed, fold), workers, progress,
        )
        results.append({"fold": k + 1, **best})
    if folds and fabric.is_global_zero:
        root.write_fold_summary(results)
    fabric.barrier()  # the processes end together, after process 0 has written everything
    return root.root



def resume(
    run: str | Path,
    epochs: int | None = None,
    device: str = "auto",
    workers: int | None = None,
    progress: bool = True,
    devices: int | None = None,
    num_nodes: int = 1,
) -> Path:
    """Continue an interrupted ``train`` run from its ``last.ckpt``, with the same
    configuration and split (``config.yaml``); for a k-fold run, every fold that has
    not finished.  ``epochs`` raises the epoch limit; ``devices`` and ``num_nodes`` as
    in :func:`train` (a run may continue on another number of processes).  Returns the
    run folder."""
    root = RunDir(Path(run))
    folds = root.folds()
    runs = folds or [root]
    if not runs[0].config.is_file():
        raise InputNotFound(f"{root.root}: no {RunDir.CONFIG}; --resume takes a run folder made by `vidaffect train`")
    fabric = make_fabric(device, devices, num_nodes)
    # every check before the launch, so a mistake is reported once, not by every process
    plans = [_resume_plan(run_dir, epochs) for run_dir in runs]
    fabric.launch()
    results = []
    for plan in plans:
        if plan.pool is None:
            results.append(plan.best)
            continue
        videos = {v.video_id: v for v in plan.pool.train + plan.pool.val}
        split = plan.config["split"]
        n_workers = workers if workers is not None else plan.config["workers"]
        best = fit(
            fabric, plan.hyper, plan.sizes, [videos[v] for v in split["train"]], [videos[v] for v in split["val"]],
            plan.pool.features, plan.run, plan.config, fold_seed(plan.config["seed"], split["fold"]), n_workers, progress, plan.last,
        )  # fmt: skip
        results.append({"fold": split["fold"], **best})
    if folds and fabric.is_global_zero:
        root.write_fold_summary(results)
    fabric.barrier()
    return root.root


@dataclass
class ResumePlan:
    """One run (or fold) to continue: its configuration and ``last.ckpt``, and its
    videos (``pool`` None when it has finished; ``best`` is then its best row)."""

    run: RunDir
    config: dict[str, Any]
    hyper: Hyper
    sizes: Sizes
    last: dict[str, Any] | None
    pool: Pool | None
    best: dict[str, Any]


def _resume_plan(run_dir: RunDir, epochs: int | None) -> ResumePlan:
    """Read and check what continuing ``run_dir`` needs."""
    config = yaml.safe_load(run_dir.config.read_text())
    defaults = recipe_section("train")  # keys a run of an older vidaffect did not record
    hyper = Hyper(**{f.name: config.get(f.name, defaults[f.name]) for f in fields(Hyper)})
    sizes = resolve_sizes(None, config.get("model"))
    if epochs is not None:
        hyper.epochs = config["epochs"] = epochs
    last = read(run_dir.last) if run_dir.last.is_file() else None
    if last is not None and "resume" not in last:
        raise ParameterError(f"{run_dir.last} holds no optimizer state (made by an older vidaffect); it cannot be resumed")
    fold = config["split"]["fold"]
    if last is not None and (last["epoch"] >= hyper.epochs or last["resume"]["stale"] >= hyper.early_stopping):
        log.info("%s: finished at epoch %d; nothing to resume", run_dir.root, last["epoch"])
        best = next(r for r in run_dir.read_metrics() if r["epoch"] == last["resume"]["best_epoch"])
        return ResumePlan(run_dir, config, hyper, sizes, last, None, {"fold": fold, **best})
    val_annotations = Path(config["val_annotations"]) if config["val_annotations"] else None
    pool = gather(Path(config["store"]), Path(config["annotations"]), val_annotations, hyper.net, hyper.audio_features)
    found = {v.video_id for v in pool.train + pool.val}
    missing = sorted(set(config["split"]["train"] + config["split"]["val"]) - found)
    if missing:
        raise ParameterError(f"{run_dir.root}: videos of its split are no longer in {config['store']}: {', '.join(missing[:5])}")
    log.info("%s: resuming after epoch %d of %d", run_dir.root, last["epoch"] if last else 0, hyper.epochs)
    return ResumePlan(run_dir, config, hyper, sizes, last, pool, {})
