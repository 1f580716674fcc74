"""The output of ``flask batch``: JSONL (one line per input) or CSV (one row per face), resumable.

A line (or an input's rows) is written whole, in one write, and flushed at once; the file is
fsynced every few seconds and when the writer closes. Opening an existing output resumes it:
the sources it already answers are read first, and a trailing partial line (a run killed in
the middle of a write) is cut off, so no line is ever doubled or rewritten. ``overwrite``
starts the file over instead. The formats: docs/BATCH.md.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import time
from collections.abc import Sequence
from typing import Any

FSYNC_EVERY_S = 2.0
# An input's face_count (the line's found / not_analysed / max_faces), after its warnings.
FACE_COUNT_COLUMNS = ("faces_found", "faces_not_analysed", "max_faces")
FIXED_COLUMNS = (
    "source",
    "image_id",
    "valid",
    "errors",
    "warnings",
    *FACE_COUNT_COLUMNS,
    "face",
    "box_x",
    "box_y",
    "box_width",
    "box_height",
    "confidence",
)


class OutputError(Exception):
    """An output that cannot be used (not writable, or a CSV of other columns): a usage error."""


def source_key(source: str) -> int:
    """A source as 8 bytes of its hash: the resume set stays small for a million inputs."""
    digest = hashlib.blake2b(source.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest)


class _Appender:
    """An output file opened for appending whole records, with the sources it already has."""

    def __init__(self, path: str, *, overwrite: bool = False) -> None:
        self.path = path
        self.done: set[int] = set()  # source_key of every input answered in the file
        self.resumed = 0  # inputs answered by an earlier run
        self.written = 0  # inputs answered by this run
        folder = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(folder):
            raise OutputError(f"{path}: the folder {folder} does not exist")
        if os.path.isdir(path):
            raise OutputError(f"{path} is a folder")
        self._check_before_open(overwrite)
        try:
            self._fh = open(path, "wb" if overwrite else "ab")  # noqa: SIM115 - closed in close()
        except OSError as exc:
            raise OutputError(f"{path}: {exc.strerror or exc}") from None
        if not overwrite:
            self._resume()
        if self._fh.tell() == 0:
            self._start()
        self._synced = time.monotonic()

    # -- for the formats ---------------------------------------------------------------------
    def _check_before_open(self, overwrite: bool) -> None:
        """Refuse an existing file this writer must not append to (before it is touched)."""

    def _start(self) -> None:
        """Write what an empty file begins with (CSV: its header)."""

    def _sources_in(self, record: bytes) -> list[str]:
        raise NotImplementedError

    def _encode(self, line: dict) -> bytes:
        raise NotImplementedError

    # -- shared ------------------------------------------------------------------------------
    def _resume(self) -> None:
        with open(self.path, "rb") as fh:
            data_end = 0
            for record in fh:
                if not record.endswith(b"\n"):
                    break  # a partial record: cut off below
                data_end += len(record)
                for source in self._sources_in(record):
                    key = source_key(source)
                    if key not in self.done:
                        self.done.add(key)
                        self.resumed += 1
        if data_end != self._fh.tell():
            self._fh.truncate(data_end)
            self._fh.seek(data_end)
            os.fsync(self._fh.fileno())

    def answered(self, source: str) -> bool:
        """Whether the file already answers `source` (from an earlier run or this one)."""
        return source_key(source) in self.done

    def write(self, line: dict) -> None:
        """Append one input's line (or rows) whole, and flush it."""
        self._fh.write(self._encode(line))
        self._fh.flush()
        self.done.add(source_key(line["source"]))
        self.written += 1
        if time.monotonic() - self._synced >= FSYNC_EVERY_S:
            self.sync()

    def sync(self) -> None:
        """Flush and fsync: what is written survives a crash of the machine."""
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._synced = time.monotonic()

    def close(self) -> None:
        if not self._fh.closed:
            self.sync()
            self._fh.close()

    def __enter__(self) -> _Appender:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class JsonlWriter(_Appender):
    """One JSON object per line, as pipeline.py makes it."""

    def _sources_in(self, record: bytes) -> list[str]:
        try:
            source = json.loads(record).get("source")
        except (ValueError, AttributeError):
            return []
        return [source] if isinstance(source, str) else []

    def _encode(self, line: dict) -> bytes:
        text = json.dumps(line, ensure_ascii=False, separators=(",", ":")) + "\n"
        try:
            return text.encode("utf-8")
        except UnicodeEncodeError:  # a file name that is not UTF-8: escaped, still one line
            return (json.dumps(line, separators=(",", ":")) + "\n").encode("ascii")


