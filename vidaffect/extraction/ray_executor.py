"""Extraction on a Ray cluster: one task per video (``vidaffect extract --executor ray``).

Each task runs the same :class:`~vidaffect.extraction.engine.Extractor` as a local run,
so the store semantics are the same: a store is written to a temporary file and renamed
when complete, a lock file per store keeps two tasks (or a task and a local run) from
writing it at once, stages already current are skipped, and a bad video becomes a
failed result instead of an exception.  A task whose worker process dies (a native
crash, killed for memory, its node lost) is run once more by Ray in a fresh process;
the summary says which videos were retried, and a video whose task died twice fails
alone.  Models load once per Ray worker process, which Ray reuses for later tasks.

Requirements of a multi-machine cluster (see the README):

* the store folder must be shared by every node at the same absolute path (NFS or
  similar, with working ``flock``); tasks write there directly;
* the videos must be readable by every node at the paths the driver sees;
* every node needs the same Python environment with vidaffect installed, and the
  encoder weights (the torch hub cache on shared storage, ``TORCH_HOME``, or
  ``--encoder-weights PATH`` on shared storage).

On a cluster with GPUs each task asks for a share of a GPU (GPUs / CPUs of the
cluster), so that every CPU can run a video while the networks share the GPUs.
Ray is an optional dependency: ``pip install 'vidaffect[ray]'``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from vidaffect.errors import ParameterError, SetupError
from vidaffect.extraction.engine import Extractor, Plan
from vidaffect.extraction.summary import VideoResult, failure_reason
from vidaffect.io.video import VideoSource
from vidaffect.stages import registry
from vidaffect.util.terminal import configure_logging
from vidaffect.util.threads import available_cores, limit_threads

log = logging.getLogger("vidaffect.extract")

RETRIES = 1  # a task whose worker process died runs once more
CPUS_PER_TASK = 1  # every stage but a network on the CPU runs on one thread
INSTALL_HINT = "pip install 'vidaffect[ray]'"

# Extractors of this Ray worker process, by (store, plan hashes, device, force).
_EXTRACTORS: dict[tuple[Any, ...], Extractor] = {}


def import_ray() -> Any:
    """The ``ray`` module, or a SetupError that says how to install it."""
    try:
        import ray
    except ImportError:
        raise SetupError(f"--executor ray needs Ray, which is not installed: {INSTALL_HINT}") from None
    return ray


class _Progress:
    """A small Ray actor: frames done (for the driver's progress bar) and the attempts
    of each video (a retried task starts twice)."""

    def __init__(self) -> None:
        self.frames = 0
        self.attempts: dict[str, int] = {}

    def add(self, frames: int) -> None:
        self.frames += frames

    def started(self, video_id: str) -> None:
        self.attempts[video_id] = self.attempts.get(video_id, 0) + 1

    def state(self) -> tuple[int, dict[str, int]]:
        return self.frames, self.attempts


def _extract_task(source: VideoSource, args: tuple[str, Plan, str, bool], threads: int, progress: Any, log_level: int) -> VideoResult:
    """The body of one task: extract one video in this Ray worker process."""
    import ray

    configure_logging(log_level)
    # Recorded (and waited for) before any work, so an attempt killed midway counts.
    ray.get(progress.started.remote(source.video_id))
    # Ray sets OMP_NUM_THREADS per task, but a reused worker keeps its first task's
    # PyTorch threads: set every pool for this task.
    limit_threads(threads)
    store, plan, device, force = args
    key = (store, tuple(sorted(plan.hashes.items())), device, force)
    if key not in _EXTRACTORS:
        _EXTRACTORS[key] = Extractor(store, plan, device, force)
    return _EXTRACTORS[key].run(source, on_frames=lambda n: progress.add.remote(n))


def _task_device(device: str, plan: Plan, resources: dict[str, float]) -> str:
    """The device tasks use, decided from the cluster (the driver may have no GPU)."""
    gpus = resources.get("GPU", 0.0)
    if device == "auto":
        return "cuda" if gpus else "cpu"
    if device.startswith("cuda") and not gpus:
        raise ParameterError(f"--device {device}: the Ray cluster has no GPU")
    if device.startswith("cuda:"):
        raise ParameterError("--device cuda:N does not apply to a Ray cluster, which assigns the GPUs; use --device cuda")
    return device


def _gpu_share(device: str, plan: Plan, resources: dict[str, float]) -> float:
    """The share of a GPU each task asks for: none on the CPU or when no stage runs a
    network; else GPUs / CPUs of the cluster (every CPU can run a task), at most 1."""
    if device == "cpu" or not any(registry.stage_class(n).neural for n in plan.order):
        return 0.0
    share = resources.get("GPU", 0.0) / max(1.0, resources.get("CPU", 1.0)) * CPUS_PER_TASK
    return min(1.0, round(share, 4)) or 0.0001


def run_ray(
    sources: list[VideoSource],
    args: tuple[Path, Plan, str, bool],
    finished: Callable[[VideoResult], bool],
    on_frames: Callable[[int], Any],
    address: str | None = None,
) -> str:
    """Extract ``sources`` with one Ray task per video; ``args`` are the
    :class:`Extractor`'s (store, plan, device, force), with ``device`` possibly
    ``auto`` (decided from the cluster).  ``finished`` gets every result and returns
    False to stop the batch (the tasks left are cancelled: the store cannot be
    written), ``on_frames`` the frames done.

    Uses the cluster this process is connected to; else connects to ``address``
    (``auto``: the cluster started on this machine with ``ray start``; or
    ``HOST:PORT``), else starts a private local cluster with this machine's cores and
    stops it at the end.  Returns a line describing the cluster.
    """
    ray = import_ray()
    store, plan, device, force = args
    started_here = not ray.is_initialized()
    if started_here:
        if not log.isEnabledFor(logging.DEBUG):
            logging.getLogger("ray").setLevel(logging.WARNING)
        local = {} if address else {"num_cpus": available_cores()}
        ray.init(address=address, include_dashboard=False, configure_logging=False, log_to_driver=log.isEnabledFor(logging.DEBUG), **local)
    progress = None
    try:
        resources = ray.cluster_resources()
        device = _task_device(device, plan, resources)
        gpus = _gpu_share(device, plan, resources)
        described = (
            f"Ray cluster: {len(ray.nodes())} node(s), {resources.get('CPU', 0):g} CPUs, {resources.get('GPU', 0):g} GPUs; "
            f"one task per video ({CPUS_PER_TASK} CPU" + (f", {gpus:g} GPU" if gpus else "") + f", device {device})"
        )
        log.info("%s", described)
        task = ray.remote(_extract_task).options(num_cpus=CPUS_PER_TASK, num_gpus=gpus, max_retries=RETRIES, retry_exceptions=False)
        progress = ray.remote(_Progress).options(num_cpus=0).remote()
        shared = ray.put((str(Path(store).resolve()), plan, device, force))  # sent once, not once per task
        level = logging.getLogger().level
        pending = {task.remote(s, shared, CPUS_PER_TASK, progress, level): s for s in sources}
        shown = 0
        while pending:
            done, _ = ray.wait(list(pending), num_returns=len(pending), timeout=0.5, fetch_local=False)
            frames, attempts = ray.get(progress.state.remote())
            on_frames(frames - shown)
            shown = frames
            for ref in done:
                source = pending.pop(ref)
                result = _result(ray, ref, source)
                result.attempts = max(result.attempts, attempts.get(source.video_id, 1))
                if result.status == "failed":  # the task's own log stays on its node
                    log.error("%s: %s", source.path, result.reason)
                if not finished(result):
                    for ref in pending:
                        ray.cancel(ref)
                    pending.clear()
                    break
        frames, _ = ray.get(progress.state.remote())
        on_frames(frames - shown)
        return described
    finally:
        if progress is not None:
            ray.kill(progress)
        if started_here:
            ray.shutdown()


def _result(ray: Any, ref: Any, source: VideoSource) -> VideoResult:
    """The task's result; a failed one when its worker died twice or it raised."""
    started = time.perf_counter()
    try:
        return ray.get(ref)
    except (ray.exceptions.WorkerCrashedError, ray.exceptions.NodeDiedError, ray.exceptions.OutOfMemoryError) as exc:
        reason = f"worker process crashed (tried {RETRIES + 1} times; {type(exc).__name__})"
        result = VideoResult(str(source.path), source.video_id, "failed", reason, attempts=RETRIES + 1)
    except ray.exceptions.RayTaskError as exc:  # Extractor.run raises nothing else than interrupts
        result = VideoResult(str(source.path), source.video_id, "failed", failure_reason(exc.cause or exc))
    except ray.exceptions.RayError as exc:
        result = VideoResult(str(source.path), source.video_id, "failed", failure_reason(exc))
    result.seconds = time.perf_counter() - started
    return result

