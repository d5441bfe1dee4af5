"""The egemaps stage: openSMILE's eGeMAPSv02 low-level descriptors, one row per frame.

Needs the optional ``opensmile`` package: ``pip install 'vidaffect[egemaps]'``.
openSMILE is under audEERING's research licence, **non-commercial use only**, which is
why it is an extra and the stage is not in the default recipe (add it with
``--stages ...,egemaps`` or in a recipe's ``stages:``).

The audio is resampled to ``sr`` (16 kHz by default: eGeMAPS values depend on the
rate, so one rate keeps them comparable across videos and with other tools) and
analysed by :class:`.smile.SmileStream` (flat memory).  openSMILE gives the 25 LLDs of
:data:`.smile.LLD_NAMES` every 10 ms; frame k starts at k * 10 ms and its centre is
10 ms later for the LLDs measured over 20 ms windows and 30 ms later for those over
60 ms windows.  Row t is, per LLD, the mean over the LLD frames whose centres fall in
the video frame's span (:mod:`.align`, as the mel stage); the 15 ``_sma3nz`` LLDs
(F0, jitter, shimmer, HNR, harmonic differences and the formants) are defined on
voiced frames only, so they average the voiced frames (F0 > 0) of the span and are
NaN when it has none (openSMILE itself writes 0 or -201 there, which would drag the
means down).  Datasets of the ``egemaps`` group:

=========  ============  =============================================================
``lld``    (25,) float32 the LLDs in openSMILE's order and units (names in the README
                         and in the group's ``names`` attribute)
``voiced`` () float32    fraction of the span's 60 ms frames that are voiced
``valid``  () bool       the frame's span lies in the audio
=========  ============  =============================================================

A video without an audio track has every row invalid and the note ``no audio track``;
a silent track keeps valid rows with the note ``silent`` (:func:`.align.level_attrs`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vidaffect.io.store import Output
from vidaffect.io.video import AUDIO_RATE, VideoInfo
from vidaffect.stages.align import FrameAligner, level_attrs
from vidaffect.stages.base import Batch, ModelInput, Stage, StageRun
from vidaffect.stages.params import StageParams, param
from vidaffect.stages.smile import F0, LLD_NAMES, SIXTY_MS, SmileStream, require_opensmile

# Centre of each column after its frame's start: the LLDs, then the voiced fraction.
CENTRES = np.array([0.030 if n in SIXTY_MS else 0.010 for n in LLD_NAMES] + [0.030])
VOICED_ONLY = np.array([n.endswith("nz") for n in LLD_NAMES] + [False])
WIDTH = len(LLD_NAMES)


@dataclass(frozen=True)
class EgemapsParams(StageParams):
    stage = "egemaps"

    sr: int = param(16000, "Hz the audio is resampled to before openSMILE (eGeMAPS values depend on it)", low=8000)
    ring_seconds: float = param(4.0, "seconds held by each of openSMILE's ring buffers (bounds its memory)", low=1)


class EgemapsStage(Stage):
    """eGeMAPSv02 LLDs per video frame (see the module docs)."""

    name = "egemaps"
    version = "1"
    uses_audio = True
    Params = EgemapsParams
    model_inputs = {"egemaps": ModelInput("lld")}
    params: EgemapsParams

    def needs_images(self) -> bool:
        return False

    @classmethod
    def prepare(cls, params: Any, progress: bool = False) -> None:
        require_opensmile()

    def outputs(self) -> dict[str, Output]:
        return {"lld": Output((WIDTH,), "f4"), "voiced": Output((), "f4"), "valid": Output((), "bool", False)}

    def open(self, info: VideoInfo, store_path: Path) -> StageRun:
        require_opensmile()
        return _EgemapsRun(self.params, info, self.audio_rate())

    def audio_rate(self) -> int:
        # The engine decodes one audio rate for every audio stage (mel's); the stage
        # resamples to its own rate itself.
        return AUDIO_RATE


class _EgemapsRun(StageRun):
    def __init__(self, p: EgemapsParams, info: VideoInfo, rate: int) -> None:
        super().__init__()
        self.p = p
        self.rate = rate
        self.aligner = FrameAligner(WIDTH + 1, 1.0 / info.fps if info.fps > 0 else 0.04, CENTRES)
        self.stream: SmileStream | None = None
        self.resampler: Any = None
        self.samples = 0  # at the stage's rate
        self.peak = 0.0  # largest sample magnitude so far
        self.attrs = {"names": list(LLD_NAMES), "sr": p.sr}
        if not info.has_audio:
            self.attrs["note"] = "no audio track"

    def add_audio(self, samples: np.ndarray, start: float) -> None:
        import av

        if self.stream is None:
            self.stream = SmileStream(self.p.sr, self.p.ring_seconds)
            self.resampler = av.AudioResampler(format="s16", layout="mono", rate=self.p.sr)
            self.aligner.audio_start = start
        if len(samples):
            self.peak = max(self.peak, float(np.abs(samples).max()))
        frame = av.AudioFrame.from_ndarray(np.asarray(samples, np.float32)[None], format="flt", layout="mono")
        frame.sample_rate = self.rate
        self._push(self.resampler.resample(frame))

    def _push(self, frames: list[Any]) -> None:
        assert self.stream is not None
        pcm = np.concatenate([f.to_ndarray().reshape(-1) for f in frames]) if frames else np.empty(0, np.int16)
        self.samples += len(pcm)
        self._add(*self.stream.push(pcm))

    def _add(self, starts: np.ndarray, lld: np.ndarray) -> None:
        if not len(starts):
            return
        voiced = lld[:, F0] > 0
        values = np.concatenate([lld, voiced[:, None].astype(np.float32)], axis=1)
        counted = np.where(VOICED_ONLY, voiced[:, None], True)
        assert self.aligner.audio_start is not None
        self.aligner.add(self.aligner.audio_start + starts, values, counted)

    def process(self, batch: Batch) -> dict[str, np.ndarray]:
        if "note" in self.attrs:  # no audio will come: answer now instead of holding rows
            return self._rows(np.full((len(batch), WIDTH + 1), np.nan, np.float32), np.zeros(len(batch), bool))
        return self._rows(*self.aligner.rows(batch.timestamps))

    def finish(self) -> dict[str, np.ndarray]:
        if self.stream is not None:
            self._push(self.resampler.resample(None))
            self._add(*self.stream.close())
            self.stream = None
            assert self.aligner.audio_start is not None
            self.aligner.audio_end = self.aligner.audio_start + self.samples / self.p.sr
            self.attrs.update(level_attrs(self.peak))
        elif "note" not in self.attrs:
            self.attrs["note"] = "audio track has no samples"
        return self._rows(*self.aligner.rows([], final=True))

    def abort(self) -> None:
        if self.stream is not None:
            self.stream.abort()
            self.stream = None

    @staticmethod
    def _rows(values: np.ndarray, valid: np.ndarray) -> dict[str, np.ndarray]:
        return {"lld": values[:, :WIDTH], "voiced": values[:, WIDTH], "valid": valid}

