"""The benchmark's figures as per-frame extraction costs (:mod:`vidaffect.extraction.costs`),
which ``extract --dry-run`` and ``--workers auto`` read from the user cache, and the
projection "hours for 3 M frames" by cores and GPU made from them."""

from __future__ import annotations

import datetime
from dataclasses import replace
from typing import Any

from vidaffect.extraction.costs import DECODE, Costs, FrameCost, estimate_seconds, load_costs
from vidaffect.extraction.engine import Plan

# The bench figure (``<figure>_cpu_ms``) that gives each default stage's cost.
STAGE_FIGURE = {"face": "face", "pose": "pose", "mel": "mel", "embed": "encoder_stage", "evm": "evm"}
# Stages outside the default recipe measured alone (``<stage>_cpu_ms``; egemaps only
# with openSMILE installed), so that a dry run with them counts them too.
OPTIONAL_STAGES = ("head", "gaze", "egemaps")
PROJECTION_FRAMES = 3_000_000  # Aff-Wild2's size
PROJECTION_CORES = (2, 8, 16, 32, 64)


def costs_from_results(r: dict[str, Any]) -> Costs:
    """Per-frame costs from one bench run's figures.  A run on the CPU measures the
    networks on the CPU and keeps the GPU figures known before (measured by an earlier
    run on a GPU, or assumed); a run on a GPU measures those and keeps the CPU ones."""
    prior = load_costs()
    seconds = {stage: r[f"{figure}_cpu_ms"] / 1000 for stage, figure in STAGE_FIGURE.items()}
    cpu = {DECODE: r["decode_cpu_ms"] / 1000, **{s: seconds[s] for s in ("face", "pose", "mel")}}
    cpu.update({s: r[f"{s}_cpu_ms"] / 1000 for s in OPTIONAL_STAGES if f"{s}_cpu_ms" in r})
    if r["device"].startswith("cuda"):
        cpu.update({s: prior.cpu[s] for s in ("embed", "evm") if s in prior.cpu})
        beside = {s: seconds[s] for s in ("embed", "evm")}
        gpu, gpu_measured = {s: 1 / r["encoder_raw_fps"] for s in ("embed", "evm")}, True
    else:
        cpu.update(embed=seconds["embed"], evm=seconds["evm"])
        crop = r["crop_cpu_ms"] / 1000
        beside = {"embed": crop, "evm": crop + r["evm_magnify_cpu_ms"] / 1000}
        gpu, gpu_measured = dict(prior.gpu), prior.gpu_measured
    when = datetime.date.today().isoformat()
    costs = Costs(
        cpu=cpu,
        cpu_beside_gpu=beside,
        gpu=gpu,
        worker_mb=float(r["extract_peak_rss_mb_short"]),
        startup_s=float(r["extract_workers_startup_s"]),
        efficiency=1.0,
        cores=int(r["cpu_count"]),
        source=f"measured by `vidaffect bench` ({r['size']}) on this machine on {when} ({r['cpu_count']} cores, {r['device']})",
        gpu_measured=gpu_measured,
    )
    # How well the cores were used together: the --workers run against what the
    # costs predict for it (one video per worker, all at once).
    work = costs.frame_seconds(Plan.make(None).order, r["device"]) * r["extract_workers_frames"]
    predicted = estimate_seconds(replace(costs, startup_s=0.0), work, r["extract_workers"], max(1, costs.cores // r["extract_workers"]), costs.cores)
    return replace(costs, efficiency=round(predicted / r["extract_workers_busy_s"], 3))


def projection(costs: Costs, frames: int = PROJECTION_FRAMES) -> list[dict[str, Any]]:
    """Hours to extract ``frames`` frames with every default stage on machines with
    more cores, without and with one GPU (with it, one core runs the shared encoder).

    Assumes cores as fast as the measured ones, videos spread evenly over the workers,
    memory for one worker per core, and the measured efficiency of using the cores
    together; the GPU figure is measured when a bench ran on a GPU, else the target
    (2000 crops/s)."""
    stages = Plan.make(None).order
    cpu_work: FrameCost = costs.frame_seconds(stages, "cpu") * frames
    gpu_work: FrameCost = costs.frame_seconds(stages, "cuda") * frames
    rows = []
    for cores in PROJECTION_CORES:
        rows.append(
            {
                "cores": cores,
                "cpu_hours": estimate_seconds(costs, cpu_work, cores, 1, cores) / 3600,
                "gpu_hours": estimate_seconds(costs, gpu_work, max(1, cores - 1), 1, cores) / 3600,
            }
        )
    return rows
