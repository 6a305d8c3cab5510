"""Atomic file writes: a run killed at any moment leaves either the old file or the new one, never half."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success fsync it and rename it over `path`."""
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = _new_file(final.parent, f".{final.name}.", ".tmp")
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, final)
        _fsync_dir(final.parent)  # the rename itself must reach the disk, or a power cut can undo it
    finally:
        tmp.unlink(missing_ok=True)


def _new_file(folder: Path, prefix: str, suffix: str) -> Path:
    """Create an empty, uniquely named file with the mode the user's umask gives (0644 under 022).

    Not tempfile.mkstemp: its files are 0600, and the rename would hand that mode on to every artefact, so a
    teammate, a container running as another user or a web server could not read a run's weights or plots.
    """
    for _ in range(100):
        candidate = folder / f"{prefix}{secrets.token_hex(6)}{suffix}"
        try:
            os.close(os.open(candidate, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        except FileExistsError:
            continue
        return candidate
    raise FileExistsError(f"{folder}: could not create a temporary file named {prefix}*{suffix}")


def make_temp_dir(parent: str | os.PathLike[str], prefix: str) -> Path:
    """A new, uniquely named folder in `parent` with the umask's mode (0755 under 022), not mkdtemp's 0700:
    staging folders are renamed into place, and what lands there must stay readable by others."""
    folder = Path(parent)
    folder.mkdir(parents=True, exist_ok=True)
    for _ in range(100):
        candidate = folder / f"{prefix}{secrets.token_hex(6)}"
        try:
            candidate.mkdir(0o777)
        except FileExistsError:
            continue
        return candidate
    raise FileExistsError(f"{folder}: could not create a temporary folder named {prefix}*")


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # Windows cannot open a folder; its renames are journaled by NTFS
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2) + "\n")
