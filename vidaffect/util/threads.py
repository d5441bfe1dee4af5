"""Thread pools sized to a process's share of the cores.

Every native library in an extraction process keeps its own thread pool, sized by
default to every core of the machine: PyTorch (intra-op and inter-op), OpenCV, the BLAS
and OpenMP runtimes under numpy and scipy, MediaPipe's graph scheduler.  With several
worker processes that oversubscribes the CPU (16 workers x 16 threads on a 16-core
machine) and spinning threads waste a fifth of the CPU time or more.  A worker therefore
calls :func:`limit_threads` with ``cores // workers`` first thing.

Libraries read their environment variables (``OMP_NUM_THREADS``, ...) once, when they
load, and in a spawned worker numpy is already loaded by the time an initializer runs;
so :func:`limit_threads` sets the runtime limits of what is loaded (PyTorch, OpenCV,
threadpoolctl for BLAS/OpenMP) as well as the variables, and the parent starts its
workers inside :func:`worker_environment` so that even what they import while starting
sees the limit.  MediaPipe has no such setting; :mod:`vidaffect.stages.mediapipe_solutions`
reads :func:`thread_limit` when it builds a graph.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator

log = logging.getLogger(__name__)

# Read by OpenMP (PyTorch, OpenCV), OpenBLAS, MKL, numexpr, Accelerate and BLIS at load time.
THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS", "VECLIB_MAXIMUM_THREADS", "BLIS_NUM_THREADS")

_limit: int | None = None  # set by limit_threads in this process


def available_cores() -> int:
    """CPU cores this process may use (a container's or ``taskset``'s limit, not the
    host's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def thread_env(threads: int) -> dict[str, str]:
    """The environment variables that size native thread pools, all set to ``threads``."""
    return {name: str(threads) for name in THREAD_ENV}


@contextlib.contextmanager
def worker_environment(threads: int) -> Iterator[None]:
    """Set the thread variables while worker processes start (they inherit the
    environment), and restore the parent's afterwards."""
    saved = {name: os.environ.get(name) for name in THREAD_ENV}
    os.environ.update(thread_env(threads))
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def limit_threads(threads: int) -> None:
    """Size every thread pool of this process to ``threads``.

    Sets the thread environment variables (for libraries loaded later and for child
    processes), PyTorch's intra-op and, while it can still change, inter-op pool,
    OpenCV's pool, and the pools of BLAS/OpenMP libraries already loaded
    (threadpoolctl).  MediaPipe graphs built afterwards read :func:`thread_limit`.

    Parameters
    ----------
    threads : int
        Threads per pool, at least 1; normally ``cores // workers``.
    """
    global _limit
    threads = max(1, int(threads))
    _limit = threads
    os.environ.update(thread_env(threads))
    import cv2
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(threads)
    if torch.get_num_interop_threads() != threads:
        # Settable once, before any inter-op work; inference never uses that pool, so
        # a process that already started it keeps it.
        with contextlib.suppress(RuntimeError):
            torch.set_num_interop_threads(threads)
    cv2.setNumThreads(threads)
    threadpool_limits(limits=threads)
    log.debug("thread pools limited to %d thread(s)", threads)


def thread_limit() -> int | None:
    """The limit :func:`limit_threads` set in this process, or None (library defaults)."""
    return _limit
