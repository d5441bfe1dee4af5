"""The extract engine: decode every video once, run the stages it still needs, store.

Each video is independent: a failure (unreadable file, a stage error) is recorded in
the summary and the batch goes on; the video's existing store is left as it was.
Stages whose stored parameter hash matches are skipped, so a re-run after an
interruption only does what is missing.
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import multiprocessing as mp
import os
import queue
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from vidaffect import stages as stage_api
from vidaffect.progress import configure_logging, progress_bar
from vidaffect.recipe import load_recipe
from vidaffect.store import StoreWriter, completed_stages, locked, read_rows, store_path
from vidaffect.video import AudioChunk, VideoError, VideoSource, decode, find_videos, probe

log = logging.getLogger(__name__)

BATCH_FRAMES = 32  # frames handed to the stages at once: one encoder batch


@dataclass
class VideoResult:
    path: str
    video_id: str
    status: str  # "done" | "skipped" | "failed"
    reason: str = ""
    frames: int = 0
    seconds: float = 0.0
    stages: list[str] = field(default_factory=list)


def failure_reason(exc: Exception) -> str:
    """One summary line for an unexpected error: its type and first message line."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"


@dataclass
class Summary:
    results: list[VideoResult]

    def count(self, status: str) -> int:
        return sum(r.status == status for r in self.results)

    @property
    def failed(self) -> list[VideoResult]:
        return [r for r in self.results if r.status == "failed"]

    @property
    def exit_code(self) -> int:
        return 1 if self.failed else 0

    def report(self) -> str:
        frames = sum(r.frames for r in self.results if r.status == "done")
        secs = sum(r.seconds for r in self.results if r.status == "done")
        lines = [
            f"{self.count('done')} done, {self.count('skipped')} skipped (up to date), {len(self.failed)} failed"
            + (f"; {frames} frames in {secs:.1f} s of stage work" if frames else "")
        ]
        lines += [f"  FAILED {r.path}: {r.reason}" for r in self.failed]
        return "\n".join(lines)


def resolve_device(device: str) -> str:
    """"auto" -> "cuda" when PyTorch sees a GPU, else "cpu"."""
    if device != "auto":
        if device.startswith("cuda"):
            import torch

            if not torch.cuda.is_available():
                raise ValueError(f"--device {device}: PyTorch sees no CUDA device on this machine")
        return device
    try:
        import torch
    except ImportError:
        return "cpu"
    return "cuda" if torch.cuda.is_available() else "cpu"


@dataclass
class Plan:
    """What to extract: stage names in dependency order, their Params and hashes."""

    order: list[str]
    params: dict[str, Any]
    hashes: dict[str, str]

    @classmethod
    def make(
        cls, stages: list[str] | None, recipe: str | Path | None = None, params: dict[str, dict] | None = None
    ) -> Plan:
        spec = load_recipe(recipe)
        names = list(stages) if stages else list(spec["stages"])
        params = params or {}
        unknown = set(params) - set(stage_api.STAGE_CLASSES)
        if unknown:
            raise ValueError(f"parameters given for unknown stage(s) {', '.join(sorted(unknown))}")
        order = stage_api.resolve_order(names)
        resolved, hashes = {}, {}
        for name in order:
            cls_ = stage_api.stage_class(name)
            overrides = {**spec["stages"].get(name, {}), **params.get(name, {})}
            resolved[name] = stage_api.make_params(cls_, overrides)
            deps = [hashes[d] for d in cls_.requires]
            hashes[name] = stage_api.params_hash(cls_, resolved[name], deps)
        return cls(order, resolved, hashes)


