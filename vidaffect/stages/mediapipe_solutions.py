"""Loading MediaPipe's legacy solutions (face detection, face mesh, pose) and graphs made
of their parts (the face mesh on a given region) quietly, with their graph scheduler
sized to the process's thread limit, and restarting them between videos."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np

from vidaffect.util.threads import thread_limit

log = logging.getLogger(__name__)


@contextlib.contextmanager
def _native_stderr_silenced() -> Iterator[None]:
    """Send the process's stderr (file descriptor 2) to /dev/null for a moment.

    MediaPipe's C++ graphs (TensorFlow Lite, absl) print start-up notices straight to
    the file descriptor, where neither Python's logging nor environment variables reach
    them.  They are printed while a graph starts and runs its first frame, so only that
    moment is silenced; with vidaffect's debug logging on nothing is hidden.
    """
    if log.isEnabledFor(logging.DEBUG):
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def mediapipe_solution(factory: str, **options: Any) -> Any:
    """Create a MediaPipe legacy solution, e.g. ``"face_detection.FaceDetection"``,
    started quietly (see :func:`restart_quietly`).

    MediaPipe is imported here rather than at module level so that importing vidaffect
    (and ``vidaffect --help``) stays fast.
    """
    os.environ.setdefault("GLOG_minloglevel", "2")
    warnings.filterwarnings("ignore", message=r"SymbolDatabase\.GetPrototype", category=UserWarning)
    import mediapipe as mp

    module, cls = factory.split(".")
    with _native_stderr_silenced(), _graph_threads(thread_limit()):
        solution = getattr(getattr(mp.solutions, module), cls)(**options)
    restart_quietly(solution)
    return solution


def mediapipe_graph(config: str, blank_input: dict[str, Any], **options: Any) -> Any:
    """Start a MediaPipe graph given as a text ``CalculatorGraphConfig`` built from the
    subgraphs MediaPipe's legacy solutions ship (``SolutionBase`` keyword ``options``:
    ``side_inputs``, ``calculator_params``, ``outputs``), quietly: it runs once on
    ``blank_input`` while its start-up notices are silenced, its scheduler sized as
    :func:`mediapipe_solution`'s."""
    os.environ.setdefault("GLOG_minloglevel", "2")
    warnings.filterwarnings("ignore", message=r"SymbolDatabase\.GetPrototype", category=UserWarning)
    from mediapipe.python.solution_base import SolutionBase

    with _native_stderr_silenced(), _graph_threads(thread_limit()):
        graph = SolutionBase(graph_config=config, **options)
        graph.process(blank_input)
    return graph


@contextlib.contextmanager
def _graph_threads(threads: int | None) -> Iterator[None]:
    """Graphs built meanwhile get a scheduler of ``threads`` threads (None: MediaPipe's
    default, one per core).

    The legacy solutions offer no setting: the scheduler's executor is configured in
    the graph config that ``solution_base`` hands to ``CalculatorGraph``, so that
    constructor is wrapped for a moment (mediapipe is pinned, and a test checks the
    thread count).  The models themselves run on one thread on Linux desktops
    (TF-Lite XNNPACK's default there), which is left alone: more threads made pose
    several times slower on busy cores.
    """
    if threads is None:
        yield
        return
    from mediapipe.framework import thread_pool_executor_pb2
    from mediapipe.python import solution_base

    original = solution_base.calculator_graph.CalculatorGraph

    def capped(graph_config: Any) -> Any:
        # The canonical configs already hold an empty default executor, which excludes
        # the graph-level num_threads field: fill that executor in instead.
        executor = next((e for e in graph_config.executor if e.name == ""), None) or graph_config.executor.add()
        executor.type = "ThreadPoolExecutor"
        executor.options.Extensions[thread_pool_executor_pb2.ThreadPoolExecutorOptions.ext].num_threads = threads
        return original(graph_config=graph_config)

    solution_base.calculator_graph.CalculatorGraph = capped
    try:
        yield
    finally:
        solution_base.calculator_graph.CalculatorGraph = original


def restart_quietly(solution: Any) -> None:
    """Reset a MediaPipe solution (forgetting what it tracked) and run it once on a
    blank image, so that the notices its graph prints when it starts are silenced and
    the next video begins with nothing tracked."""
    with _native_stderr_silenced():
        solution.reset()
        solution.process(np.zeros((64, 64, 3), np.uint8))
