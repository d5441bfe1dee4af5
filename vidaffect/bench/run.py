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
``mel_fps``, ``evm_fps``       (``evm``: magnification and the encoder); each with
                               ``*_cpu_ms``, CPU milliseconds per frame (all threads)
``head_fps``, ``gaze_fps``     the head and gaze stages alone on the face stage's rows
``egemaps_fps``                the egemaps stage (NaN without openSMILE), as mel
``face_mesh_raw_fps``,         MediaPipe's face mesh (iris refinement) and pose
``pose_raw_fps``               solutions alone on the same frames, tracking, frames/s
                               (the face/pose figures and these: faster of two runs)
``encoder_raw_fps``            the encoder's forward pass alone on a ready batch on the
                               device: the limit of the crop-encoding stages, crops/s
                               (on a GPU: passes of the shared encoder's size)
``encoder_stage_fps``          the ``embed`` stage: cropping, batching, transfers and
                               the forward pass, frames/s (every frame has a face)
``extract_fps``                ``Extractor`` with every default stage on one video,
                               decoding and HDF5 writing included, models loaded before
                               (``extract_serial_bound_fps``: the rate the figures above
                               allow when the stages run one after another)
``extract_workers_fps``        ``extract(workers=cores)`` on one video per core, wall
                               time including starting the workers and their models
                               (on a GPU with the shared encoder process);
``extract_workers1_fps``       the same videos with one worker; their ratio is
                               ``extract_workers_speedup``
``train_seq_per_s``            training windows/s of the full network (lstm head) read
                               from stores by the DataLoader
``train_seq_per_s_inmemory``   the same steps on batches already in memory
``train_seq_per_s_<head>``     training windows/s of the full network with each head
                               (``lstm``, ``gru``, ``gru_attention``, ``transformer``)
``render_fps``                 ``vidaffect render`` of the clip: every layer and a
                               predictions strip, decoding, drawing, encoding and the
                               audio, frames/s
``predict_fps``                prediction of a stored video: reading the store, the
                               network over the blended windows, writing CSV rows,
                               frames/s (``predict_fps_network``: the network alone);
                               ``predict_fps_<head>`` the same with each head
``predict_peak_rss_mb_short``  peak resident memory (MB) of a fresh process predicting
``predict_peak_rss_mb_long``   a stored video with a transformer network
                               (feature-transformer), and one four times longer;
                               measured like the extraction figures below
``extract_peak_rss_mb_short``  peak resident memory (MB) of a fresh process extracting
``extract_peak_rss_mb_long``   a clip with every default stage, and a clip four times
                               longer.  Each process first extracts a tiny clip, so
                               libraries and models are loaded, then the peak is reset
                               (Linux) and taken over the clip alone: the models count,
                               start-up transients do not.  ``extract_rss_baseline_mb``
                               is the memory before the clip,
                               ``extract_rss_startup_peak_mb`` the start-up peak
``device``, ``torch_version``, ``mediapipe_version``, ``cpu_count``, ``platform``
``costs``                      per-frame costs made from these figures
                               (:mod:`vidaffect.extraction.costs`; full and quick runs
                               write them to the user cache for ``extract --dry-run``)
``projection_3m_frames``       hours for 3 M frames by cores, without and with a GPU

Throughput figures are noisy on a shared machine; ``load_average_start`` and
``load_average_end`` record how busy it was.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict
from importlib import metadata
from pathlib import Path
from typing import Any

from vidaffect.bench import memory, pipeline, stages
from vidaffect.bench.calibration import costs_from_results, projection
from vidaffect.bench.context import SIZES, BenchSize, Context
from vidaffect.bench.media import make_media
from vidaffect.bench.targets import evaluate_targets, format_number, format_table, serial_bound_fps
from vidaffect.errors import ParameterError
from vidaffect.extraction.costs import Costs, save_costs
from vidaffect.util.device import resolve_device
from vidaffect.util.terminal import progress_bar
from vidaffect.util.threads import available_cores

log = logging.getLogger(__name__)


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
    name = size or ("quick" if quick else "full")
    if name not in SIZES:
        raise ParameterError(f"unknown bench size {name!r}; choose from {', '.join(SIZES)}")
    results = run(SIZES[name], resolve_device(device), progress, name)
    if name != "tiny":  # tiny figures are for tests, meaningless as costs
        log.info("costs of this machine written to %s (extract --dry-run and --workers auto read them)", save_costs(Costs(**results["costs"])))
    if json_out is not None:
        Path(json_out).write_text(json.dumps(results, indent=2) + "\n")
        log.info("figures written to %s", json_out)
    return format_table(results)


def run(size: BenchSize, device: str, progress: bool = False, name: str = "") -> dict[str, Any]:
    """Every measurement at ``size`` (called ``name``) on ``device`` (already
    resolved): the figures, the targets, the costs and projection made from them, and
    the machine, as the JSON file holds them."""
    results: dict[str, Any] = machine_info(device)
    results["size"] = name
    results["load_average_start"] = _load_average()
    with tempfile.TemporaryDirectory(prefix="vidaffect-bench-") as tmp:
        work = Path(tmp)
        steps: list[tuple[str, Callable[[Context], dict[str, Any]]]] = [
            ("making media", make_media),
            ("decoding", stages.measure_decode),
            ("face stage", stages.measure_face),
            ("pose stage", stages.measure_pose),
            ("mel stage", stages.measure_mel),
            ("encoder and embed stage", stages.measure_encoder),
            ("evm stage", stages.measure_evm),
            ("head and gaze stages", stages.measure_head_gaze),
            ("egemaps stage", stages.measure_egemaps),
            ("extraction, one video", pipeline.measure_extract),
            ("extraction, --workers", pipeline.measure_workers),
            ("render", pipeline.measure_render),
            ("training", pipeline.measure_train),
            ("prediction", pipeline.measure_predict),
            ("memory, short and long clip", memory.measure_rss),
            ("memory of prediction, short and long video", memory.measure_predict_rss),
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
    costs = costs_from_results(results)
    results["costs"] = asdict(costs)
    results["projection_3m_frames"] = projection(costs)
    return results


def machine_info(device: str) -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {
        "device": device,
        "gpu": torch.cuda.get_device_name(torch.device(device)) if device.startswith("cuda") else "",
        "cpu_count": available_cores(),
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


def _brief(figures: dict[str, Any]) -> str:
    return ", ".join(f"{k} {format_number(v) if isinstance(v, float) else v}" for k, v in figures.items())