class Extractor:
    """The stages of one process (models loaded once) and how to run them on a video."""

    def __init__(
        self,
        store: str | Path,
        plan: Plan,
        device: str = "cpu",
        force: bool = False,
        batch_frames: int = BATCH_FRAMES,
    ) -> None:
        self.store = Path(store)
        self.plan = plan
        self.force = force
        self.batch_frames = batch_frames
        self.stages = {n: stage_api.stage_class(n)(plan.params[n], device) for n in plan.order}

    def close(self) -> None:
        for stage in self.stages.values():
            stage.close()

    def run(self, source: VideoSource, on_frames: Callable[[int], None] | None = None) -> VideoResult:
        """Extract one video, never raising for a problem with that video."""
        result = VideoResult(str(source.path), source.video_id, "failed")
        t0 = time.perf_counter()
        try:
            info = probe(source)
            path = store_path(self.store, source.video_id)
            with locked(path):
                existing = completed_stages(path, info)
                todo = [n for n in self.plan.order if self.force or existing.get(n, ("", ""))[1] != self.plan.hashes[n]]
                if not todo:
                    result.status = "skipped"
                    return result
                frames = self._extract(info, path, todo, existing, on_frames)
            result.status, result.frames, result.stages = "done", frames, todo
        except VideoError as exc:
            result.reason = str(exc)
        except KeyboardInterrupt:
            raise
        except Exception as exc:  # one video's failure must not stop the batch
            log.debug("%s failed", source.path, exc_info=True)
            result.reason = failure_reason(exc)
        result.seconds = time.perf_counter() - t0
        if result.status == "failed":
            log.error("%s: %s", source.path, result.reason)
        return result

    def _extract(self, info, path: Path, todo: list[str], existing: dict[str, tuple[str, str]], on_frames) -> int:
        stages = {n: self.stages[n] for n in todo}
        needed_by_others = {dep for n in todo for dep in stages[n].requires}
        cached_inputs = [
            f"{g}/{d}"
            for dep in needed_by_others - set(todo)
            for g in [stage_api.stage_class(dep).group_name()]
            for d in self.stages[dep].outputs()
        ]
        todo_groups = {stages[n].group_name() for n in todo}
        keep = [g for g, _ in existing.values() if g not in todo_groups]
        groups = {
            s.group_name(): (n, s.outputs(), stage_api.params_dict(s.params), self.plan.hashes[n], s.version)
            for n, s in stages.items()
        }
        writer = StoreWriter(path, info, groups, keep)
        old = h5py.File(path, "r") if cached_inputs else None
        runs: dict[str, stage_api.StageRun] = {}
        try:
            for n, s in stages.items():
                runs[n] = s.open(info, path)
            audio_runs = [runs[n] for n, s in stages.items() if s.uses_audio]
            want_images = any(s.uses_images for s in stages.values())
            rates = {s.audio_rate() for s in stages.values() if s.uses_audio}
            if len(rates) > 1:
                raise ValueError(f"audio stages want different sample rates {sorted(rates)}")
            timestamps: list[float] = []
            images: list[np.ndarray] = []
            done = 0

            def flush() -> None:
                nonlocal done
                if not timestamps:
                    return
                n = len(timestamps)
                ts = np.asarray(timestamps, np.float64)
                batch = stage_api.Batch(
                    start=done,
                    timestamps=ts,
                    images=np.stack(images) if images else np.empty((n, 0, 0, 3), np.uint8),
                    inputs=read_rows(old, cached_inputs, done, done + n) if old is not None else {},
                )
                if old is not None and any(len(v) != n for v in batch.inputs.values()):
                    raise RuntimeError("the cached store has fewer frames than the video; re-run with --force")
                writer.append_timestamps(ts)
                for name, stage in stages.items():
                    rows = runs[name].process(batch)
                    if name in needed_by_others:
                        if any(len(v) != n for v in rows.values()):
                            raise RuntimeError(f"stage {name} must return one row per frame")
                        batch.inputs.update({f"{stage.group_name()}/{k}": v for k, v in rows.items()})
                    writer.append(stage.group_name(), rows)
                done += n
                timestamps.clear()
                images.clear()
                if on_frames:
                    on_frames(n)

            for item in decode(info, images=want_images, audio=bool(audio_runs), audio_rate=rates.pop() if rates else 0):
                if isinstance(item, AudioChunk):
                    for run in audio_runs:
                        run.add_audio(item.samples, item.start)
                    continue
                timestamps.append(item.timestamp)
                if want_images:
                    images.append(item.image)
                if len(timestamps) == self.batch_frames:
                    flush()
            flush()
            if done == 0:
                raise VideoError("contains no decodable video frames")
            for name, stage in stages.items():
                writer.append(stage.group_name(), runs[name].finish())
            if old is not None:
                old.close()
                old = None
            writer.commit({stages[n].group_name(): runs[n].attrs for n in todo})
            return done
        except BaseException:
            writer.abort()
            for run in runs.values():
                run.abort()
            raise
        finally:
            if old is not None:
                old.close()


