"""The extract engine: decode every video, run the stages it still needs, store.

A video is decoded once, or once per pass when some stage's rows are final only at the
end of the video or the video has several subjects (:mod:`.subjects`).

Each video is independent: a failure (unreadable file, a stage error) is recorded in
the summary and the batch goes on; the video's existing store is left as it was.
Within a video each stage succeeds or fails on its own (see :mod:`vidaffect.stages.base`):
the stages that do not depend on a failed one are still stored.  A store that cannot
be written (full disk, read-only folder) is different: no other video can succeed
either, so :meth:`Extractor.run` marks the result ``fatal`` and the batch stops.

A stage is current, and skipped, when its stored parameter hash matches and so does
the hash of the files it imports (and of those its inputs import); so a re-run after an
interruption only does what is missing, and an edited import is read again.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from vidaffect.errors import ParameterError, StoreWriteError
from vidaffect.extraction.subjects import Work, input_group, later_stages, subject_passes, subject_todo
from vidaffect.extraction.summary import VideoResult, failure_reason
from vidaffect.io.recipe import load_recipe
from vidaffect.io.store import (
    STORAGE_ERRNOS,
    SUBJECTS,
    GroupSpec,
    StoredStage,
    StoreWriter,
    completed_stages,
    locked,
    read_rows,
    store_path,
    subject_group,
    write_fault,
)
from vidaffect.io.video import AudioChunk, Frame, VideoError, VideoInfo, VideoSource, decode, frame_timestamps, probe
from vidaffect.stages import registry
from vidaffect.stages.base import Batch, Stage, StageRun, row_sets
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


def _digest(*parts: object) -> str:
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:16]


def without_hash(params_hash: str, missing: Iterable[str]) -> str:
    """The hash stored for a stage that ran without some of the stages it requires
    (they failed on the video): never the planned hash, so the next run redoes it."""
    return _digest(params_hash, "without", sorted(missing))


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
        """Extract one video, never raising for a problem with that video; a store that
        cannot be written gives a ``fatal`` result."""
        result = VideoResult(str(source.path), source.video_id, "failed")
        t0 = time.perf_counter()
        try:
            info = probe(source)
            path = store_path(self.store, source.video_id)
            keys = self._inputs_hashes(info)
            # Checked before taking the lock, so that up-to-date stores in a folder this
            # process cannot write (a shared, read-only feature folder) can be used.
            if self._todo(completed_stages(path, info), keys) or subject_todo(self.stages, self._todo, path, info, keys):
                with locked(path):
                    for work in self._passes(path, info, keys):
                        self._extract(info, path, work, keys, result, on_frames)
            if result.failed_stages:
                result.status = "failed"
                stored = f" ({', '.join(result.stages)} stored)" if result.stages else ""
                result.reason = "; ".join(f"{n}: {r}" for n, r in result.failed_stages.items()) + stored
            else:
                result.status = "done" if result.stages else "skipped"
        except KeyboardInterrupt:
            raise
        except StoreWriteError as exc:
            result.status, result.reason, result.fatal = "failed", str(exc), True
        except Exception as exc:  # one video's failure must not stop the batch
            if not isinstance(exc, VideoError):
                log.debug("%s failed", source.path, exc_info=True)
            result.status, result.reason = "failed", failure_reason(exc)
        result.seconds = time.perf_counter() - t0
        if result.status == "failed":
            log.error("%s: %s", source.path, result.reason)
        return result

    def pending_stages(self, info: VideoInfo) -> list[str]:
        """The stages :meth:`run` would extract for this video, from its store as it is
        now (read only; no model is loaded)."""
        return self._todo(completed_stages(store_path(self.store, info.video_id), info), self._inputs_hashes(info))

    def _inputs_hashes(self, info: VideoInfo) -> dict[str, str]:
        """Per stage, the hash of the files it imports for this video and of its
        inputs' hashes; "" when neither it nor its inputs import anything."""
        keys: dict[str, str] = {}
        for name in self.plan.order:
            stage = self.stages[name]
            try:
                files = stage.imported_files(info)
                own = _digest([(f.name, st.st_size, st.st_mtime_ns) for f in files for st in [os.stat(f)]]) if files is not None else ""
            except Exception:  # missing or unreadable: the stage fails when it opens them
                own = "unavailable"
            deps = [keys[d] for d in stage.requires if keys.get(d)]
            keys[name] = _digest(own, deps) if own or deps else ""
        return keys

    def _todo(self, existing: dict[str, StoredStage], keys: dict[str, str], names: Iterable[str] | None = None) -> list[str]:
        return [
            n
            for n in (self.plan.order if names is None else names)
            if self.force
            or n not in existing
            or existing[n].params_hash != self.plan.hashes[n]
            or existing[n].inputs_hash != keys[n]
        ]

    def _passes(self, path: Path, info: VideoInfo, keys: dict[str, str]) -> Iterator[Work]:
        """The passes over the video that bring its store up to date, each planned from
        the store as the previous pass left it: the stages of the whole video first,
        then (when some stage's rows are known only at the end of the video, see
        :meth:`Stage.whole_video`) the stages that read them, then each further subject
        (:mod:`.subjects`)."""
        todo = self._todo(completed_stages(path, info), keys)
        late = later_stages(self.stages, todo)
        for part in ([n for n in todo if n not in late], [n for n in todo if n in late]):
            if part:
                existing = completed_stages(path, info)
                keep = [s.group for s in existing.values() if s.group not in {self.stages[n].group_name() for n in part}]
                if not any(self.stages[n].whole_video() for n in part):
                    keep.append(SUBJECTS)  # the subjects' groups stay as they are
                yield Work(part, "", keep)
        yield from subject_passes(self.stages, self._todo, path, info, keys)

    def _extract(
        self,
        info: VideoInfo,
        path: Path,
        work: Work,
        keys: dict[str, str],
        result: VideoResult,
        on_frames: Callable[[int], None] | None,
    ) -> None:
        todo = work.stages
        stages = {n: self.stages[n] for n in todo}
        imports = any(_imports(s, info) for s in stages.values())
        if imports:
            info = dataclasses.replace(info, decoded_timestamps=frame_timestamps(info))
        needed_by_others = {dep for n in todo for dep in stages[n].requires}
        earlier_failed = {n for n in result.failed_stages if n in self.stages}
        # Rows of required stages done earlier are read from the store (not those of a
        # stage that failed in an earlier pass: its old rows would be stale).
        cached_inputs = {
            input_group(self.stages, dep, work.prefix) + "/" + d: f"{group}/{d}"
            for dep in needed_by_others - set(todo) - earlier_failed
            for group in [self.stages[dep].group_name()]
            for d in self.stages[dep].outputs()
        }
        groups = {
            work.prefix + s.group_name(): (n, s.outputs(), s.params.as_dict(), self.plan.hashes[n], s.version)
            for n, s in stages.items()
        }
        writer = StoreWriter(path, info, groups, work.keep)
        pass_ = _Pass(stages, writer, path, work.prefix, earlier_failed)
        old = h5py.File(path, "r") if cached_inputs else None
        try:
            for n in stages:
                pass_.open(n, info)
            audio_runs = [n for n, s in stages.items() if s.uses_audio]
            want_images = any(s.uses_images for s in stages.values())
            rates = {s.audio_rate() for s in stages.values() if s.uses_audio}
            if len(rates) > 1:
                raise ParameterError(f"audio stages want different sample rates {sorted(rates)}")
            timestamps: list[float] = []
            repaired: list[bool] = []
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
                writer.append_timestamps(ts, np.asarray(repaired, bool))
                for name, stage in stages.items():

                    def step(run: StageRun, name: str = name, stage: Stage = stage) -> None:
                        rows = run.process(batch)
                        if name in needed_by_others:
                            if any(len(v) != n for v in rows.values()):
                                raise RuntimeError(f"stage {name} must return one row per frame")
                            batch.inputs.update({stage.key(k): v for k, v in rows.items()})
                        writer.append(work.prefix + stage.group_name(), rows)

                    pass_.step(name, step)
                done += n
                timestamps.clear()
                repaired.clear()
                images.clear()
                if on_frames:
                    on_frames(n)

            items = _frames_only(info) if imports and not want_images and not audio_runs else decode(
                info, images=want_images, audio=bool(audio_runs), audio_rate=rates.pop() if rates else 0
            )
            for item in items:
                if isinstance(item, AudioChunk):
                    for name in audio_runs:
                        pass_.step(name, functools.partial(_add_audio, chunk=item))
                    continue
                timestamps.append(item.timestamp)
                repaired.append(item.repaired)
                if item.image is not None:
                    images.append(item.image)
                if len(timestamps) == self.batch_frames:
                    flush()
            flush()
            if done == 0:
                raise VideoError("contains no decodable video frames")
            for name, stage in stages.items():
                spec = groups[work.prefix + stage.group_name()]
                pass_.step(name, functools.partial(_finish, writer=writer, group=work.prefix + stage.group_name(), spec=spec))
            if old is not None:
                old.close()
                old = None
            if len(pass_.failed) == len(stages):
                writer.abort()
            else:
                attrs: dict[str, dict] = {}
                for n, run in pass_.runs.items():
                    group = work.prefix + stages[n].group_name()
                    attrs[group] = dict(run.attrs)
                    for k in run.subjects:
                        attrs[subject_group(k, stages[n].group_name())] = {"subject": k}
                    if keys[n]:
                        attrs[group]["inputs_hash"] = keys[n]
                    if n in pass_.degraded:
                        missing = sorted(pass_.degraded[n])
                        writer.set_params_hash(group, without_hash(self.plan.hashes[n], missing))
                        note = f"made without {', '.join(missing)}, which failed on this video; re-run to redo it"
                        attrs[group]["note"] = "; ".join(filter(None, [attrs[group].get("note", ""), note]))
                writer.commit(attrs, kept_anyway=[work.prefix + stages[n].group_name() for n in pass_.failed])
            result.frames = done
            result.stages += [work.label(n) for n in pass_.runs]
            result.failed_stages.update({work.label(n): reason for n, reason in pass_.failed.items()})
        except BaseException:
            writer.abort()
            for run in pass_.runs.values():
                run.abort()
            raise
        finally:
            if old is not None:
                old.close()


