"""One encoder process for every extraction worker: the pipelined extractor for GPUs.

With a GPU, the CPU stages (decoding, face, pose, crops, EVM, mel) bound extraction, so
every core should run a worker; but a worker that also holds the encoder keeps its own
model copy on the GPU and sends it small batches between long stretches of CPU work.
Here the workers send their face crops to ONE encoder process that owns the GPU and
batches across workers (large batches, half precision, pinned staging memory), while
the workers go on with the next frames.

Transport, with the least copying:

* the parent creates, per worker, :data:`SLOTS` fixed shared-memory slots, each holding
  one batch of crops going in and their features coming out;
* a worker copies a batch of crops into a free slot and puts a small tuple
  ``(worker, slot, n, encoder, batch size, request id)`` on the one request queue;
* the encoder process takes requests until it has ``max_batch`` crops or ``max_wait``
  seconds passed since the first, runs the forward passes, writes each request's
  features into its slot and answers ``(slot, request id)`` on the worker's own
  response queue;
* a worker has at most :data:`SLOTS` requests in flight (it waits for an answer when
  none is free), so memory is bounded whatever the video length.

Frame order is the worker's business: :class:`~vidaffect.stages.encoder.CropEncoder`
returns rows in frame order.  A worker that died leaves stale answers on its response
queue; the request ids make its successor ignore them.  When the encoder process dies,
waiting workers fail their video with one line, and the parent reports it.

Results equal the in-process encoder's: on the CPU each request is one forward pass,
exactly the pass the worker would have run (see :mod:`vidaffect.stages.encoder`), so
the arrays are identical; on a GPU requests are merged into larger passes
(``forward_batch`` crops, padded to a multiple of :data:`GPU_PAD`) in half precision,
which changes the last bits.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import queue
import time
from dataclasses import dataclass
from multiprocessing import shared_memory
from typing import Any

import numpy as np

from vidaffect.errors import SetupError
from vidaffect.extraction.summary import failure_reason
from vidaffect.stages.crop import CROP_SIZE
from vidaffect.stages.embed import EncoderParams
from vidaffect.stages.encoder import install_encoder, load_encoder
from vidaffect.stages.params import StageParams
from vidaffect.stages.resnet import FEATURES
from vidaffect.stages.weights import WeightsError, file_sha256
from vidaffect.util.terminal import configure_logging
from vidaffect.util.threads import limit_threads

log = logging.getLogger("vidaffect.extract")

SLOTS = 4  # batches a worker keeps in flight: embed and evm each two
GPU_FORWARD_BATCH = 256  # crops per forward pass on a GPU
GPU_PAD = 32  # passes on a GPU hold a multiple of this many crops: few shapes for cuDNN to tune
MAX_WAIT = 0.005  # seconds the encoder waits for more requests once it has one
POLL = 0.5  # seconds between checks that the other side is alive

Key = tuple[str, str, str]  # (encoder, weights, weights_sha256) of EncoderParams


def encoder_keys(params: dict[str, StageParams]) -> list[Key]:
    """The distinct encoders the stage parameters of a plan ask for, in plan order."""
    keys: list[Key] = []
    for p in params.values():
        if isinstance(p, EncoderParams):
            key = (p.encoder, p.weights, p.weights_sha256)
            if key not in keys:
                keys.append(key)
    return keys


@dataclass(frozen=True)
class SlotSpec:
    """One worker's slots: shared-memory names and how many crops each holds."""

    names: tuple[str, ...]
    crops: int

    @property
    def crop_bytes(self) -> int:
        return self.crops * CROP_SIZE * CROP_SIZE * 3

    @property
    def nbytes(self) -> int:
        return self.crop_bytes + self.crops * FEATURES * 4


def _views(buf: Any, spec: SlotSpec) -> tuple[np.ndarray, np.ndarray]:
    """(crops in, features out) arrays over one slot's memory."""
    crops = np.ndarray((spec.crops, CROP_SIZE, CROP_SIZE, 3), np.uint8, buf, 0)
    features = np.ndarray((spec.crops, FEATURES), np.float32, buf, spec.crop_bytes)
    return crops, features


