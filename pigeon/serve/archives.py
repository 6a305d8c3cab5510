"""Unpacking an uploaded zip without trusting it.

Nothing in an archive's directory is believed: member names are checked before anything is written (no
absolute paths, no `..`, no symlinks or device files), the declared sizes are checked against the caps and
against each other (members whose data overlap are the trick behind the smallest zip bombs), and while each
member is written its bytes are counted again, so a member that inflates past what it declared stops the
extraction. Everything goes into one fresh folder, which is removed again when anything is refused.
"""

from __future__ import annotations

import shutil
import stat
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from pigeon.serve.errors import ApiError

JUNK = ("__MACOSX/", ".DS_Store", "Thumbs.db", "desktop.ini")
RATIO_FLOOR = 1 << 16  # members smaller than 64 KiB may compress well without being a bomb


@dataclass(frozen=True)
class Caps:
    max_unzipped: int  # bytes, all members together
    max_entries: int
    max_ratio: float


def _unsafe(name: str, info: zipfile.ZipInfo) -> str | None:
    mode = info.external_attr >> 16
    if stat.S_ISLNK(mode):
        return "is a symbolic link"
    if mode and (stat.S_ISCHR(mode) or stat.S_ISBLK(mode) or stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)):
        return "is a device file, FIFO or socket"
    posix = name.replace("\\", "/")
    if posix.startswith("/") or (len(posix) > 1 and posix[1] == ":"):
        return "has an absolute path"
    if ".." in PurePosixPath(posix).parts:
        return "climbs out of the archive with '..'"
    if "\x00" in name:
        return "has a NUL byte in its name"
    return None


def check(zf: zipfile.ZipFile, caps: Caps) -> list[zipfile.ZipInfo]:
    """The members to extract, after every check on the archive's directory; ApiError on the first problem."""
    members = zf.infolist()
    if len(members) > caps.max_entries:
        raise ApiError(413, "too_large", f"the archive has {len(members)} entries, over the limit of "
                       f"{caps.max_entries} (pigeon serve --max-entries)")
    for info in members:
        why = _unsafe(info.filename, info)
        if why:
            raise ApiError(400, "unsafe_archive", f"archive member {info.filename!r} {why}; pigeon extracts only "
                           "plain files and folders inside the archive. Re-create the zip from the folder itself")
    total = sum(i.file_size for i in members)
    if total > caps.max_unzipped:
        raise ApiError(413, "too_large", f"the archive unpacks to {total / 1e6:.1f} MB, over the limit of "
                       f"{caps.max_unzipped / 1e6:.0f} MB (pigeon serve --max-unzipped-mb)")
    for info in members:
        if info.file_size > RATIO_FLOOR and info.file_size > caps.max_ratio * max(1, info.compress_size):
            raise ApiError(413, "too_large", f"archive member {info.filename!r} inflates {info.file_size:,} bytes "
                           f"from {info.compress_size:,} (over {caps.max_ratio:g}x): refused as a possible zip bomb")
    spans = sorted((i.header_offset, i.header_offset + len(i.FileHeader()) + i.compress_size, i.filename)
                   for i in members if not i.is_dir())
    for (_, end, first), (start, _, second) in zip(spans, spans[1:]):
        if start < end:
            raise ApiError(413, "too_large", f"archive members {first!r} and {second!r} share their data, the "
                           "trick of a zip bomb; the archive is refused")
    return [i for i in members if not i.is_dir() and not any(j in i.filename for j in JUNK)]


def extract(archive: Path, dest: Path, caps: Caps) -> Path:
    """Unpack `archive` into the new folder `dest`; returns the dataset root inside it (one top folder is
    stepped into). On any refusal `dest` is removed and ApiError raised."""
    try:
        zf = zipfile.ZipFile(archive)
    except zipfile.BadZipFile:
        size = archive.stat().st_size
        raise ApiError(400 if size == 0 else 415, "bad_archive", "the upload is empty (0 bytes); choose a .zip "
                       "of class folders" if size == 0 else "the upload is not a zip archive; upload a .zip of "
                       "class folders (train/<class>/... or <class>/...)") from None
    dest.mkdir(parents=True)
    try:
        with zf:
            members = check(zf, caps)
            if not members:
                raise ApiError(400, "bad_archive", "the archive holds no files; zip the folder of class folders")
            written = 0
            for info in members:
                target = dest.joinpath(*PurePosixPath(info.filename.replace("\\", "/")).parts)
                target.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as src, open(target, "wb") as out:
                    seen = 0
                    for block in iter(lambda: src.read(1 << 20), b""):  # noqa: B023 - read now, in this loop
                        seen += len(block)
                        written += len(block)
                        if seen > info.file_size or written > caps.max_unzipped:
                            raise ApiError(413, "too_large", f"archive member {info.filename!r} inflates past "
                                           "its declared size or the unpacked limit; refused")
                        out.write(block)
    except zipfile.BadZipFile as err:
        shutil.rmtree(dest, ignore_errors=True)
        raise ApiError(400, "bad_archive", f"the zip archive is damaged: {err}") from None
    except BaseException:
        shutil.rmtree(dest, ignore_errors=True)
        raise
    root = dest
    # A zip of the folder itself holds one top folder: step into it (but never into train/, val/, test/).
    while True:
        entries = list(root.iterdir())
        if len(entries) != 1 or not entries[0].is_dir() or entries[0].name in ("train", "val", "test") \
                or not any(p.is_dir() for p in entries[0].iterdir()):  # a lone class folder stays a class
            return root
        root = entries[0]