# --- worker processes -------------------------------------------------------------

_worker: Extractor | None = None
_worker_queue: Any = None


def _init_worker(args: tuple, threads: int, q: Any, log_level: int) -> None:
    global _worker, _worker_queue
    configure_logging(log_level)
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    try:
        import torch

        torch.set_num_threads(threads)
    except ImportError:
        pass
    _worker = Extractor(*args)
    _worker_queue = q


def _work(source: VideoSource) -> VideoResult:
    assert _worker is not None
    return _worker.run(source, on_frames=_worker_queue.put)


def extract(
    inputs: list[str | Path],
    store: str | Path = "features",
    stages: list[str] | None = None,
    recipe: str | Path | None = None,
    params: dict[str, dict] | None = None,
    force: bool = False,
    workers: int = 1,
    device: str = "auto",
    progress: bool = False,
) -> Summary:
    """Extract features of every video found in ``inputs`` into ``store``.

    Parameters
    ----------
    inputs : video files and/or folders (searched recursively).
    store : folder of the per-video HDF5 stores (created when missing).
    stages : stage names to run (their dependencies are added); default: the recipe's.
    recipe : built-in recipe name or YAML path; default ``thesis``.
    params : ``{stage: {param: value}}`` overriding the recipe.
    force : re-run the stages even when their stored parameters match.
    workers : videos processed in parallel processes.
    device : "auto", "cpu" or "cuda[:N]" for the neural stages.
    progress : show progress bars (videos, frames/s).

    Returns
    -------
    Summary with one VideoResult per input; inputs that are missing or hold no videos
    are failed results too.
    """
    plan = Plan.make(stages, recipe, params)
    device = resolve_device(device)
    for name in plan.order:
        stage_api.stage_class(name).prepare(plan.params[name], progress)
    sources, problems = find_videos(inputs)
    results = [VideoResult(path, "", "failed", reason) for path, reason in problems]
    for path, reason in problems:
        log.error("%s: %s", path, reason)
    Path(store).mkdir(parents=True, exist_ok=True)
    log.info("extracting %s from %d video(s) into %s on %s", ",".join(plan.order), len(sources), store, device)
    workers = max(1, min(workers, len(sources) or 1))
    with progress_bar(len(sources), "videos", "video", progress) as vbar, progress_bar(None, "frames", "frame", progress, position=1) as fbar:
        def finished(result: VideoResult) -> None:
            results.append(result)
            vbar.update(1)

        if workers == 1:
            extractor = Extractor(store, plan, device, force)
            try:
                for source in sources:
                    finished(extractor.run(source, on_frames=fbar.update))
            finally:
                extractor.close()
        else:
            _run_pool(sources, (store, plan, device, force), workers, finished, fbar.update)
    return Summary(results)


def _run_pool(sources, args, workers: int, finished, on_frames) -> None:
    ctx = mp.get_context("spawn")  # MediaPipe and PyTorch do not survive fork
    threads = max(1, (os.cpu_count() or 1) // workers)
    crashes: dict[VideoSource, int] = {}
    remaining = list(sources)
    while remaining:
        q = ctx.Queue()  # frame counts from the workers, for the frames/s bar
        with cf.ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker, initargs=(args, threads, q, logging.getLogger().level)) as pool:
            pending = {pool.submit(_work, s): s for s in remaining}
            remaining = []
            while pending:
                done, _ = cf.wait(pending, timeout=0.25, return_when=cf.FIRST_COMPLETED)
                _drain(q, on_frames)
                for fut in done:
                    source = pending.pop(fut)
                    try:
                        finished(fut.result())
                    except cf.process.BrokenProcessPool:
                        # A worker died (native crash, out of memory) and took the pool
                        # with it; we cannot tell whose video did it, so each video in
                        # flight gets one more try in a fresh pool.
                        crashes[source] = crashes.get(source, 0) + 1
                        if crashes[source] > 1:
                            finished(VideoResult(str(source.path), source.video_id, "failed", "worker process crashed"))
                        else:
                            remaining.append(source)
        _drain(q, on_frames)


def _drain(q, on_frames) -> None:
    while True:
        try:
            on_frames(q.get_nowait())
        except queue.Empty:
            return
