"""Decode once: uint8 arrays kept as .npy files in a cache directory, never beside the user's images.

An entry is a folder named by a fingerprint of its inputs (file list, sizes, mtimes, preprocessing), so
changed data gets a new entry and unchanged data is memory-mapped straight back.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from pigeon.io import make_temp_dir

CACHE_VERSION = 1


def cache_root(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    if cache_dir:
        return Path(cache_dir).expanduser()
    if os.environ.get("PIGEON_CACHE_DIR"):
        return Path(os.environ["PIGEON_CACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "pigeon"


def fingerprint(parts: Iterable[Any]) -> str:
    digest = hashlib.sha256(f"pigeon-cache-v{CACHE_VERSION}".encode())
    for part in parts:
        digest.update(part if isinstance(part, bytes) else repr(part).encode())
        digest.update(b"\0")
    return digest.hexdigest()[:24]


def load(root: Path, key: str) -> tuple[dict[str, np.ndarray], dict[str, Any]] | None:
    entry = root / key
    try:
        meta = json.loads((entry / "meta.json").read_text())
        arrays = {name: np.load(entry / f"{name}.npy", mmap_mode="r") for name in meta["arrays"]}
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return arrays, meta


Builder = Callable[[Path], tuple[list[str], dict[str, Any]]]


def load_or_build(root: Path, key: str, build: Builder) -> tuple[dict[str, np.ndarray], dict[str, Any], bool]:
    """Return (arrays, meta, reused). `build(tmpdir)` writes <name>.npy files, returns (names, meta)."""
    found = load(root, key)
    if found is not None:
        return found[0], found[1], True
    root.mkdir(parents=True, exist_ok=True)
    tmp = make_temp_dir(root, f".{key}.")  # the umask's mode, not mkdtemp's 0700: a shared cache stays shared
    try:
        names, meta = build(tmp)
        meta = {**meta, "arrays": names, "cache_version": CACHE_VERSION}
        (tmp / "meta.json").write_text(json.dumps(meta))
        try:
            os.replace(tmp, root / key)
        except OSError:  # the entry exists: another process finished it first (use theirs), or it is corrupt
            if load(root, key) is None:
                shutil.rmtree(root / key, ignore_errors=True)
                with contextlib.suppress(OSError):
                    os.replace(tmp, root / key)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    found = load(root, key)
    if found is None:
        raise OSError(f"could not read back the cache entry {root / key}")
    return found[0], found[1], False
