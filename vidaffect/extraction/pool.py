"""Extracting videos in parallel worker processes.

Workers are started with ``spawn`` (MediaPipe and PyTorch do not survive ``fork``), each
loads the stages' models once, and sends frame counts back for the progress bar.  When
a worker dies (a native crash, out of memory) it takes the pool with it and we cannot
tell whose video did it, so every video in flight gets one more try in a fresh pool.
When a result says the store cannot be written, the videos not started yet are
cancelled; those in flight finish (or fail the same way) before the pool closes.
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import multiprocessing as mp
import os
import queue
from collections.abc import Callable
from pathlib import Path
from typing import Any

from vidaffect.extraction.engine import Extractor, Plan
from vidaffect.extraction.summary import VideoResult
from vidaffect.io.video import VideoSource
from vidaffect.util.terminal import configure_logging

_worker: Extractor | None = None
_worker_queue: Any = None


def _init_worker(args: tuple[Path, Plan, str, bool], threads: int, q: Any, log_level: int) -> None:
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


def run_pool(
    sources: list[VideoSource],
    args: tuple[Path, Plan, str, bool],
    workers: int,
    finished: Callable[[VideoResult], bool],
    on_frames: Callable[[int], Any],
) -> None:
    """Extract ``sources`` in ``workers`` processes, each holding ``Extractor(*args)``;
    ``finished`` gets every result and returns False to stop the batch (videos not
    started are then never started), ``on_frames`` the frame counts as they come."""
    ctx = mp.get_context("spawn")  # MediaPipe and PyTorch do not survive fork
    threads = max(1, (os.cpu_count() or 1) // workers)
    crashes: dict[VideoSource, int] = {}
    remaining = list(sources)
    stop = False
    while remaining and not stop:
        q = ctx.Queue()  # frame counts from the workers, for the frames/s bar
        with cf.ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker, initargs=(args, threads, q, logging.getLogger().level)) as pool:
            pending = {pool.submit(_work, s): s for s in remaining}
            remaining = []
            while pending:
                done, _ = cf.wait(pending, timeout=0.25, return_when=cf.FIRST_COMPLETED)
                _drain(q, on_frames)
                for fut in done:
                    source = pending.pop(fut)
                    if fut.cancelled():
                        continue
                    try:
                        keep_going = finished(fut.result())
                    except cf.process.BrokenProcessPool:
                        crashes[source] = crashes.get(source, 0) + 1
                        if crashes[source] > 1:
                            keep_going = finished(VideoResult(str(source.path), source.video_id, "failed", "worker process crashed"))
                        else:
                            remaining.append(source)
                            continue
                    if not keep_going and not stop:
                        stop = True
                        for other in pending:
                            other.cancel()
        _drain(q, on_frames)


def _drain(q: Any, on_frames: Callable[[int], Any]) -> None:
    while True:
        try:
            on_frames(q.get_nowait())
        except queue.Empty:
            return
