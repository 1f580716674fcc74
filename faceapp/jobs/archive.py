"""A job's zip archive: its entries as items, each refused entry with its own error line.

Read in memory, never extracted: no entry name ever becomes a path, so nothing is written
outside the store whatever the names say. The whole archive is refused (413
``archive.too_large``) when its entries would expand past MAX_ARCHIVE_BYTES: a zip bomb never gets
decompressed (the sizes in the zip's directory bound what zipfile will return, so a lying entry
fails its CRC check instead of growing). Per entry:

- a name that is absolute, has ``..`` or a backslash or drive letter: ``archive.bad_name``;
- an archive inside the archive (zip, tar, gzip, 7z, rar, by content): ``archive.nested``;
- encrypted, a link, unreadable or failing its CRC: ``archive.bad_entry``;
- larger than MAX_UPLOAD_BYTES: ``image.too_large``.
Folders are skipped, and so is macOS's ``__MACOSX/`` metadata. Entries that are not images get
the decoder's own error (``image.unsupported_format``) when a worker reaches them.
"""

from __future__ import annotations

import stat
import zipfile
from collections.abc import Mapping
from typing import IO, Any

from faceapp.errors import FaceappError, human_bytes

# Magic numbers of archives and compressed files (an archive inside the archive).
NESTED_MAGIC = (
    b"PK\x03\x04",  # zip (and docx, jar, ...)
    b"PK\x05\x06",  # an empty zip
    b"\x1f\x8b",  # gzip
    b"BZh",  # bzip2
    b"\xfd7zXZ\x00",  # xz
    b"7z\xbc\xaf\x27\x1c",  # 7z
    b"Rar!\x1a\x07",  # rar
    b"\x28\xb5\x2f\xfd",  # zstd
)
TAR_MAGIC_OFFSET = 257  # "ustar" sits here in a tar header
MAX_ENTRIES_FACTOR = 4  # at most this many entries per allowed item, junk included


def read_archive(stream: IO[bytes], config: Mapping[str, Any]) -> tuple[list[dict], dict]:
    """The items of a zip (``{"archive": name}`` or ``{"source", "error"}``) and the bytes of
    each accepted entry by item index; 400 ``archive.invalid`` when it is not a readable zip."""
    limit = int(config["MAX_ARCHIVE_BYTES"])
    max_items = int(config["MAX_JOB_ITEMS"])
    try:
        archive = zipfile.ZipFile(stream)
        infos = archive.infolist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError) as exc:
        raise FaceappError(
            "archive.invalid", f"The archive is not a readable zip file ({exc}).", field="archive"
        ) from None
    entries = [info for info in infos if not _skipped(info)]
    if len(infos) > max_items * MAX_ENTRIES_FACTOR or len(entries) > max_items:
        raise FaceappError(
            "jobs.too_many_items",
            f"The archive has {len(entries)} entries; a job takes at most {max_items} "
            "(MAX_JOB_ITEMS).",
            field="archive",
        )
    expanded = sum(info.file_size for info in entries)
    if expanded > limit:
        raise FaceappError(
            "archive.too_large",
            f"The archive's entries expand to {human_bytes(expanded)}, over the "
            f"{human_bytes(limit)} limit (MAX_ARCHIVE_BYTES); a zip bomb is never opened.",
            field="archive",
        )
    items: list[dict] = []
    blobs: dict[int, bytes] = {}
    for info in entries:
        name = info.filename[:500]
        error, data = _entry(archive, info, config)
        if error is not None:
            items.append({"source": name, "error": error})
        else:
            blobs[len(items)] = data
            items.append({"archive": name})
    if not items:
        raise FaceappError("archive.invalid", "The archive holds no files.", field="archive")
    return items, blobs


def _skipped(info: zipfile.ZipInfo) -> bool:
    return info.is_dir() or info.filename.startswith("__MACOSX/")


def _entry(
    archive: zipfile.ZipFile, info: zipfile.ZipInfo, config: Mapping[str, Any]
) -> tuple[dict | None, bytes]:
    """(None, bytes) for an entry to process, else (its error, b"")."""
    name = info.filename
    if _unsafe_name(name):
        return _error("archive.bad_name", "The entry's name leaves the archive's folder."), b""
    if info.flag_bits & 0x1:
        return _error("archive.bad_entry", "The entry is encrypted."), b""
    if stat.S_ISLNK(info.external_attr >> 16):
        return _error("archive.bad_entry", "The entry is a symbolic link."), b""
    max_bytes = int(config["MAX_UPLOAD_BYTES"])
    if info.file_size > max_bytes:
        limit = human_bytes(max_bytes)
        return _error("image.too_large", f"The entry is larger than {limit}."), b""
    try:
        with archive.open(info) as fh:
            data = fh.read(max_bytes + 1)
    except (zipfile.BadZipFile, NotImplementedError, OSError, EOFError, ValueError) as exc:
        return _error("archive.bad_entry", f"The entry cannot be read ({exc})."), b""
    if _is_archive(data):
        return _error("archive.nested", "The entry is an archive; archives are not opened."), b""
    if not data:
        return _error("image.empty", "The entry is empty."), b""
    return None, data


def _unsafe_name(name: str) -> bool:
    if "\\" in name or "\x00" in name or name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        return True
    return any(part == ".." for part in name.split("/"))


def _is_archive(data: bytes) -> bool:
    if data.startswith(NESTED_MAGIC):
        return True
    return data[TAR_MAGIC_OFFSET : TAR_MAGIC_OFFSET + 5] == b"ustar"


def _error(code: str, message: str) -> dict:
    FaceappError(code, message)  # an unknown code fails here, in tests, not in a client's line
    return {"code": code, "message": message}
