"""Splitting videos into training and validation: by video, or by subject when a
grouping file says which videos show the same person, never by frame."""

from __future__ import annotations

import csv
import random
from pathlib import Path

import numpy as np

from vidaffect.errors import ParameterError


def read_groups(path: str | Path) -> dict[str, str]:
    """A ``video,subject`` CSV (header line first) -> {video id: subject}."""
    with open(path, newline="", encoding="utf-8-sig") as fh:
        rows = list(csv.reader(fh))
    if not rows or [c.strip().lower() for c in rows[0][:2]] != ["video", "subject"]:
        raise ParameterError(f"{path}: expected a CSV with the header 'video,subject'")
    out = {}
    for line, row in enumerate(rows[1:], start=2):
        if len(row) < 2 or not row[0].strip():
            raise ParameterError(f"{path}: line {line}: expected video,subject")
        out[row[0].strip()] = row[1].strip()
    return out


def make_splits(
    video_ids: list[str], val_split: float, folds: int | None, groups: dict[str, str] | None, seed: int
) -> list[tuple[list[str], list[str]]]:
    """(train ids, validation ids) per run.  Whole videos, or whole subjects when
    ``groups`` maps videos to subjects (videos it does not list are their own
    subject), shuffled with ``seed``; K folds or one ``val_split`` hold-out."""
    groups = groups or {}
    unit_of = {v: groups.get(v, v) for v in video_ids}
    units = sorted(set(unit_of.values()))
    random.Random(seed).shuffle(units)
    what = "subjects" if groups else "videos"
    if folds:
        if folds > len(units):
            raise ParameterError(f"--folds {folds} needs at least {folds} {what}, found {len(units)}")
        held = [set(part) for part in np.array_split(np.array(units, dtype=object), folds)]
    elif val_split > 0:
        n_val = max(1, round(val_split * len(units)))
        if n_val >= len(units):
            raise ParameterError(f"--val-split {val_split} leaves no training {what} out of {len(units)}")
        held = [set(units[:n_val])]
    else:
        held = [set()]
    return [([v for v in video_ids if unit_of[v] not in h], [v for v in video_ids if unit_of[v] in h]) for h in held]