class EncoderService:
    """The encoder process and its slots, owned by the parent of the workers.

    Parameters
    ----------
    params : dict of str to StageParams
        The plan's stage parameters: the encoders of the crop-encoding stages among
        them are served (:func:`encoder_keys`), with requests of up to their batch size.
    device : str
        Where the encoder runs, e.g. ``cuda`` (``cpu`` runs the same pipeline on the
        CPU, for tests).
    workers : int
        Worker processes that will connect (each gets :meth:`client` ``(i)``).
    threads : int
        Thread pools of the encoder process (:func:`~vidaffect.util.threads.limit_threads`).
    forward_batch : int or None
        Crops per forward pass, across requests; None: :data:`GPU_FORWARD_BATCH` on a
        GPU, and on the CPU one pass per request (the worker's own passes, so
        identical arrays).

    Raises
    ------
    SetupError
        The encoder process could not load a model (the reason is its one line).
    """

    def __init__(self, params: dict[str, StageParams], device: str, workers: int, threads: int = 1, forward_batch: int | None = None) -> None:
        self.keys = keys = encoder_keys(params)
        batch_size = max(int(p.batch_size) for p in params.values() if isinstance(p, EncoderParams))
        self.device = device
        ctx = mp.get_context("spawn")  # CUDA and MediaPipe do not survive fork
        forward = forward_batch or (GPU_FORWARD_BATCH if device.startswith("cuda") else None)
        self._memory: list[shared_memory.SharedMemory] = []
        self.slots: list[SlotSpec] = []
        try:
            for _ in range(workers):
                spec = SlotSpec((), batch_size)
                mine = [shared_memory.SharedMemory(create=True, size=spec.nbytes) for _ in range(SLOTS)]
                self._memory += mine
                self.slots.append(SlotSpec(tuple(m.name for m in mine), batch_size))
            self.requests: Any = ctx.Queue()
            self.responses: list[Any] = [ctx.Queue() for _ in range(workers)]
            self.stopped: Any = ctx.Event()  # set by the parent when the encoder process is gone
            ready = ctx.Queue()
            self.process = ctx.Process(
                target=_serve,
                args=(keys, device, threads, self.slots, self.requests, self.responses, forward, ready, logging.getLogger().level),
                name="vidaffect-encoder",
                daemon=True,
            )
            self.process.start()
            self.weights = self._wait_ready(ready)
        except BaseException:
            self.close()
            raise
        log.info(
            "shared encoder process on %s for %d worker(s); forward passes of %s crops", device, workers, forward or "the stages' batch of"
        )

    def _wait_ready(self, ready: Any) -> dict[Key, str]:
        while True:
            try:
                status, payload = ready.get(timeout=POLL)
            except queue.Empty:
                if not self.process.is_alive():
                    raise SetupError(f"the encoder process stopped while loading its model (exit status {self.process.exitcode})") from None
                continue
            if status == "error":
                raise SetupError(payload)
            return dict(payload)

    def client(self, worker: int) -> EncoderClient:
        """What worker ``worker`` (0-based) needs to reach the encoder; picklable."""
        return EncoderClient(worker, self.slots[worker], self.requests, self.responses[worker], self.stopped, self.device, self.weights)

    def check(self) -> bool:
        """Whether the encoder process is alive; when not, waiting workers are told."""
        alive = self.process.is_alive()
        if not alive and not self.stopped.is_set():
            log.error("the shared encoder process stopped (exit status %s)", self.process.exitcode)
            self.stopped.set()
        return alive

    def close(self) -> None:
        """Stop the encoder process and free the slots."""
        process = getattr(self, "process", None)
        try:
            if process is not None and process.is_alive():
                self.requests.put(None)
                process.join(10)
                if process.is_alive():
                    process.kill()
                    process.join()
        finally:
            for memory in self._memory:
                memory.close()
                memory.unlink()
            self._memory = []


class _Request:
    """Features of one batch sent to the encoder process."""

    def __init__(self, client: EncoderClient, slot: int, n: int) -> None:
        self.client = client
        self.slot = slot
        self.n = n
        self.features: np.ndarray | None = None

    def ready(self) -> bool:
        if self.features is None:
            self.client.receive(wait=False)
        return self.features is not None

    def result(self) -> np.ndarray:
        while self.features is None:
            self.client.receive(wait=True)
        return self.features


