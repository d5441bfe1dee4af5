"""Passes over a video beyond the first: stages that read a whole-video stage's rows,
and the further subjects (people) of a video.

A stage whose rows are known only once the whole video has been seen
(:meth:`~vidaffect.stages.base.Stage.whole_video`: the face stage, which decides who
the primary face is at the end) runs in a first pass; the stages that read its rows,
directly or through another stage, run in a second pass and read them from the store.

Such a stage may find several subjects (with ``face.faces=all``).  Subject 0 is the
primary face, whose groups are the store's top-level ones; subject k >= 1 has its
own copy of every per-person group, ``subjects/<k>/<group>`` (``subjects/1/face``,
``subjects/1/pose``, ``subjects/1/embed``, ...), with the same datasets and attributes.
The face stage writes ``subjects/<k>/face`` in its own pass; the stages that depend on
it (the *per-person* stages) then run once more per subject, reading that subject's
``face`` group, in a pass of their own.  Stages that do not depend on a face (``mel``)
are the video's, not a person's, and are stored once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import h5py

from vidaffect.io.store import SUBJECTS, StoredStage, completed_stages
from vidaffect.io.video import VideoInfo
from vidaffect.stages.base import Stage


@dataclass
class Work:
    """One pass over a video: the stages to run, the prefix of the groups they write
    (``""``, or ``subjects/<k>/`` for a further subject), and the groups of the
    existing store to carry over."""

    stages: list[str]
    prefix: str
    keep: list[str]

    def label(self, stage: str) -> str:
        """How results name a stage of this pass: ``pose``, or ``pose (subject 1)``."""
        if not self.prefix:
            return stage
        return f"{stage} (subject {self.prefix.strip('/').rsplit('/', 1)[-1]})"


def depends_on(stages: dict[str, Stage], name: str, targets: set[str]) -> bool:
    """Whether stage ``name`` requires one of ``targets``, directly or not."""
    return any(d in targets or depends_on(stages, d, targets) for d in stages[name].requires)


def later_stages(stages: dict[str, Stage], todo: list[str]) -> set[str]:
    """The stages of ``todo`` that read the rows of a whole-video stage also in ``todo``
    (they run in a second pass)."""
    whole = {n for n in todo if stages[n].whole_video()}
    return {n for n in todo if depends_on(stages, n, whole)}


def person_stages(stages: dict[str, Stage]) -> list[str]:
    """The stages that follow a subject: the whole-video stages and those that depend
    on them, in order."""
    whole = {n for n, s in stages.items() if s.whole_video()}
    return [n for n in stages if n in whole or depends_on(stages, n, whole)]


def input_group(stages: dict[str, Stage], name: str, prefix: str) -> str:
    """Where a pass with ``prefix`` reads the rows of stage ``name``: the subject's own
    group for a per-person stage, the video's otherwise."""
    return (prefix if name in person_stages(stages) else "") + stages[name].group_name()


def stored_subjects(path: Path) -> list[int]:
    """The further subjects (k >= 1) a store holds groups for."""
    try:
        with h5py.File(path, "r") as h5:
            return sorted(int(k) for k in h5[SUBJECTS]) if SUBJECTS in h5 else []
    except OSError:
        return []


Todo = Callable[[dict[str, StoredStage], dict[str, str], Iterable[str]], list[str]]


def subject_todo(stages: dict[str, Stage], todo: Todo, path: Path, info: VideoInfo, keys: dict[str, str]) -> dict[int, list[str]]:
    """Per further subject of the store, the per-person stages it still needs (the
    whole-video stage itself writes its subjects' groups in its own pass)."""
    person = [n for n in person_stages(stages) if not stages[n].whole_video()]
    out = {}
    for k in stored_subjects(path):
        names = todo(completed_stages(path, info, prefix=f"{SUBJECTS}/{k}/"), keys, person)
        if names:
            out[k] = names
    return out


def subject_passes(stages: dict[str, Stage], todo: Todo, path: Path, info: VideoInfo, keys: dict[str, str]) -> Iterator[Work]:
    """A pass per further subject that needs one, planned after the video's passes."""
    for k, names in subject_todo(stages, todo, path, info, keys).items():
        prefix = f"{SUBJECTS}/{k}/"
        redone = {prefix + stages[n].group_name() for n in names}
        keep = [s.group for s in completed_stages(path, info).values()]
        for j in stored_subjects(path):
            keep += [g for s in completed_stages(path, info, prefix=f"{SUBJECTS}/{j}/").values() if (g := s.group) not in redone]
        yield Work(names, prefix, keep)
