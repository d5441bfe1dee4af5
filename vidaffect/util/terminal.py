"""What the user sees on the terminal: progress bars and the log format, shared by the
commands and their worker processes."""

from __future__ import annotations

import logging
import os
import sys
import warnings

from tqdm import tqdm


def progress_bar(total: int | None, desc: str, unit: str, enabled: bool, position: int = 0, initial: int = 0) -> tqdm:
    """A tqdm bar on stderr, or a silent one when disabled (not a TTY, or ``-q``)."""
    return tqdm(
        total=total,
        initial=initial,
        desc=desc,
        unit=unit,
        disable=not enabled,
        position=position,
        leave=position == 0,
        dynamic_ncols=True,
        file=sys.stderr,
    )


def show_progress(quiet: bool) -> bool:
    return not quiet and sys.stderr.isatty()


def setup_logging(verbose: int, quiet: bool) -> None:
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    configure_logging(level)


def configure_logging(level: int) -> None:
    """Our log format at ``level``; also called in worker processes, which do not
    inherit the parent's logging set-up."""
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr, force=True)
    # Native libraries (TF-Lite under MediaPipe, glog, absl) write to stderr themselves.
    os.environ.setdefault("GLOG_minloglevel", "2")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if level > logging.DEBUG:
        for noisy in ("absl", "numba", "matplotlib", "h5py", "PIL", "fsspec"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
        warnings.filterwarnings("ignore", message=".*SymbolDatabase.GetPrototype.*")