class CsvWriter(_Appender):
    """One row per face (an input without a face, or with an error, gets one row of its own):
    the fixed columns, then per attribute its label and score, then one score per free-text
    label (``label:<text>``).

    A file written before the face_count columns existed is resumed in its own columns (rows
    without them): a header never changes in the middle of a file.
    """

    def __init__(
        self,
        path: str,
        attributes: Sequence[str],
        labels: Sequence[str] = (),
        *,
        overwrite: bool = False,
    ) -> None:
        self.attributes = list(attributes)
        self.labels = list(labels)
        self.columns = [
            *FIXED_COLUMNS,
            *(column for name in self.attributes for column in (name, f"{name}_score")),
            *(f"label:{label}" for label in self.labels),
        ]
        self.face_counts = True  # False: resuming a file without the face_count columns
        super().__init__(path, overwrite=overwrite)

    def _check_before_open(self, overwrite: bool) -> None:
        if overwrite or not os.path.isfile(self.path):
            return
        try:
            with open(self.path, encoding="utf-8", newline="") as fh:
                first = fh.readline()
        except (OSError, UnicodeDecodeError) as exc:
            raise OutputError(f"{self.path}: cannot read it to resume ({exc})") from None
        if not first.endswith("\n"):
            return  # empty, or a header cut short: the file starts over
        header = next(csv.reader([first]))
        earlier = [column for column in self.columns if column not in FACE_COUNT_COLUMNS]
        if header == earlier:  # written before the face_count columns: resumed as it is
            self.columns, self.face_counts = earlier, False
        elif header != self.columns:
            raise OutputError(
                f"{self.path} has other columns (another attribute set or other labels): "
                "resume it with the same options, or pass --overwrite"
            )

    def _resume(self) -> None:
        with open(self.path, "rb") as fh:
            first = fh.readline()
        if not first.endswith(b"\n"):  # no whole header: nothing was answered
            self._fh.truncate(0)
            self._fh.seek(0)
            return
        super()._resume()

    def _start(self) -> None:
        self._fh.write(self._rows([self.columns]))
        self._fh.flush()

    def _sources_in(self, record: bytes) -> list[str]:
        try:
            row = next(csv.reader([record.decode("utf-8")]), [])
        except (UnicodeDecodeError, csv.Error):
            return []
        if not row or row == self.columns:
            return []
        return [row[0]]

    def _encode(self, line: dict) -> bytes:
        return self._rows(self.rows(line))

    def rows(self, line: dict) -> list[list[Any]]:
        """The CSV rows of one output line."""
        error = line.get("error")
        head = [
            line["source"],
            line.get("image_id") or "",
            "" if error else _yes_no(line.get("valid")),
            error["code"] if error else " ".join(i["code"] for i in line.get("errors", [])),
            " ".join(issue["code"] for issue in line.get("warnings", [])),
        ]
        if self.face_counts:
            counts = line.get("face_count") or {}
            head += [_blank_none(counts.get(key)) for key in ("found", "not_analysed", "max_faces")]
        faces = line.get("faces") or []
        if not faces:
            return [head + [""] * (len(self.columns) - len(head))]
        rows = []
        for index, face in enumerate(faces):
            box = face.get("box", {})
            row = head + [
                index,
                box.get("x", ""),
                box.get("y", ""),
                box.get("width", ""),
                box.get("height", ""),
                face.get("confidence", ""),
            ]
            for name in self.attributes:
                answer = face.get("attributes", {}).get(name) or {}
                label = answer.get("label")
                row += ["" if label is None else label, answer.get("score", "")]
            scores = face.get("labels") or {}
            row += [scores.get(label, "") for label in self.labels]
            rows.append(row)
        return rows

    @staticmethod
    def _rows(rows: Sequence[Sequence[Any]]) -> bytes:
        buffer = io.StringIO()
        csv.writer(buffer, lineterminator="\n").writerows(rows)
        return buffer.getvalue().encode("utf-8")


def _yes_no(value: Any) -> str:
    return "true" if value else "false"


def _blank_none(value: Any) -> Any:
    return "" if value is None else value


def open_writer(
    path: str,
    fmt: str,
    *,
    attributes: Sequence[str] = (),
    labels: Sequence[str] = (),
    overwrite: bool = False,
) -> _Appender:
    """The writer of `fmt` (``jsonl`` or ``csv``) on `path`; OutputError when it cannot be used."""
    if fmt == "csv":
        return CsvWriter(path, attributes, labels, overwrite=overwrite)
    return JsonlWriter(path, overwrite=overwrite)
