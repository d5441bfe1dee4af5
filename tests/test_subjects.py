"""Every face of a video through the extract engine: the primary face chosen over the
whole video, and with face.faces=all one group per person, the per-person stages
run for each."""

import json

import h5py
import numpy as np
import pytest
from media import make_video

from vidaffect.bench.face_clips import EXIT_FRAMES, background, crossing_clip, place_face
from vidaffect.commands.extract import extract
from vidaffect.commands.info import describe
from vidaffect.io.store import subject_group
from vidaffect.stages.boxes import box_iou
from vidaffect.stages.face import read_subjects, side_subjects

# 20 frames: the astronaut on the left, Grace Hopper on the right growing from 70 to
# 184 px high: the astronaut is more prominent at first, Hopper has the more screen
# time weighted by size over the clip (and so is the primary face).
FRAMES = 20


@pytest.fixture(scope="module")
def two_faces(tmp_path_factory):
    root = tmp_path_factory.mktemp("two")
    frames, boxes = [], []
    for i in range(FRAMES):
        canvas = background()
        boxes.append((place_face(canvas, "astronaut", 110, (170 + i, 180)), place_face(canvas, "hopper", 70 + 6 * i, (470, 180))))
        frames.append(canvas)
    return make_video(root / "videos" / "two.mp4", frames), boxes


def face_rows(h5, group="face"):
    return {k: h5[group][k][()] for k in h5[group]}


def follows(rows, boxes):
    """Index of the true face the stored boxes overlap in every valid frame, or None."""
    hits = {max((box_iou(rows["bbox"][t], b[k]), k) for k in (0, 1))[1] for t, b in enumerate(boxes) if rows["valid"][t]}
    return hits.pop() if len(hits) == 1 else None


def test_the_primary_face_is_chosen_over_the_whole_video(two_faces, tmp_path):
    clip, boxes = two_faces
    summary = extract([clip], tmp_path / "features", stages=["face", "pose"])
    assert [r.status for r in summary.results] == ["done"], summary.report()
    path = tmp_path / "features" / "two.h5"
    with h5py.File(path, "r") as h5:
        rows = face_rows(h5)
        subjects = json.loads(h5["face"].attrs["subjects"])
        assert h5["face"].attrs["people_seen"] == 2
        assert "subjects" not in h5  # faces=primary stores one person
    assert rows["valid"].all() and (rows["count"] == 2).all()
    assert follows(rows, boxes) == 1  # Hopper, from the first frame on
    assert len(set(rows["identity"])) == 1
    assert [s["subject"] for s in subjects] == [0] and subjects[0]["identity"] == rows["identity"][0]
    assert subjects[0]["frames"] == FRAMES and subjects[0]["centre_x"] > 0.5
    assert not list(path.parent.glob(".*.faces.tmp"))  # the temporary table is gone


