"""What extraction costs on a machine, and how long a batch of videos will take.

Costs are CPU seconds per video frame of decoding and of each stage (and GPU seconds per
frame of the crop-encoding stages' network on a GPU), with the memory and start-up time
of a worker and how well the cores are used together.  They come from, in this order:

1. the user cache, ``$XDG_CACHE_HOME/vidaffect/costs.json`` (``~/.cache/vidaffect/``),
   written by ``vidaffect bench`` (full or ``--quick``) on this machine;
2. :data:`REFERENCE`, measured with ``vidaffect bench`` on the project's reference
   machine (2 AMD EPYC cores, no GPU), so that an estimate works before any bench run.
   Another CPU differs by its speed per core (typically within 2x).

The model behind :func:`estimate_seconds`: the workers share the CPU seconds of the
batch (decoding plus the stages each video still needs; one thread each, except a
network on the CPU, which uses a worker's threads) at the measured ``efficiency``, a GPU
works through the network's seconds at the same time, and the slower of the two
decides; the workers' start-up comes on top.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from vidaffect.util.threads import available_cores

log = logging.getLogger(__name__)

COSTS_FILE = "costs.json"
DECODE = "decode"  # the key of decoding among the CPU costs


@dataclass(frozen=True)
class Costs:
    """Per-frame costs of extraction on one machine.

    cpu: CPU seconds per frame: ``decode`` and every stage, networks on the CPU.
    cpu_beside_gpu: CPU seconds per frame of the crop-encoding stages whose network runs
        on a GPU (cropping, magnification, transfers).
    gpu: GPU seconds per frame of those stages' network.
    worker_mb: peak resident memory of one worker with every default stage, MB.
    startup_s: seconds a worker takes to start and load its models.
    efficiency: rate measured with every core busy / the rate ``cpu`` predicts (0-1].
    cores: cores of the machine that was measured.
    source: where the figures come from, for the user.
    gpu_measured: whether ``gpu`` was measured (else assumed).
    """

    cpu: dict[str, float]
    cpu_beside_gpu: dict[str, float]
    gpu: dict[str, float]
    worker_mb: float
    startup_s: float
    efficiency: float
    cores: int
    source: str
    gpu_measured: bool = False
    notes: list[str] = field(default_factory=list)

    def frame_seconds(self, stages: list[str], device: str, share: dict[str, float] | None = None) -> FrameCost:
        """Seconds per frame of decoding and ``stages`` with their networks on ``device``;
        ``share``: the fraction of frames a stage runs its model on, where below 1
        (``pose.every``; :meth:`Stage.cost_share`)."""
        on_gpu = device.startswith("cuda")
        cost = FrameCost(serial=self.cpu[DECODE])
        share = share or {}
        for stage in stages:
            if stage not in self.cpu:
                cost.unknown.append(stage)
            elif stage not in self.gpu:
                cost.serial += self.cpu[stage] * share.get(stage, 1.0)
            elif on_gpu:
                cost.serial += self.cpu_beside_gpu.get(stage, 0.0)
                cost.gpu += self.gpu[stage]
            else:
                cost.threaded += self.cpu[stage]
        return cost


@dataclass
class FrameCost:
    """Seconds per frame: ``serial`` CPU seconds on one thread (decoding, MediaPipe,
    EVM, mel), ``threaded`` CPU seconds that a worker's threads share (a network on the
    CPU), ``gpu`` seconds of the GPU; ``unknown``: stages without a measured cost."""

    serial: float = 0.0
    threaded: float = 0.0
    gpu: float = 0.0
    unknown: list[str] = field(default_factory=list)

    def __mul__(self, frames: float) -> FrameCost:
        return FrameCost(self.serial * frames, self.threaded * frames, self.gpu * frames, list(self.unknown))

    def __add__(self, other: FrameCost) -> FrameCost:
        unknown = self.unknown + [s for s in other.unknown if s not in self.unknown]
        return FrameCost(self.serial + other.serial, self.threaded + other.threaded, self.gpu + other.gpu, unknown)


# `vidaffect bench` (full size) on the reference machine: 2 AMD EPYC cores, 23.5 GB,
# no GPU, torch 2.13.0+cpu, MediaPipe 0.10.14.  The GPU figures are not measured: they
# are the benchmark's target (2000 crops/s in half precision), one crop per frame.
REFERENCE = Costs(
    cpu={DECODE: 0.0012, "face": 0.0075, "pose": 0.0205, "mel": 0.0001, "embed": 0.131, "evm": 0.139},
    cpu_beside_gpu={"embed": 0.0009, "evm": 0.0085},
    gpu={"embed": 1 / 2000, "evm": 1 / 2000},
    worker_mb=1500.0,
    startup_s=12.0,
    efficiency=0.9,
    cores=2,
    source="built-in figures of the reference machine (2 CPU cores); run `vidaffect bench --quick` to measure this one",
)


def cache_dir() -> Path:
    """vidaffect's folder in the user cache (``$XDG_CACHE_HOME`` or ``~/.cache``)."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "vidaffect"


def save_costs(costs: Costs) -> Path:
    """Write ``costs`` to the user cache, where :func:`load_costs` finds them."""
    path = cache_dir() / COSTS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(costs), indent=2) + "\n")
    tmp.replace(path)
    return path


def load_costs() -> Costs:
    """The costs measured on this machine by ``vidaffect bench``, else :data:`REFERENCE`."""
    path = cache_dir() / COSTS_FILE
    try:
        data = json.loads(path.read_text())
        return Costs(**data)
    except FileNotFoundError:
        return REFERENCE
    except (OSError, ValueError, TypeError) as exc:
        log.warning("%s cannot be used (%s); using the built-in reference costs", path, exc)
        return REFERENCE


def estimate_seconds(costs: Costs, work: FrameCost, workers: int, threads: int, cores: int | None = None) -> float:
    """Wall-clock seconds for ``work`` (the summed :class:`FrameCost` of a batch, in
    seconds) with ``workers`` processes of ``threads`` threads on ``cores`` cores
    (default: this machine's).

    Assumes the videos spread evenly over the workers (many videos, or similar
    lengths): each worker runs its share of the serial work on one core and of the
    threaded work on its threads, never faster than all cores together, at the measured
    efficiency; a GPU works through its share meanwhile.  Workers start in parallel, so
    their start-up counts once.
    """
    cores = cores or available_cores()
    if work.serial + work.threaded + work.gpu <= 0:
        return 0.0
    workers = max(1, workers)
    per_worker = (work.serial + work.threaded / max(1, threads)) / workers
    all_cores = (work.serial + work.threaded) / cores
    return costs.startup_s + max(max(per_worker, all_cores) / costs.efficiency, work.gpu)
