"""The audio track as a log-Mel spectrogram with one row per video frame.

The STFT runs over the audio stream as it is decoded (centred frames, zero padding at
both ends, as ``librosa.stft(center=True)``), so memory stays flat in video length.
Row t of the output is the mean Mel *power* of the STFT frames whose centres fall in
frame t's time span [timestamp_t, timestamp_{t+1}) (:mod:`.align`), converted to dB
(``10 log10(max(power, amin))``, reference 1.0, no top_db clipping).  When a span holds
no STFT centre (video above sr/hop ≈ 43 frames/s) the STFT frame nearest to the span's
middle is used.  Spans outside the audio are invalid (NaN, ``valid`` False).

A silent track is audio like any other (its rows are valid, at the ``amin`` floor for
digital silence), but its group ``note`` says ``silent`` and ``peak_dbfs`` gives the
track's peak level (:func:`.align.level_attrs`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vidaffect.io.store import Output
from vidaffect.io.video import VideoInfo
from vidaffect.stages.align import FrameAligner, level_attrs
from vidaffect.stages.base import Batch, ModelInput, Stage, StageRun
from vidaffect.stages.params import StageParams, param


@dataclass(frozen=True)
class MelParams(StageParams):
    stage = "mel"

    sr: int = param(22050, "Hz the audio is resampled to", low=1000)
    n_mels: int = param(128, "Mel bands", low=1)
    n_fft: int = param(2048, "samples per STFT window (Hann)", low=16)
    hop_length: int = param(512, "samples between STFT frames", low=1)
    fmin: float = param(0.0, "Hz, lowest Mel band edge", low=0)
    fmax: float | None = param(None, "Hz, highest Mel band edge; none = sr / 2", above=0)
    amin: float = param(1e-10, "power floor before the log", above=0)

    def check(self) -> None:
        top = self.fmax if self.fmax is not None else self.sr / 2
        if not self.fmin < top <= self.sr / 2:
            self.fail("fmax", f"must lie above fmin and at most sr / 2 = {self.sr / 2:g} Hz; got fmin {self.fmin:g}, fmax {top:g}")


def mel_filterbank(p: MelParams) -> np.ndarray:
    import librosa

    return librosa.filters.mel(sr=p.sr, n_fft=p.n_fft, n_mels=p.n_mels, fmin=p.fmin, fmax=p.fmax).astype(np.float32)


def power_to_db(power: np.ndarray, amin: float = 1e-10) -> np.ndarray:
    """``10 log10(max(power, amin))``: dB re 1.0, without top_db clipping, so a row does
    not depend on the loudest moment of the whole video."""
    return 10.0 * np.log10(np.maximum(power, amin))


class StreamingMel:
    """Mel power spectra of centred STFT frames, computed as audio samples arrive.

    Frame k is centred on sample k*hop of the stream (time ``start + k*hop/sr``).
    """

    def __init__(self, p: MelParams) -> None:
        self.p = p
        self.basis = mel_filterbank(p)
        self.window = np.hanning(p.n_fft + 1)[:-1].astype(np.float32)  # periodic Hann, as scipy/librosa
        self.buffer = np.zeros(p.n_fft // 2, np.float32)  # centre padding before sample 0
        self.next_frame = 0  # index of the next STFT frame to compute
        self.buffer_origin = -(p.n_fft // 2)  # stream sample index of buffer[0]
        self.start: float | None = None  # seconds of stream sample 0
        self.samples = 0  # samples received

    def push(self, samples: np.ndarray, start: float) -> tuple[np.ndarray, np.ndarray]:
        """Add samples; returns (centre times (k,), mel power (k, n_mels)) of the STFT
        frames completed by them."""
        if self.start is None:
            self.start = start
        self.samples += len(samples)
        self.buffer = np.concatenate([self.buffer, samples.astype(np.float32, copy=False)])
        return self._frames()

    def flush(self) -> tuple[np.ndarray, np.ndarray]:
        """Pad the end as librosa does and return the last frames."""
        if self.start is None:
            return np.empty(0), np.empty((0, self.p.n_mels), np.float32)
        self.buffer = np.concatenate([self.buffer, np.zeros(self.p.n_fft // 2, np.float32)])
        times, power = self._frames()
        n_total = 1 + self.samples // self.p.hop_length  # librosa's frame count with centring
        keep = self.next_frame - len(times) + np.arange(len(times)) < n_total
        return times[keep], power[keep]

    def _frames(self) -> tuple[np.ndarray, np.ndarray]:
        p = self.p
        first = self.next_frame * p.hop_length - p.n_fft // 2 - self.buffer_origin  # buffer offset of frame start
        n = (len(self.buffer) - first - p.n_fft) // p.hop_length + 1
        if n <= 0:
            return np.empty(0), np.empty((0, p.n_mels), np.float32)
        idx = first + np.arange(n)[:, None] * p.hop_length + np.arange(p.n_fft)[None, :]
        spec = np.fft.rfft(self.buffer[idx] * self.window, axis=1)
        power = (spec.real**2 + spec.imag**2).astype(np.float32) @ self.basis.T
        k = self.next_frame + np.arange(n)
        assert self.start is not None  # set by the first push
        times = self.start + k * p.hop_length / p.sr
        self.next_frame += n
        drop = first + n * p.hop_length
        self.buffer = self.buffer[drop:]
        self.buffer_origin += drop
        return times, power


class MelRun(StageRun):
    def __init__(self, p: MelParams, info: VideoInfo) -> None:
        super().__init__()
        self.p = p
        self.mel = StreamingMel(p)
        self.aligner = FrameAligner(p.n_mels, 1.0 / info.fps if info.fps > 0 else 0.04)
        self.peak = 0.0  # largest sample magnitude so far
        if not info.has_audio:
            self.attrs["note"] = "no audio track"

    def add_audio(self, samples: np.ndarray, start: float) -> None:
        if self.aligner.audio_start is None:
            self.aligner.audio_start = start
        if len(samples):
            self.peak = max(self.peak, float(np.abs(samples).max()))
        self.aligner.add(*self.mel.push(samples, start))

    def process(self, batch: Batch) -> dict[str, np.ndarray]:
        if "note" in self.attrs:  # no audio will come: answer now instead of holding rows
            n = len(batch)
            return {"mel": np.full((n, self.p.n_mels), np.nan, np.float32), "valid": np.zeros(n, bool)}
        return self._rows(*self.aligner.rows(batch.timestamps))

    def finish(self) -> dict[str, np.ndarray]:
        self.aligner.add(*self.mel.flush())
        if self.mel.start is not None:
            self.aligner.audio_end = self.mel.start + self.mel.samples / self.p.sr
            self.attrs.update(level_attrs(self.peak))
        elif "note" not in self.attrs:
            self.attrs["note"] = "audio track has no samples"
        return self._rows(*self.aligner.rows([], final=True))

    def _rows(self, power: np.ndarray, valid: np.ndarray) -> dict[str, np.ndarray]:
        return {"mel": power_to_db(power, self.p.amin).astype(np.float32), "valid": valid}


class MelStage(Stage):
    """``audio/mel``: (T, n_mels) float32 log-Mel power (dB) per video frame (see the
    module docs); ``audio/valid``: (T,) bool, the frame's span lies in the audio."""

    name = "mel"
    group = "audio"
    version = "2"
    uses_audio = True
    Params = MelParams
    model_inputs = {"mel": ModelInput("mel")}
    params: MelParams

    def needs_images(self) -> bool:
        return False

    def outputs(self) -> dict[str, Output]:
        return {"mel": Output((self.params.n_mels,), "f4", np.nan), "valid": Output((), "bool", False)}

    def open(self, info: VideoInfo, store_path: Path) -> StageRun:
        return MelRun(self.params, info)

    def audio_rate(self) -> int:
        return self.params.sr
