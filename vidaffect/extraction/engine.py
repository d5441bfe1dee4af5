"""The extract engine: decode every video once, run the stages it still needs, store.

Each video is independent: a failure (unreadable file, a stage error) is recorded in
the summary and the batch goes on; the video's existing store is left as it was.
Stages whose stored parameter hash matches are skipped, so a re-run after an
interruption only does what is missing.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from vidaffect.errors import ParameterError
from vidaffect.extraction.summary import VideoResult, failure_reason
from vidaffect.io.recipe import load_recipe
from vidaffect.io.store import StoreWriter, completed_stages, locked, read_rows, store_path
from vidaffect.io.video import AudioChunk, VideoError, VideoInfo, VideoSource, decode, probe
from vidaffect.stages import registry
from vidaffect.stages.base import Batch, StageRun
from vidaffect.stages.params import StageParams

# Per-video outcomes are logged under the command's name, in workers too.
log = logging.getLogger("vidaffect.extract")

BATCH_FRAMES = 32  # frames handed to the stages at once: one encoder batch


@dataclass
class Plan:
    """What to extract: stage names in dependency order, their checked Params and
    their hashes.  Made in the main process, so a bad parameter is one line there
    before any worker starts."""

    order: list[str]
    params: dict[str, StageParams]
    hashes: dict[str, str]

    @classmethod
    def make(
        cls, stages: list[str] | None, recipe: str | Path | None = None, params: dict[str, dict] | None = None
    ) -> Plan:
        spec = load_recipe(recipe)
        names = list(stages) if stages else list(spec["stages"])
        params = params or {}
        unknown = set(params) - set(registry.STAGE_CLASSES)
        if unknown:
            raise ParameterError(f"parameters given for unknown stage(s) {', '.join(sorted(unknown))}")
        order = registry.resolve_order(names)
        resolved: dict[str, StageParams] = {}
        hashes: dict[str, str] = {}
        for name in order:
            stage = registry.stage_class(name)
            overrides = {**spec["stages"].get(name, {}), **params.get(name, {})}
            resolved[name] = registry.make_params(stage, overrides)
            hashes[name] = registry.params_hash(stage, resolved[name], [hashes[d] for d in stage.requires])
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
        self.stages = {n: registry.stage_class(n)(plan.params[n], device) for n in plan.order}

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
        except KeyboardInterrupt:
            raise
        except Exception as exc:  # one video's failure must not stop the batch
            if not isinstance(exc, VideoError):
                log.debug("%s failed", source.path, exc_info=True)
            result.reason = failure_reason(exc)
        result.seconds = time.perf_counter() - t0
        if result.status == "failed":
            log.error("%s: %s", source.path, result.reason)
        return result

    def _extract(
        self, info: VideoInfo, path: Path, todo: list[str], existing: dict[str, tuple[str, str]], on_frames: Callable[[int], None] | None
    ) -> int:
        stages = {n: self.stages[n] for n in todo}
        needed_by_others = {dep for n in todo for dep in stages[n].requires}
        cached_inputs = [
            f"{g}/{d}"
            for dep in needed_by_others - set(todo)
            for g in [registry.stage_class(dep).group_name()]
            for d in self.stages[dep].outputs()
        ]
        todo_groups = {stages[n].group_name() for n in todo}
        keep = [g for g, _ in existing.values() if g not in todo_groups]
        groups = {
            s.group_name(): (n, s.outputs(), s.params.as_dict(), self.plan.hashes[n], s.version)
            for n, s in stages.items()
        }
        writer = StoreWriter(path, info, groups, keep)
        old = h5py.File(path, "r") if cached_inputs else None
        runs: dict[str, StageRun] = {}
        try:
            for n, s in stages.items():
                runs[n] = s.open(info, path)
            audio_runs = [runs[n] for n, s in stages.items() if s.uses_audio]
            want_images = any(s.uses_images for s in stages.values())
            rates = {s.audio_rate() for s in stages.values() if s.uses_audio}
            if len(rates) > 1:
                raise ParameterError(f"audio stages want different sample rates {sorted(rates)}")
            timestamps: list[float] = []
            images: list[np.ndarray] = []
            done = 0

            def flush() -> None:
                nonlocal done
                if not timestamps:
                    return
                n = len(timestamps)
                ts = np.asarray(timestamps, np.float64)
                batch = Batch(
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
                if item.image is not None:
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
