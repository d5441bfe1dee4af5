"""The ``evm`` stage: the face-crop stream magnified (:mod:`.magnify`: colour and
motion, causal filters designed for the video's real frame rate, restarted after
frames without a face), then encoded by the same frozen encoder as ``embed``.
With ``save_video`` the magnified crops are also written as ``<video-id>.evm.mp4`` next
to the store.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vidaffect.io.video import VideoInfo
from vidaffect.io.video_writer import VideoWriter
from vidaffect.stages.base import Batch, ModelInput, StageRun
from vidaffect.stages.crop import CROP_SIZE
from vidaffect.stages.embed import CropRun, EncoderParams, EncoderStage
from vidaffect.stages.magnify import EvmSettings, Magnifier, frame_rate
from vidaffect.stages.params import param
from vidaffect.util.segments import segments


@dataclass(frozen=True)
class EvmParams(EncoderParams, EvmSettings):
    """Parameters of the ``evm`` stage: those of :class:`.embed.EncoderParams` and
    :class:`.magnify.EvmSettings`, and ``save_video``."""

    stage = "evm"

    save_video: bool = param(False, "also write the magnified crops as <video-id>.evm.mp4 next to the store")

    def check(self) -> None:
        EncoderParams.check(self)
        EvmSettings.check(self)


class _EvmRun(CropRun):
    def __init__(self, stage: EvmStage, info: VideoInfo, store_path: Path) -> None:
        super().__init__(stage)
        self.settings: EvmParams = stage.params
        self.info = info
        self.video_path = store_path.with_suffix(".evm.mp4") if stage.params.save_video else None
        self.magnifier: Magnifier | None = None
        self.writer: VideoWriter | None = None
        self.previous_had_face = False

    def _start(self, batch: Batch) -> Magnifier:
        fps = frame_rate(batch.timestamps, self.info.fps)
        magnifier = Magnifier(fps, (CROP_SIZE, CROP_SIZE), self.settings)
        self.attrs["fps"] = fps
        if magnifier.notes:
            self.attrs["note"] = "; ".join(magnifier.notes)
        if self.video_path is not None:
            self.writer = VideoWriter(self.video_path, fps, (CROP_SIZE, CROP_SIZE), timed=True)
            self.attrs["video"] = self.video_path.name
        return magnifier

    def transform(self, crops: np.ndarray, has_face: np.ndarray, batch: Batch) -> np.ndarray:
        if self.magnifier is None:
            self.magnifier = self._start(batch)
        magnifier = self.magnifier
        out = np.empty_like(crops)
        done = 0  # crops are packed in frame order, one per frame with a face
        for start, stop in segments(has_face):
            if start > 0 or not self.previous_had_face:
                magnifier.reset()  # a new face segment after frames without one
            n = stop - start
            magnified = magnifier(crops[done : done + n].astype(np.float32) / 255.0)
            out[done : done + n] = np.round(magnified * 255.0).astype(np.uint8)
            done += n
        if len(has_face):
            self.previous_had_face = bool(has_face[-1])
        if self.writer is not None:
            frames = np.zeros((len(has_face), CROP_SIZE, CROP_SIZE, 3), np.uint8)
            frames[has_face] = out
            self.writer.write(frames, batch.timestamps)
        return out

    def finish(self) -> dict[str, np.ndarray]:
        rows = super().finish()
        if self.writer is not None:
            self.writer.close()
            self.writer = None
        return rows

    def abort(self) -> None:
        if self.writer is not None:
            self.writer.discard()
            self.writer = None


class EvmStage(EncoderStage):
    """``evm/<encoder>``: (T, 2048) float16 features of the Eulerian-magnified face
    crop (colour and motion), NaN where the frame has no face; ``evm/valid``: (T,)
    bool.  Parameters: :class:`EvmParams`."""

    name = "evm"
    group = "evm"
    version = "1"
    Params = EvmParams
    model_inputs = {"evm": ModelInput("{encoder}")}
    params: EvmParams

    def open(self, info: VideoInfo, store_path: Path) -> StageRun:
        return _EvmRun(self, info, store_path)
