"""What happened to each video of a batch, and the summary the commands print."""

from __future__ import annotations

from dataclasses import dataclass, field

from vidaffect.errors import SetupError, UserError
from vidaffect.io.video import VideoError


@dataclass
class VideoResult:
    """What happened to one video.  A video with a failed stage is ``failed`` (its
    ``reason`` names the stage) even when its other stages were stored (``stages``)."""

    path: str
    video_id: str
    status: str  # "done" | "skipped" | "failed"
    reason: str = ""
    frames: int = 0
    seconds: float = 0.0
    stages: list[str] = field(default_factory=list)  # stages stored in this run
    failed_stages: dict[str, str] = field(default_factory=dict)  # stage -> reason
    fatal: bool = False  # the store cannot be written: no later video can succeed
    attempts: int = 1  # more than 1: a worker process crashed and the video was tried again


def failure_reason(exc: BaseException) -> str:
    """One summary line for an error: the message's first line, after the exception's
    type unless it is one of vidaffect's own (whose messages are written for users)."""
    text = str(exc).strip()
    first = text.splitlines()[0] if text else ""
    if isinstance(exc, (UserError, SetupError, VideoError)) and first:
        return first
    return f"{type(exc).__name__}: {first}"


@dataclass
class Summary:
    results: list[VideoResult]
    not_attempted: int = 0  # videos left when the batch stopped on a fatal result

    def count(self, status: str) -> int:
        return sum(r.status == status for r in self.results)

    @property
    def failed(self) -> list[VideoResult]:
        return [r for r in self.results if r.status == "failed"]

    @property
    def stopped(self) -> VideoResult | None:
        """The fatal result the batch stopped on, if any."""
        return next((r for r in self.results if r.fatal), None)

    @property
    def exit_code(self) -> int:
        return 1 if self.failed else 0

    @property
    def retried(self) -> list[VideoResult]:
        """Videos tried again because a worker process crashed."""
        return [r for r in self.results if r.attempts > 1]

    def report(self) -> str:
        frames = sum(r.frames for r in self.results if r.status == "done")
        secs = sum(r.seconds for r in self.results if r.status == "done")
        stopped, retried = self.stopped, self.retried
        lines = [
            f"{self.count('done')} done, {self.count('skipped')} skipped (up to date), {len(self.failed)} failed"
            + (f", {self.not_attempted} not attempted" if self.not_attempted else "")
            + (f", {len(retried)} retried after a worker process crashed" if retried else "")
            + (f"; {frames} frames in {secs:.1f} s of stage work" if frames else "")
        ]
        # Videos in flight when the store failed fail the same way: the stop says it once.
        lines += [f"  FAILED {r.path}: {r.reason}" for r in self.failed if not r.fatal]
        if stopped is not None:
            lines.append(f"stopped: {stopped.reason}" + (f" ({stopped.path})" if stopped.video_id else ""))
        return "\n".join(lines)