def test_every_person_gets_their_groups_with_faces_all(two_faces, tmp_path):
    # pose stands for every stage that follows a face (embed and evm run the same way).
    clip, boxes = two_faces
    store = tmp_path / "features"
    params = {"face": {"faces": "all", "min_subject_seconds": 0.2}, "embed": {"weights": "random"}}
    summary = extract([clip], store, stages=["face", "pose", "embed"], params=params)
    assert [r.status for r in summary.results] == ["done"], summary.report()
    with h5py.File(store / "two.h5", "r") as h5:
        primary, other = face_rows(h5), face_rows(h5, "subjects/1/face")
        subjects = json.loads(h5["face"].attrs["subjects"])
        assert set(h5["subjects/1"]) == {"face", "pose", "embed"}
        # Each person's crops are their own face's: the embeddings differ throughout.
        mine, theirs = h5["embed/resnet50"][()].astype(np.float32), h5["subjects/1/embed/resnet50"][()].astype(np.float32)
        assert h5["subjects/1/embed/valid"][()].all() and (np.abs(mine - theirs).mean(axis=1) > 0.1 * np.abs(mine).mean()).all()
        for group in ("face", "pose"):
            assert h5[f"subjects/1/{group}"].attrs["params_hash"] == h5[group].attrs["params_hash"]
        assert h5["subjects/1/face"].attrs["subject"] == 1
    assert follows(primary, boxes) == 1 and follows(other, boxes) == 0
    assert [s["subject"] for s in subjects] == [0, 1]
    assert subjects[1]["centre_x"] < 0.5 < subjects[0]["centre_x"]  # the astronaut is on the left
    assert side_subjects(read_subjects(json.dumps(subjects))) == {"left": 1, "right": 0}
    assert "subjects/1/face" in describe(store / "two.h5") and "2 subjects" in describe(store)
    # Up to date: nothing to do.  A changed parameter of a per-person stage redoes it
    # for every person, and nothing else.
    assert extract([clip], store, stages=["face", "pose"], params=params).results[0].status == "skipped"
    params["pose"] = {"min_keypoint_confidence": 0.6}
    again = extract([clip], store, stages=["face", "pose"], params=params).results[0]
    assert again.status == "done" and sorted(again.stages) == ["pose", "pose (subject 1)"]
    with h5py.File(store / "two.h5", "r") as h5:
        assert json.loads(h5["subjects/1/pose"].attrs["params"])["min_keypoint_confidence"] == 0.6
        np.testing.assert_array_equal(h5["subjects/1/face/landmarks"][()], other["landmarks"])
    # Back to one face per video: the further subjects' groups go.
    extract([clip], store, stages=["face", "pose"])
    with h5py.File(store / "two.h5", "r") as h5:
        assert "subjects" not in h5 and json.loads(h5["face"].attrs["params"])["faces"] == "primary"


def test_head_and_gaze_run_per_person_with_faces_all(two_faces, tmp_path):
    # They read the face's mesh, so each person's head sits on that person's face.
    clip, boxes = two_faces
    store = tmp_path / "features"
    params = {"face": {"faces": "all", "min_subject_seconds": 0.2}}
    summary = extract([clip], store, stages=["face", "head", "gaze"], params=params)
    assert [r.status for r in summary.results] == ["done"], summary.report()
    with h5py.File(store / "two.h5", "r") as h5:
        assert set(h5["subjects/1"]) == {"face", "head", "gaze"}
        for k, true_face in ((0, 1), (1, 0)):
            origin, valid = h5[subject_group(k, "head/origin")][()], h5[subject_group(k, "head/valid")][()]
            assert valid.all() and h5[subject_group(k, "gaze/valid")][()].any()
            for t, b in enumerate(boxes):
                box = np.asarray(b[true_face], np.float64)
                assert box[0] < origin[t, 0] < box[0] + box[2], (k, t)


def test_a_face_stage_that_fails_leaves_pose_made_without_it(two_faces, tmp_path, monkeypatch):
    from vidaffect.stages.face_tracker import FaceTracker

    def broken(self, image):
        raise RuntimeError("the mesh broke")

    monkeypatch.setattr(FaceTracker, "step", broken)
    clip, _ = two_faces
    result = extract([clip], tmp_path / "features", stages=["face", "pose"]).results[0]
    assert result.status == "failed" and result.failed_stages == {"face": "RuntimeError: the mesh broke"}
    assert result.stages == ["pose"]
    with h5py.File(tmp_path / "features" / "two.h5", "r") as h5:
        assert "face" not in h5 and "made without face" in h5["pose"].attrs["note"]
    assert not list((tmp_path / "features").glob(".*.faces.tmp"))


