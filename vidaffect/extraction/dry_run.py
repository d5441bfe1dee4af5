"""What an extraction would do, without doing it (``vidaffect extract --dry-run``): the
videos and their frames (probed from the containers), the stages each still needs given
its store, and the time this machine should take (:mod:`.costs`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from vidaffect.extraction.costs import Costs, FrameCost, estimate_seconds
from vidaffect.extraction.engine import Extractor, Plan
from vidaffect.extraction.pool import WorkerPlan
from vidaffect.extraction.summary import failure_reason
from vidaffect.io.video import VideoSource, probe
from vidaffect.stages import registry


@dataclass
class VideoWork:
    """One video of a dry run: its frames (the container's count, or duration x rate
    when the container does not say), the stages still to run, or why it cannot be
    read."""

    path: str
    video_id: str
    frames: int = 0
    todo: list[str] = field(default_factory=list)
    problem: str = ""


@dataclass
class DryRun:
    videos: list[VideoWork]
    workers: WorkerPlan
    device: str
    seconds: float
    costs: Costs
    unknown: list[str]  # stages to run whose cost is not measured (not in the estimate)

    @property
    def todo(self) -> list[VideoWork]:
        return [v for v in self.videos if v.todo]

    def report(self) -> str:
        """The table of videos, then the totals and the estimate, for the terminal."""
        width = max([len(v.path) for v in self.videos] + [5])
        lines = [f"{'video':<{width}}  {'frames':>8}  stages to run"]
        for v in self.videos:
            what = v.problem and f"cannot be read: {v.problem}" or ",".join(v.todo) or "(up to date)"
            lines.append(f"{v.path:<{width}}  {v.frames if not v.problem else '':>8}  {what}")
        todo = self.todo
        frames = sum(v.frames for v in todo)
        unreadable = sum(bool(v.problem) for v in self.videos)
        lines += [
            "",
            f"{len(self.videos)} video(s): {len(todo)} to extract ({frames} frames), "
            f"{len(self.videos) - len(todo) - unreadable} up to date, {unreadable} unreadable",
        ]
        if todo:
            unknown = f"; not counted: {', '.join(self.unknown)} (cost not measured)" if self.unknown else ""
            lines.append(
                f"estimated time: {format_duration(self.seconds)} on {self.device} ({self.workers.reason}){unknown}"
            )
            lines.append(f"costs: {self.costs.source}")
        return "\n".join(lines)


def format_duration(seconds: float) -> str:
    """``42 s``, ``3 min 20 s``, ``5 h 07 min``."""
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def plan_batch(
    sources: list[VideoSource],
    problems: list[tuple[str, str]],
    store: Path,
    plan: Plan,
    force: bool,
    device: str,
    workers: WorkerPlan,
    costs: Costs,
) -> DryRun:
    """Probe every video, compare its store with ``plan`` and estimate the time.

    Parameters
    ----------
    sources, problems : from :func:`~vidaffect.io.video.find_videos`
    store : Path
        The store folder (read only).
    plan : Plan
    force : bool
        Every stage counts as still to run.
    device : str
        Resolved device of the neural stages.
    workers : WorkerPlan
        The worker processes the run would use.
    costs : Costs
        Per-frame costs of this machine.
    """
    videos = [VideoWork(path, "", problem=reason) for path, reason in problems]
    work = FrameCost()
    share = {name: registry.stage_class(name).cost_share(plan.params[name]) for name in plan.order}
    extractor = Extractor(store, plan, device, force)  # models load only when a video opens
    try:
        for source in sources:
            video = VideoWork(str(source.path), source.video_id)
            videos.append(video)
            try:
                info = probe(source)
                video.todo = extractor.pending_stages(info)
            except Exception as exc:  # reported like the run would report it
                video.problem = failure_reason(exc)
                continue
            video.frames = info.frame_count or round(info.duration * info.fps)
            if video.todo:
                work = work + costs.frame_seconds(video.todo, device, share) * video.frames
    finally:
        extractor.close()
    seconds = estimate_seconds(costs, work, workers.workers, workers.threads)
    return DryRun(videos, workers, device, seconds, costs, work.unknown)
