"""`vidaffect extract`: features of whole folders of videos into cached HDF5 stores.

The stages and their parameters come from a recipe (``pipelines/thesis.yaml`` by
default) with overrides; the plan is checked here, in the main process, before any
video is touched.  Every source file is given the id of the store it already has
(:func:`vidaffect.io.store_lookup.assign_stores`), so ``extract ./videos`` and a later
``predict ./videos/test`` use the same stores.  Then every video is extracted by
:class:`~vidaffect.extraction.engine.Extractor`, in this process, in worker processes
(:mod:`~vidaffect.extraction.pool`, with a shared encoder process on a GPU:
:mod:`~vidaffect.extraction.encoder_service`) or in Ray tasks
(:mod:`~vidaffect.extraction.ray_executor`); when the store folder cannot be written
(full disk, read-only) the batch stops at once, since no other video could be stored
either.  :func:`dry_run` says what a run would do and how long it would take.
"""

from __future__ import annotations

import logging
from pathlib import Path

from vidaffect.errors import ParameterError
from vidaffect.extraction.costs import load_costs
from vidaffect.extraction.dry_run import DryRun, plan_batch
from vidaffect.extraction.encoder_service import EncoderService, encoder_keys
from vidaffect.extraction.engine import Extractor, Plan
from vidaffect.extraction.pool import plan_workers, run_pool
from vidaffect.extraction.summary import Summary, VideoResult
from vidaffect.io.store import write_fault
from vidaffect.io.store_lookup import assign_stores
from vidaffect.io.video import find_videos
from vidaffect.stages import registry
from vidaffect.util.device import resolve_device
from vidaffect.util.terminal import progress_bar
from vidaffect.util.threads import available_cores

log = logging.getLogger("vidaffect.extract")

EXECUTORS = ("local", "ray")  # what --executor accepts


