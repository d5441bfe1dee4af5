"""`vidaffect extract`: features of whole folders of videos into cached HDF5 stores.

The stages and their parameters come from a recipe (``pipelines/thesis.yaml`` by
default) with overrides; the plan is checked here, in the main process, before any
video is touched.  Every source file is given the id of the store it already has
(:func:`vidaffect.io.store_lookup.assign_stores`), so ``extract ./videos`` and a later
``predict ./videos/test`` use the same stores.  Then every video is extracted by
:class:`~vidaffect.extraction.engine.Extractor`, in this process or in worker
processes; when the store folder cannot be written (full disk, read-only) the batch
stops at once, since no other video could be stored either.
"""

from __future__ import annotations

import logging
from pathlib import Path

from vidaffect.extraction.engine import Extractor, Plan
from vidaffect.extraction.pool import run_pool
from vidaffect.extraction.summary import Summary, VideoResult
from vidaffect.io.store import write_fault
from vidaffect.io.store_lookup import assign_stores
from vidaffect.io.video import find_videos
from vidaffect.stages import registry
from vidaffect.util.device import resolve_device
from vidaffect.util.terminal import progress_bar

log = logging.getLogger("vidaffect.extract")


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
    workers : int, default 1
        Videos processed in parallel processes.
    device : str, default "auto"
        "auto", "cpu" or "cuda[:N]" for the neural stages.
    progress : bool, default False
        Show progress bars (videos, frames/s).

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
    plan = Plan.make(stages, recipe, params)
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
    log.info("extracting %s from %d video(s) into %s on %s", ",".join(plan.order), len(sources), store, device)
    workers = max(1, min(workers, len(sources) or 1))
    started = 0
    with progress_bar(len(sources), "videos", "video", progress) as vbar, progress_bar(None, "frames", "frame", progress, position=1) as fbar:

        def finished(result: VideoResult) -> bool:
            """Record a result; False when the batch must stop."""
            nonlocal started
            started += 1
            results.append(result)
            vbar.update(1)
            return not result.fatal

        if workers == 1:
            extractor = Extractor(store, plan, device, force)
            try:
                for source in sources:
                    if not finished(extractor.run(source, on_frames=fbar.update)):
                        break
            finally:
                extractor.close()
        else:
            run_pool(sources, (Path(store), plan, device, force), workers, finished, fbar.update)
    return Summary(results, not_attempted=len(sources) - started)
