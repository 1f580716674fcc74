"""The inputs of ``flask batch``: folders walked lazily, lists of paths or URLs, CSVs.

A SOURCE is one of:

- a folder, walked recursively and streamed (a folder of a million files starts at once, and
  memory never holds the files' names). A file in it is taken
  when its first bytes are those of a format faceapp decodes (JPEG, PNG, GIF, WebP), whatever its
  name, or when its extension names an image format, so that a broken ``photo.jpg`` gets its
  error line instead of vanishing. Hidden files and folders (``.name``) are left out, and links
  to folders are not followed (no loops);
- an image file, or a URL: that one input;
- a ``.csv`` file with a ``path`` or ``url`` column (the first of the two that a row fills);
- any other file: a list of paths or URLs, one a line (blank lines and ``#`` comments skipped).

Paths in a list or a CSV are as written there (relative ones from the current folder), and each
line of output names its input exactly as it was listed (or walked: the folder joined with the
file's path inside it).
"""

from __future__ import annotations

import csv
import os
from collections.abc import Callable, Iterator, Sequence

from faceapp.batch.pipeline import source_kind
from faceapp.decoding import claimed_format

#: Extensions of image formats (read or not by faceapp): such a file is an input even when its
#: bytes do not look like an image, so that it is answered (image.corrupt...) rather than skipped.
IMAGE_EXTENSIONS = frozenset(
    ".jpg .jpeg .jpe .jfif .png .gif .webp .bmp .tif .tiff .heic .heif .avif".split()
)
SNIFF_BYTES = 16
COLUMNS = ("path", "url")
OnSkip = Callable[[str], None] | None


class SourceError(Exception):
    """A SOURCE that cannot be used at all (missing, unreadable, a CSV without the column)."""


def check_sources(sources: Sequence[str]) -> None:
    """Refuse, before anything is written, a SOURCE that is not there or a CSV without a
    ``path`` or ``url`` column (SourceError, which the command turns into a usage error)."""
    if not sources:
        raise SourceError("give at least one SOURCE (a folder, a list file, a CSV or a URL)")
    for source in sources:
        if source_kind(source) == "image_url":
            continue
        if not os.path.exists(source):
            raise SourceError(f"{source}: no such file or folder")
        if os.path.isdir(source):
            if not os.access(source, os.R_OK | os.X_OK):
                raise SourceError(f"{source}: the folder cannot be read")
            continue
        try:
            with open(source, "rb") as fh:
                head = fh.read(SNIFF_BYTES)
        except OSError as exc:
            raise SourceError(f"{source}: {exc.strerror or exc}") from None
        if _is_csv(source) and claimed_format(head) is None:
            _csv_column(source)


def iter_sources(sources: Sequence[str], on_skip: OnSkip = None) -> Iterator[str]:
    """Every input of the SOURCEs, in order, lazily; `on_skip(path)` hears of each file of a
    folder left out as no image (the summary counts them)."""
    for source in sources:
        if source_kind(source) == "image_url":
            yield source
        elif os.path.isdir(source):
            yield from walk_folder(source, on_skip)
        elif _looks_like_image(source):
            yield source
        elif _is_csv(source):
            yield from read_csv(source)
        else:
            yield from read_list(source)


def walk_folder(folder: str, on_skip: OnSkip = None) -> Iterator[str]:
    """The image files under `folder`, depth first, in the order the file system lists them;
    streamed, so memory holds the open listings and subfolder names, never the files'."""
    subfolders = []
    try:
        with os.scandir(folder) as listing:
            for entry in listing:
                if entry.name.startswith("."):
                    continue
                try:
                    if entry.is_dir(follow_symlinks=False):
                        subfolders.append(entry.path)
                        continue
                    if not entry.is_file():
                        continue
                except OSError:
                    continue
                if _looks_like_image(entry.path):
                    yield entry.path
                elif on_skip is not None:
                    on_skip(entry.path)
    except OSError:
        pass  # a subfolder that cannot be listed holds no input that could be read
    for path in sorted(subfolders):
        yield from walk_folder(path, on_skip)


def read_list(path: str) -> Iterator[str]:
    """The paths or URLs of a text file, one a line."""
    with open(path, encoding="utf-8-sig") as fh:
        for line in fh:
            entry = line.strip()
            if entry and not entry.startswith("#"):
                yield entry


def read_csv(path: str) -> Iterator[str]:
    """The ``path`` (or else ``url``) of each row of a CSV that has either column."""
    columns = _csv_column(path)
    with open(path, encoding="utf-8-sig", newline="") as fh:
        reader = csv.reader(fh)
        next(reader, None)
        for row in reader:
            for index in columns:
                value = row[index].strip() if index < len(row) else ""
                if value:
                    yield value
                    break


def _csv_column(path: str) -> list[int]:
    """The indexes of the path and url columns of a CSV's header (SourceError if neither)."""
    try:
        with open(path, encoding="utf-8-sig", newline="") as fh:
            header = next(csv.reader(fh), [])
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise SourceError(f"{path}: cannot read it as a CSV ({exc})") from None
    names = [name.strip().lower() for name in header]
    found = [names.index(name) for name in COLUMNS if name in names]
    if not found:
        raise SourceError(f"{path}: a CSV source needs a 'path' or 'url' column")
    return found


def _is_csv(path: str) -> bool:
    return path.lower().endswith(".csv")


def _looks_like_image(path: str) -> bool:
    if os.path.splitext(path)[1].lower() in IMAGE_EXTENSIONS:
        return True
    try:
        with open(path, "rb") as fh:
            return claimed_format(fh.read(SNIFF_BYTES)) is not None
    except OSError:
        return False
