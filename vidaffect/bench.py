"""`vidaffect bench`: throughput and memory of every stage, of training and of
prediction on this machine, compared with the project's targets.

The benchmark makes its own media: 640x360 H.264 + AAC at 25 fps showing the
astronaut photograph that scikit-image ships (one real face, about 100 px high,
drifting slowly so the trackers work as on video), with a modulated tone for the
audio.  The encoder runs with random weights: they cost exactly what trained weights
cost, and need no download.

Figures (the ``--json`` keys), all measured in this process unless said otherwise:

``decode_fps``                 PyAV decoding (pictures and audio), frames/s
``face_fps``, ``pose_fps``,    each stage alone on frames already decoded, frames/s
``mel_fps``, ``evm_fps``       (``evm``: magnification and the encoder)
``encoder_raw_fps``            the encoder's forward pass alone on a ready batch on the
                               device: the limit of the crop-encoding stages, crops/s
``encoder_stage_fps``          the ``embed`` stage: cropping, batching, transfers and
                               the forward pass, frames/s (every frame has a face)
``extract_fps``                ``Extractor`` with every default stage on one video,
                               decoding and HDF5 writing included, models loaded before
                               (``extract_serial_bound_fps``: the rate the figures above
                               allow when the stages run one after another)
``extract_workers_fps``        ``extract(workers=cores)`` on one video per core, wall
                               time including starting the workers and their models
``train_seq_per_s``            training windows/s read from stores by the DataLoader
``train_seq_per_s_inmemory``   the same steps on batches already in memory
``predict_fps``                prediction of a stored video: reading the store, the
                               network, writing CSV rows, frames/s
                               (``predict_fps_network``: the network alone)
``extract_peak_rss_mb_short``  peak resident memory (MB) of a fresh process extracting
``extract_peak_rss_mb_long``   a clip with every default stage, and a clip four times
                               longer.  Each process first extracts a tiny clip, so
                               libraries and models are loaded, then the peak is reset
                               (Linux) and taken over the clip alone: the models count,
                               start-up transients do not.  ``extract_rss_baseline_mb``
                               is the memory before the clip,
                               ``extract_rss_startup_peak_mb`` the start-up peak
``device``, ``torch_version``, ``mediapipe_version``, ``cpu_count``, ``platform``

Throughput figures are noisy on a shared machine; ``load_average_start`` and
``load_average_end`` record how busy it was.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from vidaffect.progress import progress_bar

log = logging.getLogger(__name__)

FPS = 25  # frame rate of the made media
AUDIO_RATE = 22050  # Hz, the made media's audio
RSS_LENGTH_FACTOR = 4  # the long clip of the memory figure is this many times the short one


@dataclass(frozen=True)
class BenchSize:
    """How much work each measurement does.

    width, height: frame size in pixels; face_height: the face in pixels.
    frames: the clip every stage and ``extract_fps`` run on.
    worker_frames: frames of each video of the ``--workers`` run.
    rss_frames: the short clip of the memory figure (the long one is 4 times longer);
        whole encoder batches, so that both clips reach the same per-batch peak.
    warmup_frames: the clip that loads the models before a timed extraction.
    encoder_batch: crops per forward pass; None keeps the stages' default.
    encoder_passes: timed forward passes and timed encoder-stage passes.
    train: (sequence length, batch size, timed steps) of the training figures.
    predict_frames: frames of the stored video the prediction figures run on.
    min_seconds: the fast measurements repeat until they took this long.
    """

    width: int
    height: int
    face_height: int
    frames: int
    worker_frames: int
    rss_frames: int
    warmup_frames: int
    encoder_batch: int | None
    encoder_passes: int
    train: tuple[int, int, int]
    predict_frames: int
    min_seconds: float


SIZES = {
    "full": BenchSize(640, 360, 100, 250, 125, 160, 8, None, 5, (256, 64, 5), 10000, 2.0),
    "quick": BenchSize(640, 360, 100, 64, 32, 32, 4, None, 1, (64, 16, 3), 3000, 0.5),
    # for the test suite: every figure, in seconds, meaningless as numbers
    "tiny": BenchSize(256, 144, 50, 12, 4, 4, 2, 4, 1, (8, 4, 1), 100, 0.0),
}


def bench(
    quick: bool = False,
    json_out: str | Path | None = None,
    device: str = "auto",
    progress: bool = False,
    size: str | None = None,
) -> str:
    """Measure this machine and compare the figures with their targets.

    Parameters
    ----------
    quick : bool, default False
        Small clips and few iterations: about two minutes on two CPU cores instead
        of about ten.  Every figure is still measured.
    json_out : str, Path or None, default None
        Also write the figures, the targets and the machine as JSON to this file.
    device : str, default "auto"
        ``auto``, ``cpu`` or ``cuda`` for the encoder, training and prediction.
    progress : bool, default False
        Show a progress bar of the measurements.
    size : str or None, default None
        ``full``, ``quick`` or ``tiny`` (for tests: every figure in seconds); overrides
        ``quick``.

    Returns
    -------
    str
        The table of figures and targets (met / missed).
    """
    from vidaffect.extract import resolve_device

    name = size or ("quick" if quick else "full")
    if name not in SIZES:
        raise ValueError(f"unknown bench size {name!r}; choose from {', '.join(SIZES)}")
    results = run(SIZES[name], resolve_device(device), progress)
    results["size"] = name
    if json_out is not None:
        Path(json_out).write_text(json.dumps(results, indent=2) + "\n")
        log.info("figures written to %s", json_out)
    return format_table(results)


def run(size: BenchSize, device: str, progress: bool = False) -> dict[str, Any]:
    """Every measurement at ``size`` on ``device`` (already resolved): the figures,
    the targets and the machine, as the JSON file holds them."""
    results: dict[str, Any] = machine_info(device)
    results["load_average_start"] = _load_average()
    with tempfile.TemporaryDirectory(prefix="vidaffect-bench-") as tmp:
        work = Path(tmp)
        steps: list[tuple[str, Callable[[Context], dict[str, Any]]]] = [
            ("making media", make_media),
            ("decoding", measure_decode),
            ("face stage", measure_face),
            ("pose stage", measure_pose),
            ("mel stage", measure_mel),
            ("encoder and embed stage", measure_encoder),
            ("evm stage", measure_evm),
            ("extraction, one video", measure_extract),
            ("extraction, --workers", measure_workers),
            ("training", measure_train),
            ("prediction", measure_predict),
            ("memory, short and long clip", measure_rss),
        ]
        ctx = Context(size, device, work)
        with progress_bar(len(steps), "bench", "step", progress) as bar:
            for label, step in steps:
                bar.set_description(label)
                started = time.perf_counter()
                figures = step(ctx)
                results.update(figures)
                log.info("%s (%.0f s): %s", label, time.perf_counter() - started, _brief(figures))
                bar.update()
    results["load_average_end"] = _load_average()
    results["extract_serial_bound_fps"] = serial_bound_fps(results)
    results["targets"] = evaluate_targets(results)
    return results


# ---------------------------------------------------------------------------------------
# media and shared state


@dataclass
class Context:
    """What the measurements share: the size, the device, the work folder, the media
    and what earlier measurements left (decoded frames and audio, face rows)."""

    size: BenchSize
    device: str
    work: Path
    clip: Path | None = None
    warmup: Path | None = None
    worker_dir: Path | None = None
    rss_short: Path | None = None
    rss_long: Path | None = None
    info: Any = None  # VideoInfo of the clip
    items: list[Any] = dataclasses.field(default_factory=list)  # decoded frames and audio chunks, in order
    face_rows: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)

    @property
    def frames(self) -> list[Any]:
        from vidaffect.video import Frame

        return [item for item in self.items if isinstance(item, Frame)]

    def stage_params(self) -> dict[str, dict[str, Any]]:
        """Overrides of the default recipe: random encoder weights (no download)."""
        encoder = {"weights": "random"}
        if self.size.encoder_batch is not None:
            encoder["batch_size"] = self.size.encoder_batch
        return {"embed": dict(encoder), "evm": dict(encoder)}


def face_video_frames(n: int, width: int, height: int, face_height: int) -> tuple[Iterator[np.ndarray], str]:
    """``n`` frames of one face drifting slowly (a camera pan over a still canvas), and
    what they show.  Without scikit-image (a test extra) the frames are a textured
    canvas without a face."""
    from vidaffect.synthetic import astronaut_frame

    margin = max(8, width // 16)
    canvas_size = (height + 2 * margin, width + 2 * margin)
    try:
        canvas = astronaut_frame(canvas_size, face_height, offset=(margin, width // 4 + margin))
        what = f"the astronaut photograph (scikit-image), face about {face_height} px high"
    except ImportError:
        rng = np.random.default_rng(0)
        canvas = rng.integers(0, 256, (*canvas_size, 3), dtype=np.uint8)
        what = "a textured canvas WITHOUT a face (scikit-image is not installed): face figures are of the no-face path"
        log.warning("bench: %s", what)

    def frames() -> Iterator[np.ndarray]:
        for i in range(n):
            phase = 2 * math.pi * i / (4 * FPS)  # one sway every 4 s
            dx = int(round(margin * (1 + 0.8 * math.sin(phase))))
            dy = int(round(margin * (1 + 0.5 * math.sin(2 * phase))))
            yield canvas[dy : dy + height, dx : dx + width]

    return frames(), what


def audio_track(n_frames: int) -> np.ndarray:
    """A tone whose loudness and pitch change (mono, ``AUDIO_RATE``) for ``n_frames``."""
    t = np.arange(int(n_frames / FPS * AUDIO_RATE)) / AUDIO_RATE
    gain = 0.3 + 0.2 * np.sin(2 * np.pi * 0.5 * t)
    return (gain * np.sin(2 * np.pi * (220 + 40 * np.sin(2 * np.pi * 0.3 * t)) * t)).astype(np.float32)


def make_video_clip(path: Path, n: int, size: BenchSize) -> str:
    from vidaffect.synthetic import make_video

    frames, what = face_video_frames(n, size.width, size.height, size.face_height)
    make_video(path, frames, fps=FPS, audio=audio_track(n), sr=AUDIO_RATE)
    return what


def make_media(ctx: Context) -> dict[str, Any]:
    s = ctx.size
    media = ctx.work / "media"
    ctx.clip, ctx.warmup = media / "clip.mp4", media / "warmup.mp4"
    ctx.rss_short, ctx.rss_long = media / "rss-short.mp4", media / "rss-long.mp4"
    ctx.worker_dir = media / "workers"
    what = make_video_clip(ctx.clip, s.frames, s)
    make_video_clip(ctx.warmup, s.warmup_frames, s)
    make_video_clip(ctx.rss_short, s.rss_frames, s)
    make_video_clip(ctx.rss_long, s.rss_frames * RSS_LENGTH_FACTOR, s)
    for k in range(_cores()):
        make_video_clip(ctx.worker_dir / f"video{k}.mp4", s.worker_frames, s)
    return {"media": f"{s.width}x{s.height} H.264 + AAC at {FPS} fps, {what}", "clip_frames": s.frames}


# ---------------------------------------------------------------------------------------
# decoding and single stages


def measure_decode(ctx: Context) -> dict[str, Any]:
    from vidaffect.video import Frame, VideoSource, decode, probe

    ctx.info = probe(VideoSource(ctx.clip, "clip"))
    frames, elapsed = 0, 0.0
    while True:
        started = time.perf_counter()
        items = list(decode(ctx.info))
        elapsed += time.perf_counter() - started
        frames += sum(isinstance(item, Frame) for item in items)
        if elapsed >= ctx.size.min_seconds:
            break
    ctx.items = items
    return {"decode_fps": frames / elapsed}


def frame_batches(frames: list[Any], batch: int | None = None) -> Iterator[Any]:
    """Decoded frames in batches of ``batch`` (default: the engine's batch size), as
    the engine hands them to the stages."""
    from vidaffect.extract import BATCH_FRAMES
    from vidaffect.stages import Batch

    batch = batch or BATCH_FRAMES
    for start in range(0, len(frames), batch):
        chunk = frames[start : start + batch]
        yield Batch(start, np.array([f.timestamp for f in chunk]), np.stack([f.image for f in chunk]))


def image_stage_fps(ctx: Context, stage: Any) -> tuple[float, dict[str, np.ndarray]]:
    """Frames/s of a stage that looks at the pictures, over the clip's frames, after
    an untimed first batch (models load, graphs start); and its rows."""
    frames = ctx.frames
    store = ctx.work / "stage.h5"
    warm = stage.open(ctx.info, store)
    warm.process(next(frame_batches(frames[:8])))
    run = stage.open(ctx.info, store)  # a fresh video: trackers start afresh
    parts: list[dict[str, np.ndarray]] = []
    started = time.perf_counter()
    for batch in frame_batches(frames):
        parts.append(run.process(batch))
    parts.append(run.finish())
    elapsed = time.perf_counter() - started
    stage.close()
    rows = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    return len(frames) / elapsed, rows


def measure_face(ctx: Context) -> dict[str, Any]:
    from vidaffect.face import FaceStage

    fps, ctx.face_rows = image_stage_fps(ctx, FaceStage())
    return {"face_fps": fps, "face_found_fraction": float(ctx.face_rows["valid"].mean())}


def measure_pose(ctx: Context) -> dict[str, Any]:
    from vidaffect.pose import PoseStage

    fps, rows = image_stage_fps(ctx, PoseStage())
    return {"pose_fps": fps, "pose_found_fraction": float(rows["valid"].mean())}


def measure_mel(ctx: Context) -> dict[str, Any]:
    from vidaffect.audio import MelStage
    from vidaffect.extract import BATCH_FRAMES
    from vidaffect.stages import Batch
    from vidaffect.video import AudioChunk

    stage = MelStage()

    def replay() -> int:
        """Audio and frame times in decoding order, as the engine feeds them."""
        run = stage.open(ctx.info, ctx.work / "stage.h5")
        times: list[float] = []
        done = rows = 0
        for item in ctx.items + [None]:
            if isinstance(item, AudioChunk):
                run.add_audio(item.samples, item.start)
                continue
            if item is not None:
                times.append(item.timestamp)
            if times and (item is None or len(times) == BATCH_FRAMES):
                rows += len(run.process(Batch(done, np.array(times), np.empty((len(times), 0, 0, 3), np.uint8)))["valid"])
                done += len(times)
                times.clear()
        return rows + len(run.finish()["valid"])

    replay()  # the filterbank and first calls warm up
    frames, elapsed = 0, 0.0
    while True:
        started = time.perf_counter()
        frames += replay()
        elapsed += time.perf_counter() - started
        if elapsed >= ctx.size.min_seconds:
            break
    return {"mel_fps": frames / elapsed}


def encoder_batch(ctx: Context, n: int) -> Any:
    """The first ``n`` frames with the face stage's rows as inputs.  Frames where the
    face stage found nothing get a box in the middle, so every frame has a crop to
    encode (the crop-encoding stages cost per face, not per frame)."""
    batch = next(frame_batches(ctx.frames, n))
    rows = {k: v[:n].copy() for k, v in ctx.face_rows.items()}
    missing = ~rows["valid"]
    if missing.any():
        h, w = batch.images.shape[1:3]
        side = ctx.size.face_height * 1.2
        rows["bbox"][missing] = ((w - side) / 2, (h - side) / 2, side, side)
        rows["valid"][missing] = True
    batch.inputs = {f"face/{k}": v for k, v in rows.items()}
    return batch


def measure_encoder(ctx: Context) -> dict[str, Any]:
    from vidaffect.encoder import EmbedStage, EncoderParams, raw_forward_fps, stage_fps

    params = EncoderParams(**ctx.stage_params()["embed"])
    stage = EmbedStage(params, ctx.device)
    batch = encoder_batch(ctx, params.batch_size)
    stage_rate = stage_fps(stage, batch, ctx.info, ctx.work / "stage.h5", repeats=ctx.size.encoder_passes)
    # The stage's passes have just warmed the model up.
    raw = raw_forward_fps(stage.encoder(), params.batch_size, batches=ctx.size.encoder_passes, warmup=0)
    stage.close()
    return {"encoder_raw_fps": raw, "encoder_stage_fps": stage_rate, "encoder_batch": params.batch_size}


def measure_evm(ctx: Context) -> dict[str, Any]:
    from vidaffect.crop import CROP_SIZE, crop_faces
    from vidaffect.encoder import stage_fps
    from vidaffect.evm import EvmParams, EvmStage, Magnifier

    params = EvmParams(**ctx.stage_params()["evm"])
    stage = EvmStage(params, ctx.device)
    batch = encoder_batch(ctx, params.batch_size)
    fps = stage_fps(stage, batch, ctx.info, ctx.work / "stage.h5", repeats=ctx.size.encoder_passes)
    stage.close()
    # The magnification alone, on the same crops, so the encoder's share is visible.
    crops, _ = crop_faces(batch.images, batch.inputs["face/bbox"], params.margin)
    magnifier = Magnifier(FPS, (CROP_SIZE, CROP_SIZE), params)
    magnifier(crops.astype(np.float32) / 255.0)
    done, elapsed = 0, 0.0
    while True:
        started = time.perf_counter()
        np.round(magnifier(crops.astype(np.float32) / 255.0) * 255.0).astype(np.uint8)
        elapsed += time.perf_counter() - started
        done += len(crops)
        if elapsed >= ctx.size.min_seconds:
            break
    return {"evm_fps": fps, "evm_magnify_fps": done / elapsed}


# ---------------------------------------------------------------------------------------
# extraction, training, prediction


def measure_extract(ctx: Context) -> dict[str, Any]:
    from vidaffect.extract import Extractor, Plan
    from vidaffect.video import VideoSource

    plan = Plan.make(None, params=ctx.stage_params())
    store = ctx.work / "features"
    extractor = Extractor(store, plan, ctx.device)
    try:
        _check(extractor.run(VideoSource(ctx.warmup, "warmup")))  # models load here
        result = _check(extractor.run(VideoSource(ctx.clip, "clip")))
    finally:
        extractor.close()
    return {"extract_fps": result.frames / result.seconds, "extract_stages": ",".join(plan.order)}


def measure_workers(ctx: Context) -> dict[str, Any]:
    from vidaffect.extract import extract

    workers = _cores()
    started = time.perf_counter()
    summary = extract(
        [ctx.worker_dir], ctx.work / "features-workers", params=ctx.stage_params(), workers=workers, device=ctx.device
    )
    elapsed = time.perf_counter() - started
    for result in summary.results:
        _check(result)
    frames = sum(r.frames for r in summary.results)
    return {"extract_workers_fps": frames / elapsed, "extract_workers": workers, "extract_workers_videos": len(summary.results)}


def measure_train(ctx: Context) -> dict[str, Any]:
    from vidaffect.train import measure_throughput

    seq_len, batch_size, steps = ctx.size.train
    figures = measure_throughput("full", seq_len=seq_len, batch_size=batch_size, batches=steps, device=ctx.device)
    return {**figures, "train_net": "full", "train_seq_len": seq_len, "train_batch_size": batch_size}


def measure_predict(ctx: Context) -> dict[str, Any]:
    from vidaffect.predict import measure_throughput

    figures = measure_throughput("full", frames=ctx.size.predict_frames, device=ctx.device)
    return {
        "predict_fps": figures["predict_fps_cached"],
        "predict_fps_network": figures["predict_fps_network"],
        "predict_frames": ctx.size.predict_frames,
    }


# ---------------------------------------------------------------------------------------
# memory in fresh processes


def measure_rss(ctx: Context) -> dict[str, Any]:
    """Both clips in fresh processes at the same time: their peaks do not depend on
    each other, and the wall time halves."""
    children = {label: _start_rss_child(ctx, clip, label) for label, clip in (("short", ctx.rss_short), ("long", ctx.rss_long))}
    short, long = (_rss_child_result(children[label]) for label in ("short", "long"))
    return {
        "extract_peak_rss_mb_short": short["peak_mb"],
        "extract_peak_rss_mb_long": long["peak_mb"],
        "extract_rss_baseline_mb": min(short["baseline_mb"], long["baseline_mb"]),
        "extract_rss_startup_peak_mb": max(short["startup_peak_mb"], long["startup_peak_mb"]),
        "extract_rss_frames_short": short["frames"],
        "extract_rss_frames_long": long["frames"],
        "extract_rss_method": short["method"],
    }


def _start_rss_child(ctx: Context, clip: Path, label: str) -> subprocess.Popen:
    args = json.dumps(
        {
            "warmup": str(ctx.warmup),
            "clip": str(clip),
            "store": str(ctx.work / f"features-rss-{label}"),
            "device": ctx.device,
            "params": ctx.stage_params(),
        }
    )
    return subprocess.Popen(
        [sys.executable, "-m", "vidaffect.bench", args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _rss_child_result(proc: subprocess.Popen) -> dict[str, Any]:
    stdout, stderr = proc.communicate()
    lines = [line for line in stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"bench: the memory measurement process failed (exit status {proc.returncode}): {tail}")
    return json.loads(lines[-1])


def _proc_status_mb(field: str) -> float | None:
    """A memory line of /proc/self/status (``VmRSS``, ``VmHWM``) in MB; None when
    there is no /proc (not Linux)."""
    try:
        lines = Path("/proc/self/status").read_text().splitlines()
    except OSError:
        return None
    values = [line.split()[1] for line in lines if line.startswith(field + ":")]
    return int(values[0]) / 2**10 if values else None  # kB


def peak_rss_mb() -> float:
    """Peak resident set size of this process (since :func:`reset_peak_rss`), in MB
    (2**20 bytes)."""
    import resource

    peak = _proc_status_mb("VmHWM")
    if peak is not None:
        return peak
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return maxrss / 2**20 if sys.platform == "darwin" else maxrss / 2**10  # bytes on macOS, KiB elsewhere


def reset_peak_rss() -> bool:
    """Start the peak resident set size afresh (Linux: ``/proc/self/clear_refs``);
    False where the system cannot."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def _rss_child(args: dict[str, Any]) -> dict[str, Any]:
    """Extract the warm-up clip (libraries, models and buffers settle), then measure
    the peak while extracting ``clip`` with every default stage."""
    from vidaffect.extract import Extractor, Plan
    from vidaffect.video import VideoSource

    extractor = Extractor(args["store"], Plan.make(None, params=args["params"]), args["device"])
    _check(extractor.run(VideoSource(Path(args["warmup"]), "warmup")))
    startup_peak = peak_rss_mb()
    reset = reset_peak_rss()
    baseline = _proc_status_mb("VmRSS") or startup_peak
    result = _check(extractor.run(VideoSource(Path(args["clip"]), "clip")))
    return {
        "startup_peak_mb": startup_peak,
        "baseline_mb": baseline,
        "peak_mb": peak_rss_mb(),
        "frames": result.frames,
        "method": "peak during the clip, models loaded (VmHWM reset)" if reset else "peak of the whole process (ru_maxrss)",
    }


# ---------------------------------------------------------------------------------------
# targets and the table


@dataclass(frozen=True)
class Target:
    name: str
    value: Callable[[dict[str, Any]], float]
    op: str  # ">=" or "<="
    bound: float
    applies: Callable[[dict[str, Any]], str] = lambda r: ""  # a reason it does not apply, or ""


STAGE_FIGURES = ("face_fps", "pose_fps", "mel_fps", "encoder_stage_fps", "evm_fps")  # one per default stage


def _slowest_stage(r: dict[str, Any]) -> tuple[str, float]:
    name = min(STAGE_FIGURES, key=lambda k: r[k])
    return name, r[name]


def serial_bound_fps(r: dict[str, Any]) -> float:
    """The extraction rate if decoding and the stages, measured alone, ran one after
    another with no overhead: what one process can reach without overlapping them."""
    return 1.0 / sum(1.0 / r[k] for k in ("decode_fps", *STAGE_FIGURES))


def _at_640x360(r: dict[str, Any]) -> str:
    return "" if r["media"].startswith("640x360") else "media is not 640x360"


TARGETS = [
    Target("encoder_stage_fps / encoder_raw_fps", lambda r: r["encoder_stage_fps"] / r["encoder_raw_fps"], ">=", 0.9),
    Target("extract_fps / slowest stage fps", lambda r: r["extract_fps"] / _slowest_stage(r)[1], ">=", 0.8),
    Target(
        "train_seq_per_s / train_seq_per_s_inmemory", lambda r: r["train_seq_per_s"] / r["train_seq_per_s_inmemory"], ">=", 0.9
    ),
    Target(
        "extract_peak_rss_mb_long / extract_peak_rss_mb_short",
        lambda r: r["extract_peak_rss_mb_long"] / r["extract_peak_rss_mb_short"],
        "<=",
        1.2,
    ),
    Target("face_fps (640x360, 2 CPU cores)", lambda r: r["face_fps"], ">=", 100, _at_640x360),
    Target("pose_fps (640x360, 2 CPU cores)", lambda r: r["pose_fps"], ">=", 40, _at_640x360),
    Target(
        "encoder_stage_fps on a GPU",
        lambda r: r["encoder_stage_fps"],
        ">=",
        2000,
        lambda r: "" if r["device"].startswith("cuda") else "no GPU",
    ),
]


def evaluate_targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Each target with its value and ``met`` (True, False, or None when it does not
    apply here, with the reason in ``note``)."""
    out = []
    for t in TARGETS:
        value = float(t.value(results))
        reason = t.applies(results)
        met = None if reason else (value >= t.bound if t.op == ">=" else value <= t.bound)
        out.append({"target": t.name, "value": value, "bound": f"{t.op} {t.bound:g}", "met": met, "note": reason})
    bound = serial_bound_fps(results)
    out[1]["note"] = (
        f"slowest stage: {_slowest_stage(results)[0]}; stages one after another allow {_number(bound)} frames/s, "
        f"extract_fps is {results['extract_fps'] / bound:.2f} of that"
    )
    return out


FIGURES = [  # (key, unit) in table order
    ("decode_fps", "frames/s"),
    ("face_fps", "frames/s"),
    ("pose_fps", "frames/s"),
    ("mel_fps", "frames/s"),
    ("evm_magnify_fps", "crops/s"),
    ("evm_fps", "frames/s"),
    ("encoder_raw_fps", "crops/s"),
    ("encoder_stage_fps", "frames/s"),
    ("extract_serial_bound_fps", "frames/s"),
    ("extract_fps", "frames/s"),
    ("extract_workers_fps", "frames/s"),
    ("train_seq_per_s", "windows/s"),
    ("train_seq_per_s_inmemory", "windows/s"),
    ("predict_fps", "frames/s"),
    ("predict_fps_network", "frames/s"),
    ("extract_rss_startup_peak_mb", "MB"),
    ("extract_rss_baseline_mb", "MB"),
    ("extract_peak_rss_mb_short", "MB"),
    ("extract_peak_rss_mb_long", "MB"),
]


def format_table(results: dict[str, Any]) -> str:
    """The figures, then each target with met / missed / n/a."""
    gpu = f", {results['gpu']}" if results.get("gpu") else ""
    lines = [
        f"vidaffect bench ({results.get('size', '')}) on {results['device']}{gpu}, {results['cpu_count']} CPU cores, "
        f"{results['platform']}; torch {results['torch_version']}, MediaPipe {results['mediapipe_version']}",
        f"media: {results['media']}; load average {results['load_average_start'][0]:.1f} -> {results['load_average_end'][0]:.1f}",
        "",
        f"{'figure':<40} {'value':>10}  unit",
    ]
    lines += [f"{key:<40} {_number(results[key]):>10}  {unit}" for key, unit in FIGURES]
    lines += ["", f"{'target':<52} {'value':>8} {'required':>9}  result"]
    for t in results["targets"]:
        status = "n/a" if t["met"] is None else "met" if t["met"] else "MISSED"
        note = f" ({t['note']})" if t["note"] else ""
        lines.append(f"{t['target']:<52} {_number(t['value']):>8} {t['bound']:>9}  {status}{note}")
    return "\n".join(lines)


def _number(x: float) -> str:
    if abs(x) >= 100:
        return f"{x:.0f}"
    return f"{x:.3g}" if abs(x) < 10 else f"{x:.1f}"


# ---------------------------------------------------------------------------------------
# the machine


def machine_info(device: str) -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {
        "device": device,
        "gpu": torch.cuda.get_device_name(torch.device(device)) if device.startswith("cuda") else "",
        "cpu_count": _cores(),
        "cpu_model": _cpu_model(),
        "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "platform": platform.platform(),
        "python_version": platform.python_version(),
        "torch_version": torch.__version__,
        "torch_threads": torch.get_num_threads(),
    }
    for key, package in (("mediapipe_version", "mediapipe"), ("av_version", "av"), ("vidaffect_version", "vidaffect")):
        try:
            info[key] = metadata.version(package)
        except metadata.PackageNotFoundError:
            info[key] = "not installed"
    return info


def _cores() -> int:
    """CPU cores this process may use (a container's limit, not the host's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _cpu_model() -> str:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:  # not on Linux
        lines = []
    names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
    return names[0] if names else platform.processor()


def _load_average() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return [0.0, 0.0, 0.0]


def _check(result: Any) -> Any:
    """An extraction result that must have succeeded."""
    if result.status != "done":
        raise RuntimeError(f"bench: extracting {result.path} did not complete ({result.status}: {result.reason})")
    return result


def _brief(figures: dict[str, Any]) -> str:
    return ", ".join(f"{k} {_number(v) if isinstance(v, float) else v}" for k, v in figures.items())


if __name__ == "__main__":  # the fresh process of the memory measurement (see _start_rss_child)
    logging.basicConfig(level=logging.WARNING)
    print(json.dumps(_rss_child(json.loads(sys.argv[1]))), flush=True)
