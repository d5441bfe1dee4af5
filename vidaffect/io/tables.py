"""Per-frame tables written a chunk of rows at a time, one writer per format, so memory
does not depend on the video's length:

* ``csv``: a header of column names, one line per frame; floats with 7 significant
  digits (float32's precision), ``timestamp`` with 6 decimals, flags as 0/1, missing
  values as empty fields;
* ``parquet``: one row group per chunk, columns keep their types (float32, bool, ...);
  the file's key-value metadata ``vidaffect`` holds the store's attributes as JSON.
  Needs pyarrow: ``pip install 'vidaffect[parquet]'``;
* ``openface``: OpenFace 2 FeatureExtraction CSV (:mod:`.openface_csv`).

Every writer writes ``<name>.tmp`` and renames it when :meth:`TableWriter.close` is
called, so an interrupted export never leaves a file that looks complete.
"""

from __future__ import annotations

import abc
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from vidaffect.errors import ParameterError, SetupError
from vidaffect.io.openface_csv import format_rows, header_names, separator

if TYPE_CHECKING:
    import pandas as pd

FORMATS = {"csv": ".csv", "parquet": ".parquet", "openface": ".csv"}  # format -> file suffix
FLOAT_FORMAT = "%.7g"


class TableWriter(abc.ABC):
    """Rows of one video's table: :meth:`write` chunks in order, then :meth:`close`
    (publish) or :meth:`discard`."""

    def __init__(self, path: str | Path, metadata: dict[str, Any] | None = None) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = self.path.with_name(self.path.name + ".tmp")
        self.metadata = metadata or {}

    @abc.abstractmethod
    def write(self, table: pd.DataFrame) -> None:
        """Append rows (the first call fixes the columns)."""

    def close(self) -> Path:
        self._finish()
        os.replace(self.tmp, self.path)
        return self.path

    def discard(self) -> None:
        self._finish()
        self.tmp.unlink(missing_ok=True)

    @abc.abstractmethod
    def _finish(self) -> None: ...


class CsvTableWriter(TableWriter):
    def __init__(self, path: str | Path, metadata: dict[str, Any] | None = None) -> None:
        super().__init__(path, metadata)
        self.fh = open(self.tmp, "w", encoding="utf-8", newline="")
        self.header = True

    def write(self, table: pd.DataFrame) -> None:
        out = table.copy(deep=False)
        for name in out.columns:
            if out[name].dtype == bool:
                out[name] = out[name].astype(np.uint8)
        if "timestamp" in out:
            out["timestamp"] = np.char.mod("%.6f", out["timestamp"].to_numpy(np.float64))
        out.to_csv(self.fh, index=False, header=self.header, float_format=FLOAT_FORMAT, lineterminator="\n")
        self.header = False

    def _finish(self) -> None:
        self.fh.close()


class ParquetTableWriter(TableWriter):
    def __init__(self, path: str | Path, metadata: dict[str, Any] | None = None) -> None:
        super().__init__(path, metadata)
        self.pq = require_pyarrow()
        self.writer: Any = None

    def write(self, table: pd.DataFrame) -> None:
        import pyarrow as pa

        chunk = pa.Table.from_pandas(table, preserve_index=False)
        if self.writer is None:
            schema = chunk.schema.with_metadata({"vidaffect": json.dumps(self.metadata, default=str)})
            self.writer = self.pq.ParquetWriter(self.tmp, schema)
        self.writer.write_table(chunk.cast(self.writer.schema))

    def _finish(self) -> None:
        if self.writer is not None:
            self.writer.close()


class OpenFaceTableWriter(TableWriter):
    """OpenFace 2 CSV; the table's columns must be OpenFace names (:mod:`.openface_csv`)."""

    def __init__(self, path: str | Path, metadata: dict[str, Any] | None = None, style: str = "2.2") -> None:
        self.sep = separator(style)
        super().__init__(path, metadata)
        self.style = style
        self.fh = open(self.tmp, "w", encoding="utf-8", newline="")
        self.header = True

    def write(self, table: pd.DataFrame) -> None:
        columns = {name: table[name].to_numpy() for name in table.columns}
        if self.header:
            self.fh.write(self.sep.join(header_names(columns)) + "\n")
            self.header = False
        self.fh.write(format_rows(columns, self.style))

    def _finish(self) -> None:
        self.fh.close()


def writable_folder(folder: str | Path, option: str = "--out") -> Path:
    """``folder``, created when missing; a :class:`ParameterError` naming it when it
    cannot be created or written to."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ParameterError(f"{option} {folder}: cannot create this folder ({exc.strerror or exc})") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ParameterError(f"{option} {folder}: this folder is not writable")
    return folder


def require_pyarrow() -> Any:
    """``pyarrow.parquet``, or a one-line :class:`SetupError` saying how to get it."""
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise SetupError("--format parquet needs pyarrow, which is not installed: pip install 'vidaffect[parquet]'") from None
    return pq


def open_table_writer(fmt: str, path: str | Path, metadata: dict[str, Any] | None = None, openface_style: str = "2.2") -> TableWriter:
    """The writer of ``fmt`` (:data:`FORMATS`) for the file ``path``."""
    if fmt == "csv":
        return CsvTableWriter(path, metadata)
    if fmt == "parquet":
        return ParquetTableWriter(path, metadata)
    if fmt == "openface":
        return OpenFaceTableWriter(path, metadata, openface_style)
    raise ParameterError(f"unknown table format {fmt!r}; choose one of: {', '.join(FORMATS)}")
