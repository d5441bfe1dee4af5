"""What ``pose.every`` N costs in accuracy and gains in speed on real videos: the pose
stage with every = 1 and with every = N on the same decoded frames, following the face
stage's face as in extraction.

Error: distance of each keypoint to the every-frame run's, over keypoints that run sees
with confidence > 0.5 and the every-N run has, in frames where both runs found a body
and the every-frame run sees both shoulders (> 0.5), in % of that frame's shoulder
width (``missing``: the share of those keypoints the every-N run has not); mean and 90th
percentile over every frame, over the interpolated frames only, and over the wrists of
those (the fastest-moving points).
Speed: CPU seconds in the stage per frame (all threads of this process), every = 1
against every = N; the model itself stays the same.

usage: python scripts/pose_every_accuracy.py VIDEO... [--every 2,3,5]
"""

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np

from vidaffect.bench.stages import frame_batches
from vidaffect.io.video import Frame, VideoSource, decode, probe
from vidaffect.stages.face import FaceStage
from vidaffect.stages.layouts import COCO18_NAMES
from vidaffect.stages.pose import PoseParams, PoseStage

K = {name: i for i, name in enumerate(COCO18_NAMES)}
SEEN = 0.5


def run(stage, info, frames: list[Frame], inputs=None) -> tuple[dict[str, np.ndarray], float]:
    """The stage's rows over ``frames`` (``inputs``: the rows of the stages it requires)
    and its CPU seconds per frame."""
    run = stage.open(info, Path(info.path))
    cpu = time.process_time()
    parts = [run.process(batch) for batch in frame_batches(frames, inputs=inputs)]
    parts.append(run.finish())
    cpu = time.process_time() - cpu
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}, cpu / len(frames)


def errors(ref: np.ndarray, rows: dict[str, np.ndarray]) -> dict[str, float | int]:
    """Mean and p90 error in % of the shoulder width (see the module docs)."""
    kp = rows["keypoints"]
    shoulders = ref[:, [K["right_shoulder"], K["left_shoulder"]]]
    width = np.linalg.norm(shoulders[:, 0, :2] - shoulders[:, 1, :2], axis=1)
    frames = (shoulders[:, :, 2] > SEEN).all(axis=1) & (width > 0)
    err = 100 * np.linalg.norm(kp[..., :2] - ref[..., :2], axis=2) / np.where(frames, width, np.nan)[:, None]
    seen = (ref[..., 2] > SEEN) & frames[:, None] & rows["valid"][:, None]  # a body in both runs
    # Keypoints the every-frame run sees that interpolation leaves out (absent at a keyframe).
    out: dict[str, float | int] = {"frames_measured": int(frames.sum()), "missing": float((seen & np.isnan(kp[..., 0])).sum() / max(1, seen.sum()))}
    seen &= np.isfinite(kp[..., 0])
    wrists = np.zeros_like(seen)
    wrists[:, [K["right_wrist"], K["left_wrist"]]] = True
    for name, mask in (("all", seen), ("interpolated", seen & rows["interpolated"][:, None]),
                       ("interpolated_wrists", seen & rows["interpolated"][:, None] & wrists)):  # fmt: skip
        values = err[mask]
        out[f"{name}_mean"] = float(values.mean()) if len(values) else float("nan")
        out[f"{name}_p90"] = float(np.percentile(values, 90)) if len(values) else float("nan")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("videos", nargs="+")
    parser.add_argument("--every", default="2,3,5")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    for path in args.videos:
        info = probe(VideoSource(path, path))
        frames = [item for item in decode(info) if isinstance(item, Frame)]
        face_stage = FaceStage()
        faces = {FaceStage.key(k): v for k, v in run(face_stage, info, frames)[0].items()}
        face_stage.close()
        warm = {k: v[:8] for k, v in faces.items()}
        ref_stage = PoseStage(PoseParams(every=1))
        run(ref_stage, info, frames[:8], warm)  # warm-up: the graph starts
        ref, ref_cpu = run(ref_stage, info, frames, faces)
        ref_stage.close()
        for n in map(int, args.every.split(",")):
            stage = PoseStage(PoseParams(every=n))
            run(stage, info, frames[:8], warm)
            rows, cpu = run(stage, info, frames, faces)
            stage.close()
            assert (rows["interpolated"] & ~rows["valid"]).sum() == 0
            result = {"video": path.rsplit("/", 1)[-1], "frames": len(frames), "every": n, "speedup": ref_cpu / cpu,
                      "cpu_ms_every1": 1000 * ref_cpu, "cpu_ms": 1000 * cpu, "valid_every1": float(ref["valid"].mean()),
                      "valid": float(rows["valid"].mean()), **errors(ref["keypoints"], rows)}  # fmt: skip
            print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
