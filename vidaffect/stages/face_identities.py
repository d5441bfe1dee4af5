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

**Primary face.** Each track accumulates its *screen time*: the sum over the frames it
is seen of the face's height over the frame's height, "present longest and largest",
linear in both.  The primary identity is the one with the largest sum over its tracks,
decided at the end of the video (:meth:`Identities.primary`); mid-video the same rule
gives the running leader (:meth:`Identities.leader`).

Memory: per identity its appearance model (about 8 kB); per track a few numbers (its
identity, its screen time, its pending descriptors while it is unconfirmed).  Nothing
is kept per frame.
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
class _Watch:
    """What is known about one track."""

    born: int  # frame
    identity: int = -1  # -1 until confirmed
    pending: list[Descriptor] = field(default_factory=list)
    strikes: int = 0
    first_strike: int = -1  # frame of the first of the current strikes
    screen: float = 0.0  # screen time, see the module docs
    screen_since_strike: float = 0.0


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
        self._active: set[int] = set()  # identities confirmed on screen in the last frame
        self._pending: list[int] = []  # tracks on screen in the last frame, not confirmed
        self._screen: dict[int, float] = {}  # screen time per identity
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
        """The track's identity so far: while the track is not confirmed, the identity
        out of sight it resembles most (mean distance at most the threshold), else -1."""
        watch = self._watch[track]
        if watch.identity >= 0 or not watch.pending:
            return watch.identity
        best, nearest = -1, self.threshold
        for k, known in self._known.items():
            if k not in self._active:
                d = float(np.mean([known.model.distance(p) for p in watch.pending]))
                if d <= nearest:
                    best, nearest = k, d
        return best

    def observe(self, image: np.ndarray, faces: list[Seen], frame: int) -> dict[int, int]:
        """Take note of the faces of one frame.

        Returns
        -------
        dict
            Tracks split in this frame: old number -> new number.
        """
        height = image.shape[0]
        for face in faces:
            watch = self._watch[face.track]
            weight = float(face.box[3]) / height
            watch.screen += weight
            watch.screen_since_strike += weight
            if watch.identity >= 0:
                self._screen[watch.identity] += weight
        splits = self._check(image, faces, frame)
        for face in faces:
            face.track = splits.get(face.track, face.track)
        self._confirm([f.track for f in faces], frame)
        self._active = {self._watch[f.track].identity for f in faces} - {-1}
        self._pending = [f.track for f in faces if self._watch[f.track].identity < 0]
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

    def screen_time(self) -> dict[int, float]:
        """Screen time per identity (see the module docs)."""
        return dict(self._screen)

    def primary(self) -> int:
        """The identity with the most screen time, -1 when no face was seen."""
        return max(self._screen, key=lambda k: (self._screen[k], -k)) if self._screen else -1

    def leader(self) -> tuple[int, int] | None:
        """The running leader: ``(identity, -1)``, or ``(-1, track)`` for a track on
        screen whose identity is not known yet; None before any face was seen.  A
        track not confirmed yet counts for the identity it resembles (:meth:`identity`)."""
        total = {(k, -1): v for k, v in self._screen.items()}
        for track in self._pending:
            key = self.key(track)
            total[key] = total.get(key, 0.0) + self._watch[track].screen
        return max(total, key=lambda k: (total[k], -k[0], -k[1])) if total else None

    def key(self, track: int) -> tuple[int, int]:
        """The key :meth:`leader` would give the track's face (its identity so far)."""
        identity = self.identity(track)
        return (identity, -1) if identity >= 0 else (-1, track)

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
                watch.first_strike, watch.screen_since_strike = frame, float(face.box[3]) / image.shape[0]
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
        watch.screen = old.screen_since_strike
        old.screen -= old.screen_since_strike
        self._screen[old.identity] -= old.screen_since_strike
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
            self._screen[watch.identity] = self._screen.get(watch.identity, 0.0) + watch.screen
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
