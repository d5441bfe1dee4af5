"""Extracting videos in parallel worker processes.

Workers are started with ``spawn`` (MediaPipe and PyTorch do not survive ``fork``), each
loads the stages' models once, and sends frame counts back for the progress bar.  Each
worker's thread pools are sized so that workers x threads = cores
(:mod:`vidaffect.util.threads`); :func:`plan_workers` chooses the count for
``--workers auto``.  With a shared encoder (:mod:`.encoder_service`) the workers send
their face crops to it instead of loading the encoder themselves.  When a worker dies (a
native crash, out of memory) it takes the pool with it and we cannot tell whose video
did it, so every video in flight gets one more try in a fresh pool.  Each worker gets
one video at a time; when a result says the store cannot be written no further video
is started, and those in flight finish (or fail the same way) before the pool closes.
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import multiprocessing as mp
import queue
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vidaffect.errors import ParameterError
from vidaffect.extraction.costs import Costs
from vidaffect.extraction.encoder_service import EncoderClient, EncoderService
from vidaffect.extraction.engine import Extractor, Plan
from vidaffect.extraction.summary import VideoResult
from vidaffect.io.video import VideoSource
from vidaffect.util.terminal import configure_logging
from vidaffect.util.threads import available_cores, limit_threads, worker_environment

log = logging.getLogger("vidaffect.extract")

AUTO = "auto"
MEMORY_HEADROOM = 0.85  # of the available memory, the share workers may fill

_worker: Extractor | None = None
_worker_queue: Any = None


@dataclass(frozen=True)
class WorkerPlan:
    """How many worker processes, and how many threads each (workers x threads fills the
    cores); ``reason`` says why, for the log."""

    workers: int
    threads: int
    reason: str


def available_memory_mb() -> float:
    """Memory that can be used without swapping (Linux ``MemAvailable``), in MB; the
    physical memory where that is not known."""
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    import os

    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**20


def plan_workers(requested: int | str, videos: int, costs: Costs, shared_encoder: bool = False) -> WorkerPlan:
    """Worker processes and threads per worker for ``videos`` videos on this machine.

    ``auto``: one single-threaded worker per core, as long as there are videos and
    memory for them.  Every stage but the encoder's forward pass runs on one thread, so
    videos side by side use the cores better than threads inside one video (measured:
    2 workers x 1 thread extract 1.6 times faster than 1 x 2 on 2 cores).  With a shared
    encoder process one core is left to it (on machines with more than 2 cores).

    Parameters
    ----------
    requested : int or "auto"
        ``--workers``.
    videos : int
        Videos to extract; there are never more workers than videos.
    costs : Costs
        Gives the memory a worker needs (``worker_mb``).
    shared_encoder : bool, default False
        Whether a shared encoder process will run beside the workers.
    """
    cores = available_cores()
    videos = max(1, videos)
    if requested == AUTO:
        memory = available_memory_mb()
        by_memory = max(1, int(memory * MEMORY_HEADROOM // costs.worker_mb))
        by_cores = cores - 1 if shared_encoder and cores > 2 else cores
        workers = max(1, min(videos, by_cores, by_memory))
        threads = max(1, cores // workers)
        reason = (
            f"--workers auto: {workers} worker(s) x {threads} thread(s) for {videos} video(s) on {cores} cores, "
            f"{memory / 1024:.1f} GB available, about {costs.worker_mb / 1024:.1f} GB per worker"
        )
        return WorkerPlan(workers, threads, reason)
    if not isinstance(requested, int) or requested < 1:
        raise ParameterError(f"--workers {requested!r}: give a number of processes (1 or more) or {AUTO}")
    workers = min(requested, videos)
    threads = max(1, cores // workers)
    return WorkerPlan(workers, threads, f"{workers} worker(s) x {threads} thread(s) on {cores} cores")


def _init_worker(
    args: tuple[Path, Plan, str, bool], threads: int, q: Any, log_level: int, clients: list[EncoderClient] | None, free: Any
) -> None:
    global _worker, _worker_queue
    configure_logging(log_level)
    limit_threads(threads)
    if clients is not None:
        clients[free.get()].install()  # every worker its own client (its slots)
    _worker = Extractor(*args)
    _worker_queue = q


def start_workers(
    args: tuple[Path, Plan, str, bool], workers: WorkerPlan, frames: Any, service: EncoderService | None = None
) -> cf.ProcessPoolExecutor:
    """A pool of ``workers.workers`` processes, each with ``workers.threads`` threads per
    pool, holding ``Extractor(*args)`` (and a client of ``service`` when given) and
    putting frame counts on the queue ``frames``.  Start it inside
    :func:`~vidaffect.util.threads.worker_environment` (its processes start at the
    first submissions)."""
    ctx = mp.get_context("spawn")  # MediaPipe and PyTorch do not survive fork
    clients, free = None, ctx.Queue()
    if service is not None:  # queues travel only as arguments of a starting process
        clients = [service.client(i) for i in range(workers.workers)]
        for i in range(workers.workers):
            free.put(i)
    initargs = (args, workers.threads, frames, logging.getLogger().level, clients, free)
    return cf.ProcessPoolExecutor(workers.workers, mp_context=ctx, initializer=_init_worker, initargs=initargs)


def _work(source: VideoSource) -> VideoResult:
    assert _worker is not None
    return _worker.run(source, on_frames=_worker_queue.put)


def run_pool(
    sources: list[VideoSource],
    args: tuple[Path, Plan, str, bool],
    workers: WorkerPlan,
    finished: Callable[[VideoResult], bool],
    on_frames: Callable[[int], Any],
    service: EncoderService | None = None,
) -> None:
    """Extract ``sources`` in ``workers.workers`` processes of ``workers.threads``
    threads, each holding ``Extractor(*args)`` (and a client of ``service`` when
    given); ``finished`` gets every result and returns False to stop the batch (videos
    not started are then never started), ``on_frames`` the frame counts as they come."""
    crashes: dict[VideoSource, int] = {}
    remaining = list(sources)
    stop = False
    while remaining and not stop:
        q = mp.get_context("spawn").Queue()  # frame counts from the workers, for the frames/s bar
        with worker_environment(workers.threads), start_workers(args, workers, q, service) as pool:
            # One video per worker at a time (the executor would queue more): a batch
            # that stops leaves the others unstarted.
            waiting = deque(remaining)
            remaining = []
            pending: dict[cf.Future[VideoResult], VideoSource] = {}
            broken = False
            while pending or (waiting and not stop and not broken):
                while waiting and not stop and not broken and len(pending) < workers.workers:
                    source = waiting.popleft()
                    fut: cf.Future[VideoResult] = cf.Future()
                    try:
                        fut = pool.submit(_work, source)
                    except cf.process.BrokenProcessPool as exc:  # counted like a crash, so a pool that cannot start ends
                        fut.set_exception(exc)
                    pending[fut] = source
                done, _ = cf.wait(pending, timeout=0.25, return_when=cf.FIRST_COMPLETED)
                _drain(q, on_frames)
                if service is not None:
                    service.check()
                for fut in done:
                    source = pending.pop(fut)
                    try:
                        result = fut.result()
                        result.attempts += crashes.get(source, 0)
                    except cf.process.BrokenProcessPool:
                        broken = True
                        crashes[source] = crashes.get(source, 0) + 1
                        if crashes[source] > 1:
                            result = VideoResult(str(source.path), source.video_id, "failed", "worker process crashed (tried twice)", attempts=2)
                        else:
                            log.warning("%s: a worker process crashed; trying the video again", source.path)
                            remaining.append(source)
                            continue
                    if not finished(result):
                        stop = True
            remaining += waiting
        _drain(q, on_frames)


def _drain(q: Any, on_frames: Callable[[int], Any]) -> None:
    while True:
        try:
            on_frames(q.get_nowait())
        except queue.Empty:
            return
