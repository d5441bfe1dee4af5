"""Who each tracked face is: stable identities over a video, and its primary face.

The face tracker (:mod:`.face_tracker`) follows each face as a *track*: a run of frames
in which the mesh followed one face without interruption.  A track ends when its face
is lost (hidden behind another face, out of the frame) and a face that comes back
starts a new track.  :class:`Identities` gives every track an *identity*, so that a
person keeps one identity over the video:

* **Confirmation.** A new track is described (:mod:`.appearance`) on each of its first
  :data:`CONFIRM_FRAMES` frames, then given the absent identity it resembles most
  (mean distance at most ``threshold``; one identity per track, Hungarian matching),
  or a new identity.  Identities that are on screen at that moment are not
  candidates: two faces in one frame are two people, however alike they look.
* **Watching.** A confirmed face is described every :data:`DESCRIBE_EVERY` frames
  when alone, every frame when another face is near (within a quarter of its box).
  Its identity's appearance model learns only from frames where it is alone and looks
  like itself, so a descriptor mixing two faces never enters a model.
* **Splits.** A confirmed track whose face stops looking like its identity (it
  resembles an absent identity better, or it is far from its own while alone: a shot
  cut, or a mesh that slid onto another face) gets a strike; two strikes in a row end
  the identity's hold on the track: the track is renumbered and confirmed afresh, and
  the frames since the first strike go with the new number (:meth:`Identities.resolve`).
* **Gallery.** Identities out of sight are kept for re-identification, at most
  :data:`MAX_IDENTITIES` (the least recently seen is forgotten first).

**Subjects and the primary face.** Each track counts its frames and its *screen
time*: the sum over the frames it is seen of the face's height over the frame's height,
"present longest and largest", linear in both.  At the end of the video
(:meth:`Identities.subjects`) the identities are ranked by screen time: subject 0, the
*primary face*, is the identity with the largest sum over its tracks.

Memory: per identity its appearance model (about 8 kB); per track a few numbers (its
identity, counts, its pending descriptors while it is unconfirmed).  Nothing is kept
per frame.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import linear_sum_assignment

from vidaffect.stages.appearance import AppearanceModel, Descriptor, describe, distance
from vidaffect.stages.boxes import overlap_of_smaller

CONFIRM_FRAMES = 3  # frames a new track is described before its identity is decided
DESCRIBE_EVERY = 5  # frames between descriptors of a confirmed face that is alone
MAX_IDENTITIES = 32  # identities kept for re-identification
SPLIT_STRIKES = 2  # consecutive described frames that do not fit before a track is split
FAR = 1.5  # a face alone farther than FAR x threshold from its own identity does not fit
NEAR = 0.25  # another face within this fraction of a box makes a face "crowded"


@dataclass
class _Seen:
    """How much a track was seen: frames, last frame, screen time (see the module
    docs), sum of the face centre's horizontal position over the frame's width."""

    frames: int = 0
    last: int = -1
    screen: float = 0.0
    x: float = 0.0

    def add(self, frame: int, screen: float, x: float) -> None:
        self.frames += 1
        self.last = frame
        self.screen += screen
        self.x += x

    def take(self, part: _Seen) -> None:
        """Give ``part`` (counted since a strike) to another track."""
        self.frames -= part.frames
        self.screen -= part.screen
        self.x -= part.x


@dataclass
class _Watch:
    """What is known about one track."""

    born: int  # frame
    identity: int = -1  # -1 until confirmed
    pending: list[Descriptor] = field(default_factory=list)
    strikes: int = 0
    first_strike: int = -1  # frame of the first of the current strikes
    seen: _Seen = field(default_factory=_Seen)
    seen_since_strike: _Seen = field(default_factory=_Seen)


@dataclass(frozen=True)
class Subject:
    """A person of the video (an identity), with how much it was seen.

    subject: 0 for the primary face, then 1, 2, ... by screen time.
    identity: the tracker's identity (``face/identity``).
    frames: frames the person's face is in; first, last: the first and last of them.
    screen: screen time (see the module docs).
    centre_x: the face centre's mean horizontal position over those frames, as a
        fraction of the frame's width (0 left, 1 right).
    """

    subject: int
    identity: int
    frames: int
    first: int
    last: int
    screen: float
    centre_x: float


@dataclass
class Seen:
    """One tracked face in the current frame, as the tracker hands it over."""

    track: int
    box: np.ndarray  # (4,) px, the box of its 68 points (its height is the face's size)
    mesh: np.ndarray  # (478, 3) px


@dataclass
class _Identity:
    model: AppearanceModel = field(default_factory=AppearanceModel)
    last_frame: int = -1


class Identities:
    """The identities of one video's tracks (see the module docs).

    Parameters
    ----------
    threshold : float
        Appearance distance (:func:`.appearance.distance`) up to which a face is
        taken for a known identity.
    """

    def __init__(self, threshold: float) -> None:
        self.threshold = threshold
        self._watch: dict[int, _Watch] = {}
        self._known: dict[int, _Identity] = {}
        self._next_track = 0
        self._next_identity = 0
        # (old track, new track, first frame): the old track's frames from then on
        # belong to the new one (a split is found a frame or two after the change).
        self.relabels: list[tuple[int, int, int]] = []
        # (frame, track, identity, distance to it, distance to the next-best): how
        # sure each confirmation was; inf when there was no candidate.
        self.decisions: list[tuple[int, int, int, float, float]] = []

    def start(self, frame: int) -> int:
        """A new track from ``frame`` on; returns its number."""
        track = self._next_track
        self._next_track += 1
        self._watch[track] = _Watch(frame)
        return track

    def end(self, track: int, frame: int) -> None:
        """The track's face was last seen in ``frame``.  A track that ends before it
        was confirmed (a few frames) keeps no identity."""
        watch = self._watch[track]
        watch.pending = []
        if watch.identity >= 0 and watch.identity in self._known:
            self._known[watch.identity].last_frame = frame

    def identity(self, track: int) -> int:
        """The track's identity so far, -1 while it is not confirmed."""
        return self._watch[track].identity

    def observe(self, image: np.ndarray, faces: list[Seen], frame: int) -> dict[int, int]:
        """Take note of the faces of one frame.

        Returns
        -------
        dict
            Tracks split in this frame: old number -> new number.
        """
        height, width = image.shape[:2]
        for face in faces:
            watch = self._watch[face.track]
            x, _, w, h = (float(v) for v in face.box)
            for seen in (watch.seen, watch.seen_since_strike):
                seen.add(frame, h / height, (x + w / 2) / width)
        splits = self._check(image, faces, frame)
        for face in faces:
            face.track = splits.get(face.track, face.track)
        self._confirm([f.track for f in faces], frame)
        return splits

    def drop_duplicate(self, image: np.ndarray, a: Seen, b: Seen) -> int:
        """Two tracks on one face (one slid onto the other as they crossed): the track
        to end, the one whose identity resembles the face less."""
        desc = describe(image, a.mesh)
        da, db = self._distance(a.track, desc), self._distance(b.track, desc)
        loser = b.track if (da, self._watch[a.track].born) <= (db, self._watch[b.track].born) else a.track
        return loser

    def finish(self, tracks: list[int], frame: int) -> None:
        """The video ended: tracks still pending are confirmed with what they have."""
        self._confirm(tracks, frame, force=True)

    def resolve(self, track: int, frame: int) -> int:
        """The final identity of the face ``track`` showed in ``frame`` (after
        :meth:`finish`); -1 for a track that never was confirmed."""
        return int(self.resolve_many(np.array([[track]]), np.array([frame]))[0, 0])

    def resolve_many(self, tracks: np.ndarray, frames: np.ndarray) -> np.ndarray:
        """:meth:`resolve` for a table: ``tracks`` (n, k) int, -1 for no face, in the
        frames ``frames`` (n,); returns (n, k) identities, -1 where none."""
        tracks = np.array(tracks, np.int64)
        for old, new, start in self.relabels:
            tracks[(tracks == old) & (np.asarray(frames)[:, None] >= start)] = new
        table = np.full(self._next_track + 1, -1, np.int64)  # the last entry: no face
        for track, watch in self._watch.items():
            table[track] = watch.identity
        return table[np.where(tracks >= 0, tracks, self._next_track)]

    def subjects(self) -> list[Subject]:
        """Every identity seen, ranked by screen time: the primary face first (after
        :meth:`finish`)."""
        total: dict[int, list[float]] = {}  # identity -> frames, first, last, screen, x
        for watch in self._watch.values():
            seen = watch.seen
            if watch.identity < 0 or not seen.frames:
                continue
            t = total.setdefault(watch.identity, [0, watch.born, -1, 0.0, 0.0])
            t[0] += seen.frames
            t[1] = min(t[1], watch.born)
            t[2] = max(t[2], seen.last)
            t[3] += seen.screen
            t[4] += seen.x
        ranked = sorted(total, key=lambda k: (-total[k][3], k))
        return [
            Subject(rank, k, int(t[0]), int(t[1]), int(t[2]), float(t[3]), float(t[4] / t[0]))
            for rank, k in enumerate(ranked)
            for t in [total[k]]
        ]

    def primary(self) -> int:
        """The primary face's identity, -1 when no face was seen (after :meth:`finish`)."""
        ranked = self.subjects()
        return ranked[0].identity if ranked else -1

    # -- internals ------------------------------------------------------------------

    def _distance(self, track: int, desc: Descriptor) -> float:
        watch = self._watch[track]
        if watch.identity >= 0:
            return self._known[watch.identity].model.distance(desc)
        if not watch.pending:
            return float("inf")
        return float(np.mean([distance(desc, p) for p in watch.pending]))

    def _check(self, image: np.ndarray, faces: list[Seen], frame: int) -> dict[int, int]:
        active = {self._watch[f.track].identity for f in faces} - {-1}
        splits: dict[int, int] = {}
        for face in faces:
            watch = self._watch[face.track]
            crowded = _crowded(face, faces)
            due = (frame - watch.born) % DESCRIBE_EVERY == 0
            if not (crowded or watch.identity < 0 or watch.strikes or due):
                continue
            desc = describe(image, face.mesh)
            if watch.identity < 0:
                if not crowded or not watch.pending:
                    watch.pending.append(desc)
                continue
            own = self._known[watch.identity]
            d_own = own.model.distance(desc)
            if d_own <= self.threshold:
                watch.strikes = 0
                if not crowded:
                    own.model.add(desc)
                continue
            absent = [i for k, i in self._known.items() if k not in active]
            better = any(i.model.distance(desc) < min(self.threshold, 0.5 * d_own) for i in absent)
            # Near another face a descriptor may mix the two, so "far from its own"
            # only counts when the face is alone.
            far = d_own > FAR * self.threshold and not crowded
            if not (better or far):
                watch.strikes = 0
                continue
            watch.strikes += 1
            if watch.strikes == 1:
                x, _, w, h = (float(v) for v in face.box)
                watch.first_strike = frame
                watch.seen_since_strike = _Seen()
                watch.seen_since_strike.add(frame, h / image.shape[0], (x + w / 2) / image.shape[1])
            if watch.strikes >= SPLIT_STRIKES:
                splits[face.track] = self._split(face.track, frame, desc)
                active.discard(watch.identity)
        return splits

    def _split(self, track: int, frame: int, desc: Descriptor) -> int:
        old = self._watch[track]
        self.end(track, frame - 1)
        new = self.start(old.first_strike)
        watch = self._watch[new]
        watch.pending = [desc]
        watch.seen = old.seen_since_strike
        old.seen.take(old.seen_since_strike)
        old.seen.last = old.first_strike - 1
        old.strikes = 0
        self.relabels.append((track, new, old.first_strike))
        return new

    def _confirm(self, tracks: list[int], frame: int, force: bool = False) -> None:
        """Decide the identity of the pending ``tracks`` (those of the current frame)
        that have been described often enough, or at all when ``force``."""
        watches = [(t, self._watch[t]) for t in tracks]
        ready = [(t, w) for t, w in watches if w.identity < 0 and (len(w.pending) >= CONFIRM_FRAMES or (force and w.pending))]
        if not ready:
            return
        active = {self._watch[t].identity for t in tracks} - {-1}
        gallery = [k for k in self._known if k not in active]
        cost = np.array([[np.mean([self._known[k].model.distance(d) for d in w.pending]) for k in gallery] for _, w in ready])
        cost = cost.reshape(len(ready), len(gallery))
        if gallery:
            for r, c in zip(*linear_sum_assignment(cost), strict=True):
                if cost[r, c] <= self.threshold:
                    ready[r][1].identity = gallery[c]
        for r, (track, watch) in enumerate(ready):
            if watch.identity < 0:
                watch.identity = self._next_identity
                self._next_identity += 1
                self._known[watch.identity] = _Identity()
                self._forget(active | {watch.identity})
            model = self._known[watch.identity].model
            for d in watch.pending:
                model.add(d)
            watch.pending = []
            ranked = np.sort(cost[r])
            best = float(ranked[0]) if len(ranked) else float("inf")
            self.decisions.append((frame, track, watch.identity, best, float(ranked[1]) if len(ranked) > 1 else float("inf")))

    def _forget(self, keep: set[int]) -> None:
        """Forget the least recently seen identities beyond :data:`MAX_IDENTITIES`."""
        excess = len(self._known) - MAX_IDENTITIES
        if excess > 0:
            old = sorted((i.last_frame, k) for k, i in self._known.items() if k not in keep)
            for _, k in old[:excess]:
                del self._known[k]


def _crowded(face: Seen, faces: list[Seen]) -> bool:
    """Another face overlaps or nearly touches this one: its descriptor may mix them."""
    x, y, w, h = (float(v) for v in face.box)
    grown = np.array([x - NEAR * w, y - NEAR * h, (1 + 2 * NEAR) * w, (1 + 2 * NEAR) * h])
    return any(o is not face and overlap_of_smaller(grown, o.box) > 0 for o in faces)