class EncoderClient:
    """A worker's end of the :class:`EncoderService`: :meth:`install` makes the stages
    of this process use the encoder process instead of loading a model."""

    def __init__(self, worker: int, spec: SlotSpec, requests: Any, responses: Any, stopped: Any, device: str, weights: dict[Key, str]) -> None:
        self.worker = worker
        self.spec = spec
        self.requests = requests
        self.responses = responses
        self.stopped = stopped
        self.device = device
        self.weights = weights
        self._attached: list[shared_memory.SharedMemory] = []
        self._views: list[tuple[np.ndarray, np.ndarray]] = []
        self._free: list[int] = []
        self._inflight: dict[int, tuple[int, _Request]] = {}  # slot -> (request id, request)
        self._next_id = 0

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.update(_attached=[], _views=[], _free=[], _inflight={})
        return state

    def install(self) -> None:
        """Attach the slots and serve every key from the encoder process (see
        :func:`~vidaffect.stages.encoder.install_encoder`)."""
        if not self._attached:
            # The parent owns the segments and unlinks them; workers only attach.
            self._attached = [shared_memory.SharedMemory(name=name) for name in self.spec.names]
            self._views = [_views(m.buf, self.spec) for m in self._attached]
            self._free = list(range(len(self._attached)))
        for index, key in enumerate(self.weights):
            install_encoder(RemoteEncoder(self, index, key[0], self.weights[key]), *key, self.device)

    def submit(self, crops: np.ndarray, key: int, batch_size: int) -> _Request:
        if len(crops) > self.spec.crops:
            raise ValueError(f"{len(crops)} crops exceed a slot of {self.spec.crops}")
        while not self._free:
            self.receive(wait=True)
        slot = self._free.pop()
        self._views[slot][0][: len(crops)] = crops
        request = _Request(self, slot, len(crops))
        self._next_id += 1
        self._inflight[slot] = (self._next_id, request)
        self.requests.put((self.worker, slot, len(crops), key, batch_size, self._next_id))
        return request

    def receive(self, wait: bool) -> None:
        """Take the answers that arrived (waiting for one when ``wait``)."""
        while True:
            try:
                slot, request_id = self.responses.get(timeout=POLL) if wait else self.responses.get_nowait()
            except queue.Empty:
                if not wait:
                    return
                if self.stopped.is_set():
                    raise RuntimeError("the shared encoder process stopped; see the log for why") from None
                continue
            current = self._inflight.get(slot)
            if current is None or current[0] != request_id:
                continue  # meant for a worker that died before this one took its place
            del self._inflight[slot]
            request = current[1]
            request.features = self._views[slot][1][: request.n].copy()
            self._free.append(slot)
            wait = False  # one answer was what we waited for; take the rest that are there


class RemoteEncoder:
    """Stands in for :class:`~vidaffect.stages.encoder.Encoder` in a worker
    (:class:`~vidaffect.stages.encoder.BatchEncoder`)."""

    def __init__(self, client: EncoderClient, key: int, name: str, weights: str) -> None:
        self.client = client
        self.key = key
        self.name = name
        self.weights = weights

    def submit(self, crops: np.ndarray, batch_size: int) -> _Request:
        return self.client.submit(crops, self.key, batch_size)


def _serve(
    keys: list[Key], device: str, threads: int, slots: list[SlotSpec], requests: Any, responses: list[Any],
    forward_batch: int | None, ready: Any, log_level: int,
) -> None:  # fmt: skip
    """The encoder process: load the models, then answer requests until told to stop
    (``None``) or until the parent is gone."""
    configure_logging(log_level)
    limit_threads(threads)
    try:
        encoders = []
        for encoder, weights, digest in keys:
            if digest and file_sha256(weights) != digest:
                raise WeightsError(f"encoder weights {weights} changed since the extraction was planned; run again")
            encoders.append(load_encoder(weights, device, encoder, progress=False))
    except Exception as exc:
        ready.put(("error", failure_reason(exc)))
        return
    ready.put(("ready", [(key, e.weights) for key, e in zip(keys, encoders, strict=True)]))
    memory = [[shared_memory.SharedMemory(name=name) for name in spec.names] for spec in slots]
    views = [[_views(m.buf, spec) for m in mine] for mine, spec in zip(memory, slots, strict=True)]
    parent = os.getppid()
    while True:
        batch = _gather(requests, forward_batch or 1, parent)
        if batch is None:
            return
        groups: dict[int, list[tuple[int, ...]]] = {}  # requests by encoder
        for request in batch:
            groups.setdefault(request[3], []).append(request)
        for key, group in groups.items():
            crops = np.concatenate([views[w][s][0][:n] for w, s, n, *_ in group])
            if forward_batch:
                features = encoders[key](crops, forward_batch, GPU_PAD)
            else:  # one request: the pass the worker would have run
                features = encoders[key](crops, group[0][4])
            at = 0
            for w, s, n, _, _, request_id in group:
                views[w][s][1][:n] = features[at : at + n]
                at += n
                responses[w].put((s, request_id))


def _gather(requests: Any, crops: int, parent: int) -> list[tuple[int, ...]] | None:
    """Requests for up to ``crops`` crops: the first that comes, then whatever comes
    within :data:`MAX_WAIT`.  None: stop (asked to, or the parent is gone)."""
    while True:
        try:
            first = requests.get(timeout=POLL)
            break
        except queue.Empty:
            if os.getppid() != parent:  # orphaned: the parent was killed
                return None
    if first is None:
        return None
    batch = [first]
    total = first[2]
    deadline = time.perf_counter() + MAX_WAIT
    while total < crops:
        try:
            request = requests.get(timeout=max(0.0, deadline - time.perf_counter()))
        except queue.Empty:
            break
        if request is None:
            requests.put(None)  # answer what was taken, then stop
            break
        batch.append(request)
        total += request[2]
    return batch
