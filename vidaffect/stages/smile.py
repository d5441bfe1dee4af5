"""openSMILE's eGeMAPSv02 low-level descriptors of an audio stream, in flat memory.

The ``opensmile`` package (an optional extra: ``pip install 'vidaffect[egemaps]'``;
openSMILE is under audEERING's research licence, non-commercial use only) ships the
openSMILE library and its configuration files, and runs offline.  Its own API needs
the whole signal in memory and keeps every intermediate level growing (about 33 MB
per minute of audio).  :class:`SmileStream` instead runs the library on a
configuration holding only the low-level-descriptor components of eGeMAPSv02 (the
package's own ``GeMAPSv01b`` and ``eGeMAPSv02`` includes, without the functionals),
with every data level a ring buffer, in a background thread that is fed blocks of
samples; its output is the package API's, value for value.
"""

from __future__ import annotations

import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from vidaffect.errors import SetupError

HOP_S = 0.010  # one LLD frame every 10 ms; frame k starts at k * HOP_S
BLOCK_S = 0.05  # seconds of samples per write into openSMILE's input ring
# The 25 eGeMAPSv02 LLDs in openSMILE's order (checked against the library at start).
LLD_NAMES: tuple[str, ...] = (
    "Loudness_sma3", "alphaRatio_sma3", "hammarbergIndex_sma3", "slope0-500_sma3", "slope500-1500_sma3",
    "spectralFlux_sma3", "mfcc1_sma3", "mfcc2_sma3", "mfcc3_sma3", "mfcc4_sma3",
    "F0semitoneFrom27.5Hz_sma3nz", "jitterLocal_sma3nz", "shimmerLocaldB_sma3nz", "HNRdBACF_sma3nz",
    "logRelF0-H1-H2_sma3nz", "logRelF0-H1-A3_sma3nz",
    "F1frequency_sma3nz", "F1bandwidth_sma3nz", "F1amplitudeLogRelF0_sma3nz",
    "F2frequency_sma3nz", "F2bandwidth_sma3nz", "F2amplitudeLogRelF0_sma3nz",
    "F3frequency_sma3nz", "F3bandwidth_sma3nz", "F3amplitudeLogRelF0_sma3nz",
)  # fmt: skip
# LLDs measured over 60 ms (Gaussian) windows; the others over 20 ms (Hamming) windows.
SIXTY_MS = frozenset(LLD_NAMES[10:16]) | {f"F{i}amplitudeLogRelF0_sma3nz" for i in (1, 2, 3)}
F0 = LLD_NAMES.index("F0semitoneFrom27.5Hz_sma3nz")
INSTALL_HINT = "pip install 'vidaffect[egemaps]' (openSMILE's licence allows non-commercial use only)"

_SOURCE = """
[componentInstances:cComponentManager]
instance[extsource].type=cExternalAudioSource

[extsource:cExternalAudioSource]
writer.dmLevel=wave
sampleRate={rate}
nBits=16
channels=1
blocksizeW_sec={block}
writer.levelconf.growDyn=0
writer.levelconf.isRb=1
writer.levelconf.nT={wave_frames}
"""

_RING = """
writer.levelconf.growDyn=0
writer.levelconf.isRb=1
writer.levelconf.nT={frames}
"""

_CONFIG = """
[componentInstances:cComponentManager]
instance[dataMemory].type=cDataMemory
printLevelStats=0

\\{{{source}}}
\\{{{root}/gemaps/v01b/GeMAPSv01b_core.lld.conf.inc}}
\\{{{root}/egemaps/v02/eGeMAPSv02_core.lld.conf.inc}}

[componentInstances:cComponentManager]
instance[lldconcat].type=cVectorConcat

[lldconcat:cVectorConcat]
reader.dmLevel=egemapsv02_lldsetE_smo;egemapsv02_lldsetF_smo
writer.dmLevel=lld
includeSingleElementFields=1

\\{{{root}/shared/standard_external_data_output_single.conf.inc}}
"""


def require_opensmile() -> Any:
    """The ``opensmile`` module, or a one-line :class:`SetupError` saying how to get it."""
    try:
        import opensmile
    except ImportError:
        raise SetupError(f"the egemaps stage needs openSMILE, which is not installed: {INSTALL_HINT}") from None
    return opensmile