def _add_audio(run: StageRun, chunk: AudioChunk) -> None:
    run.add_audio(chunk.samples, chunk.start)


def _finish(run: StageRun, writer: StoreWriter, group: str, spec: GroupSpec) -> None:
    """Store the rest of a run's rows, and the rows of its further subjects."""
    for rows in row_sets(run.finish()):
        writer.append(group, rows)
    for k in run.subjects:
        writer.add_group(subject_group(k, group), spec)
        for rows in run.subject_rows(k):
            writer.append(subject_group(k, group), rows)
    run.close()


def _imports(stage: Stage, info: VideoInfo) -> bool:
    """Whether the stage reads files made elsewhere for this video (also when they are
    missing: it then fails when it opens)."""
    try:
        return stage.imported_files(info) is not None
    except Exception:
        return True


def _frames_only(info: VideoInfo) -> Iterator[Frame]:
    """The frames already counted, without decoding again (no stage needs pictures or
    audio)."""
    assert info.decoded_timestamps is not None
    for t in info.decoded_timestamps:
        yield Frame(float(t), None)


class _Pass:
    """The stages of one pass over a video, each failing on its own.

    :meth:`call` runs one step of a stage; an exception fails that stage (its group is
    left out of the store), and every later step of a stage whose required stage has
    failed either fails it too or, for a stage that ``can_do_without`` it, runs it on
    without those rows (``degraded``).  A store that cannot be written is no stage's
    failure: it stops the pass.
    """

    def __init__(self, stages: dict[str, Stage], writer: StoreWriter, path: Path, prefix: str, earlier_failed: set[str]) -> None:
        self.stages = stages
        self.writer = writer
        self.path = path
        self.prefix = prefix  # of the groups written ("subjects/<k>/" in a subject's pass)
        self.earlier_failed = earlier_failed  # stages that failed in an earlier pass
        self.runs: dict[str, StageRun] = {}
        self.failed: dict[str, str] = {}
        self.degraded: dict[str, set[str]] = {}

    def open(self, name: str, info: VideoInfo) -> None:
        if self._ready(name):
            self._guarded(name, lambda: self.runs.__setitem__(name, self.stages[name].open(info, self.path)))

    def step(self, name: str, fn: Callable[[StageRun], None]) -> None:
        if self._ready(name):
            self._guarded(name, lambda: fn(self.runs[name]))

    def _ready(self, name: str) -> bool:
        """The stage has not failed, and has what it requires (or can do without it)."""
        if name in self.failed:
            return False
        stage = self.stages[name]
        missing = {d for d in stage.requires if d in self.failed or d in self.earlier_failed}
        if missing - set(stage.can_do_without):
            self._fail(name, f"needs {', '.join(sorted(missing))}, which failed")
            return False
        if missing:
            self.degraded[name] = missing
        return True

    def _guarded(self, name: str, fn: Callable[[], None]) -> None:
        try:
            fn()
        except (KeyboardInterrupt, StoreWriteError, VideoError):
            raise
        except Exception as exc:
            fault = write_fault(exc, self.path, STORAGE_ERRNOS)
            if fault is not None:
                raise fault from None
            log.debug("stage %s failed", name, exc_info=True)
            self._fail(name, failure_reason(exc))

    def _fail(self, name: str, reason: str) -> None:
        self.failed[name] = reason
        run = self.runs.pop(name, None)
        if run is not None:
            run.abort()
        self.writer.drop(self.prefix + self.stages[name].group_name())