def extract(
    inputs: list[str | Path],
    store: str | Path = "features",
    stages: list[str] | None = None,
    recipe: str | Path | None = None,
    params: dict[str, dict] | None = None,
    force: bool = False,
    workers: int | str = 1,
    device: str = "auto",
    progress: bool = False,
    shared_encoder: bool | None = None,
    executor: str = "local",
    ray_address: str | None = None,
) -> Summary:
    """Extract features of every video found in ``inputs`` into ``store``.

    Parameters
    ----------
    inputs : list of str or Path
        Video files and/or folders (searched recursively).
    store : str or Path, default "features"
        Folder of the per-video HDF5 stores (created when missing).
    stages : list of str or None, default None
        Stage names to run (their dependencies are added); None: the recipe's.
    recipe : str, Path or None, default None
        Built-in recipe name or YAML path; None: ``thesis``.
    params : dict or None, default None
        ``{stage: {param: value}}`` overriding the recipe; checked here, before any
        work starts.
    force : bool, default False
        Re-run the stages even when their stored parameters match.
    workers : int or "auto", default 1
        Videos processed in parallel processes; each process's thread pools get
        cores / workers threads.  "auto": one per core while there are videos and
        memory for them (see :func:`~vidaffect.extraction.pool.plan_workers`).
    device : str, default "auto"
        "auto", "cpu" or "cuda[:N]" for the neural stages.
    progress : bool, default False
        Show progress bars (videos, frames/s).
    shared_encoder : bool or None, default None
        Workers send their face crops to one encoder process that batches across
        them (:mod:`~vidaffect.extraction.encoder_service`); None: on a GPU only.
    executor : str, default "local"
        "local" (this machine) or "ray" (one task per video on a Ray cluster).
    ray_address : str or None, default None
        The Ray cluster to connect to (``auto`` or ``HOST:PORT``); None: the one this
        process is connected to, else a private cluster on this machine.

    Returns
    -------
    Summary
        One VideoResult per input; inputs that are missing or hold no videos are
        failed results too.  When the store cannot be written the batch stops: the
        result that met it is ``fatal`` and the videos not started are counted in
        ``not_attempted``.

    Raises
    ------
    UserError
        Unknown stage, bad parameter, no GPU for ``device="cuda"``.
    SetupError
        A model file is missing and cannot be downloaded.
    """
    if executor not in EXECUTORS:
        raise ParameterError(f"--executor {executor!r}: choose one of {', '.join(EXECUTORS)}")
    plan = Plan.make(stages, recipe, params)
    if executor == "local":  # a Ray cluster decides its device itself
        device = resolve_device(device)
    for name in plan.order:
        registry.stage_class(name).prepare(plan.params[name], progress)
    sources, problems = find_videos(inputs)
    sources, taken = assign_stores(sources, store)
    problems += taken
    results = [VideoResult(path, "", "failed", reason) for path, reason in problems]
    for path, reason in problems:
        log.error("%s: %s", path, reason)
    try:
        Path(store).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        fault = write_fault(exc, Path(store))
        if fault is None:
            raise
        stop = VideoResult(str(store), "", "failed", str(fault), fatal=True)
        return Summary([*results, stop], not_attempted=len(sources))
    log.info("extracting %s from %d video(s) into %s%s", ",".join(plan.order), len(sources), store, f" on {device}" if executor == "local" else "")
    keys = encoder_keys(plan.params) if (device.startswith("cuda") if shared_encoder is None else shared_encoder) else []
    sizing = plan_workers(workers, len(sources), load_costs(), shared_encoder=bool(keys))
    if executor == "local" and sources:
        log.info("%s", sizing.reason)
    started = 0
    with progress_bar(len(sources), "videos", "video", progress) as vbar, progress_bar(None, "frames", "frame", progress, position=1) as fbar:

        def finished(result: VideoResult) -> bool:
            """Record a result; False when the batch must stop."""
            nonlocal started
            started += 1
            results.append(result)
            vbar.update(1)
            return not result.fatal

        if executor == "ray":
            from vidaffect.extraction.ray_executor import run_ray

            run_ray(sources, (Path(store), plan, device, force), finished, fbar.update, ray_address)
            return Summary(results, not_attempted=len(sources) - started)
        service = None
        if keys and sources:
            # On a GPU the encoder process needs a core for copies and kernel launches;
            # on the CPU it gets a worker's threads, so its passes equal a worker's.
            spare = max(1, available_cores() - sizing.workers * sizing.threads)
            service = EncoderService(plan.params, device, sizing.workers, threads=spare if device.startswith("cuda") else sizing.threads)
        try:
            if sizing.workers == 1:
                if service is not None:
                    service.client(0).install()
                extractor = Extractor(store, plan, device, force)
                try:
                    for source in sources:
                        if not finished(extractor.run(source, on_frames=fbar.update)):
                            break
                finally:
                    extractor.close()
            else:
                run_pool(sources, (Path(store), plan, device, force), sizing, finished, fbar.update, service)
        finally:
            if service is not None:
                service.close()
    return Summary(results, not_attempted=len(sources) - started)


def dry_run(
    inputs: list[str | Path],
    store: str | Path = "features",
    stages: list[str] | None = None,
    recipe: str | Path | None = None,
    params: dict[str, dict] | None = None,
    force: bool = False,
    workers: int | str = 1,
    device: str = "auto",
) -> DryRun:
    """What :func:`extract` with these arguments would do, without doing it: the videos
    and their frame counts (probed), the stages each still needs, and an estimated time
    on this machine from its measured costs (:mod:`~vidaffect.extraction.costs`).
    Nothing is written and no model is loaded."""
    plan = Plan.make(stages, recipe, params)
    device = resolve_device(device)
    sources, problems = find_videos(inputs)
    sources, taken = assign_stores(sources, store, update=False)
    costs = load_costs()
    return plan_batch(sources, problems + taken, Path(store), plan, force, device, plan_workers(workers, len(sources), costs), costs)