def test_left_and_right_annotations_train_and_predict_each_person(two_faces, tmp_path):
    """Aff-Wild2's two-person videos: <id>_left / <id>_right annotations follow the
    people by side (the astronaut on the left is subject 1, Hopper on the right the
    primary face, subject 0); training reads each one's own features, predict writes
    a run of rows per person that evaluate matches to the same files."""
    from vidaffect.commands.evaluate import pair_with_annotations
    from vidaffect.commands.predict import predict
    from vidaffect.commands.train import gather, train
    from vidaffect.io.predictions import read_predictions
    from vidaffect.learn.modalities import load_inputs

    clip, _ = two_faces
    store, ann = tmp_path / "features", tmp_path / "annotations"
    ann.mkdir()
    rng = np.random.default_rng(0)
    for side in ("left", "right"):
        np.savetxt(ann / f"two_{side}.txt", rng.uniform(-1, 1, (FRAMES, 2)), delimiter=",", header="valence,arousal", comments="", fmt="%.4f")
    # One person's features cannot serve two annotations: a clear error, not a guess.
    extract([clip], store, stages=["face", "pose"])
    with pytest.raises(ValueError, match=r"_left/_right annotations .* face.faces=all"):
        gather(store, ann, None, "pose")
    extract([clip], store, stages=["face", "pose"], params={"face": {"faces": "all", "min_subject_seconds": 0.2}})
    pool = gather(store, ann, None, "pose")
    assert {v.video_id: v.subject for v in pool.train} == {"two_left": 1, "two_right": 0}
    assert pool.video_of == {"two_left": "two", "two_right": "two"}
    with h5py.File(store / "two.h5", "r") as h5:
        left, _ = load_inputs(h5, ["pose"], subject=1)
        right, _ = load_inputs(h5, ["pose"])
        np.testing.assert_array_equal(np.isnan(left["pose"]).all(axis=1), ~h5["subjects/1/pose/valid"][()])
        assert h5["subjects/1/face/bbox"][0, 0] < h5["face/bbox"][0, 0]  # subject 1's face is the left one
    run = train(store=store, annotations=ann, out=tmp_path / "run", net="pose", loss="ccc", seq_len=8, batch_size=2,
                epochs=1, val_split=0, seed=0, device="cpu", progress=False)  # fmt: skip
    out = tmp_path / "pred.csv"
    summary = predict([clip], out, model=run / "best.ckpt", store=store, device="cpu")
    assert summary.exit_code == 0, summary.report()
    with open(out) as fh:
        header, *rows = [line.rstrip("\n").split(",") for line in fh]
    assert header[-1] == "subject"
    assert [r[-1] for r in rows] == ["left"] * FRAMES + ["right"] * FRAMES
    preds = read_predictions(out)
    assert set(preds) == {"two_left", "two_right"} and all(len(p) == FRAMES for p in preds.values())
    pairs, skipped = pair_with_annotations(out, ann)
    assert set(pairs) == {"two_left", "two_right"} and not skipped


def nearest(box, truth):
    """The true face a stored box sits on (IoU > 0.4), or None."""
    iou, k = max((box_iou(box, b), k) for k, b in enumerate(truth) if b is not None)
    return k if iou > 0.4 else None


def test_three_crossing_faces_are_three_steady_subjects(tmp_path):
    # A and B cross (A hidden behind B for a while); C, the astronaut mirrored, leaves
    # the frame for 20 frames and comes back while the astronaut is in view.  Through
    # the engine with faces=all: each person's stored face stays on one true face
    # (no identity switch, no merge), C is stored again after its return, and B has
    # the most screen time weighted by size, so it is the primary face (subject 0).
    clip = crossing_clip()
    video = make_video(tmp_path / "videos" / "cross.mp4", clip.frames)
    result = extract([video], tmp_path / "features", stages=["face"], params={"face": {"faces": "all"}}).results[0]
    assert result.status == "done", result.reason
    with h5py.File(tmp_path / "features" / "cross.h5", "r") as h5:
        subjects = read_subjects(h5["face"].attrs["subjects"])
        stored = [face_rows(h5, subject_group(s.subject, "face")) for s in subjects]
    assert len(subjects) == 3
    truth = np.array(clip.visible)  # (frames, true face)
    followed = []
    for rows in stored:
        hits = {nearest(rows["bbox"][t], clip.boxes[t]) for t in np.flatnonzero(rows["valid"])}
        assert len(hits) == 1, hits  # one true face per stored person: no switch
        k = hits.pop()
        assert rows["valid"].sum() >= 0.8 * truth[:, k].sum(), (k, rows["valid"].sum(), truth[:, k].sum())
        followed.append(k)
    assert sorted(followed) == [0, 1, 2]  # no merge
    assert followed[0] == int(np.argmax(clip.screen_time())) == 1  # B is the primary face
    c = stored[followed.index(2)]["valid"]
    assert not c[EXIT_FRAMES[0] + 2 : EXIT_FRAMES[1]].any() and c[EXIT_FRAMES[1] + 10 :].any()  # away, then back