class SmileStream:
    """eGeMAPSv02 LLDs of an audio stream, computed as samples arrive.

    Parameters
    ----------
    sample_rate : int
        Hz of the samples given to :meth:`push`.
    ring_seconds : float, default 4.0
        Seconds held by each of openSMILE's ring buffers: what bounds its memory.

    :meth:`push` takes int16 mono samples and returns ``(starts, lld)`` of the LLD
    frames completed so far: ``starts`` (k,) seconds from the first sample (frame k
    starts at k * 10 ms), ``lld`` (k, 25) float32 in :data:`LLD_NAMES` order.
    :meth:`close` ends the input and returns the rest; :meth:`abort` stops at once.
    """

    def __init__(self, sample_rate: int, ring_seconds: float = 4.0) -> None:
        opensmile = require_opensmile()
        from opensmile.core.lib import OpenSMILE

        root = Path(opensmile.__file__).resolve().parent / "core" / "config"
        self._tmp = tempfile.TemporaryDirectory(prefix="vidaffect-smile-")
        tmp = Path(self._tmp.name)
        (tmp / "source.conf.inc").write_text(_SOURCE.format(rate=sample_rate, block=BLOCK_S, wave_frames=int(ring_seconds * sample_rate)))
        (tmp / "ring.conf.inc").write_text(_RING.format(frames=int(ring_seconds / HOP_S)))
        (tmp / "lld.conf").write_text(_CONFIG.format(source=tmp / "source.conf.inc", root=root))
        self._block = 2 * int(BLOCK_S * sample_rate)  # bytes per write
        self._smile = OpenSMILE()
        self._smile.initialize(str(tmp / "lld.conf"), {
            "sinkLevel": "lld",
            "bufferModeRbConf": str(root / "shared" / "BufferModeRb.conf.inc"),
            "bufferModeRbLagConf": str(root / "shared" / "BufferModeRbLag.conf.inc"),
            "bufferModeConf": str(tmp / "ring.conf.inc"),
        }, loglevel=0)  # fmt: skip
        names = [self._smile.external_sink_get_element_name("extsink", i) for i in range(self._smile.external_sink_get_num_elements("extsink"))]
        if tuple(names) != LLD_NAMES:
            raise SetupError(f"this openSMILE's eGeMAPSv02 gives the LLDs {names}, not the {len(LLD_NAMES)} vidaffect expects")
        self._lock = threading.Lock()
        self._starts: list[np.ndarray] = []
        self._rows: list[np.ndarray] = []
        self._error: BaseException | None = None
        self._smile.external_sink_set_callback_ex("extsink", self._on_frames)
        self._thread = threading.Thread(target=self._run, name="opensmile", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._smile.run()
        except BaseException as exc:  # reported by push/close in the caller's thread
            self._error = exc

    def _on_frames(self, data: np.ndarray, meta: Any) -> None:
        rows = np.array(data, np.float32).reshape(-1, len(LLD_NAMES))
        period = float(meta.period) if meta.period > 0 else HOP_S
        with self._lock:
            self._rows.append(rows)
            self._starts.append(float(meta.time) + period * np.arange(len(rows)))

    def _take(self) -> tuple[np.ndarray, np.ndarray]:
        with self._lock:
            starts, rows = self._starts, self._rows
            self._starts, self._rows = [], []
        if not rows:
            return np.empty(0), np.empty((0, len(LLD_NAMES)), np.float32)
        return np.concatenate(starts), np.concatenate(rows)

    def push(self, samples: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        pcm = np.asarray(samples, "<i2").tobytes()
        for i in range(0, len(pcm), self._block):
            block = pcm[i : i + self._block]
            while not self._smile.external_audio_source_write_data("extsource", block):
                if self._error is not None or not self._thread.is_alive():
                    raise RuntimeError(f"openSMILE stopped: {self._error}")
                time.sleep(0.0005)  # the input ring is full: let openSMILE's thread consume
        return self._take()

    def close(self) -> tuple[np.ndarray, np.ndarray]:
        """End of input: wait for openSMILE to finish and return the last frames."""
        self._smile.external_audio_source_set_eoi("extsource")
        self._thread.join()
        self._release()
        if self._error is not None:
            raise RuntimeError(f"openSMILE failed: {self._error}")
        return self._take()

    def abort(self) -> None:
        if self._thread.is_alive():
            self._smile.abort()
            self._thread.join()
        self._release()

    def _release(self) -> None:
        self._smile.free()
        self._tmp.cleanup()
