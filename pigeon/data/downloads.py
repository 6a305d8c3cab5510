"""A built-in dataset's files: found on this machine, else downloaded once from where their authors publish them.

Every file is checked against its published digest before it is used or kept, and a download is written
atomically, so a killed, truncated or tampered transfer never leaves behind a file that looks like the dataset.
Nothing here touches the network under PIGEON_OFFLINE=1.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import io
import os
import urllib.error
import urllib.request
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from pigeon.data import cache
from pigeon.errors import DatasetError
from pigeon.io import atomic_write_bytes
from pigeon.offline import VARIABLE, offline
from pigeon.progress import progress

CHUNK = 1 << 20
CHECKS = {"md5": "MD5", "gunzip-sha256": "SHA-256 of the decompressed file"}


@dataclass(frozen=True)
class Source:
    """Where one built-in's files are looked for and fetched from, and how each is checked."""

    name: str  # as --data spells it
    title: str  # as people write it
    files: Mapping[str, str]  # file name -> hex digest (see `check`); fetched from <url>/<file name>
    check: str  # "md5": of the file as published; "gunzip-sha256": of its decompressed bytes
    urls: tuple[str, ...]  # base addresses, tried in order: the original first, then mirrors
    env: str  # names a folder holding a copy; looked in first
    url_env: str  # names one base address (a mirror on your network) to use instead of `urls`
    system_dirs: tuple[str, ...] = ()  # where an OS package installs the files
    package: str = ""  # that package, for the fix
    unpacked: tuple[str, ...] = ()  # an archive's members, accepted extracted in place of the archive
    download_bytes: int = 0

    def base_urls(self) -> tuple[str, ...]:
        mirror = os.environ.get(self.url_env)
        return (mirror,) if mirror else self.urls


@dataclass(frozen=True)
class Copy:
    """A whole copy on this machine: the published files (`packed`), or an archive's extracted members."""

    folder: Path
    paths: dict[str, Path]  # file or member name (without its folder) -> path
    packed: bool


def candidate_dirs(src: Source, cache_dir: str | None) -> list[Path]:
    """Where a copy is looked for, in order; the last is where a download goes."""
    env = os.environ.get(src.env)
    dirs = [Path(env).expanduser()] if env else []
    return dirs + [Path(d) for d in src.system_dirs] + [cache.cache_root(cache_dir) / "datasets" / src.name]


def find(src: Source, cache_dir: str | None) -> Copy | None:
    """The first folder holding every file (not yet verified), or None; reads nothing but the folder listings."""
    for folder in candidate_dirs(src, cache_dir):
        if all((folder / name).is_file() for name in src.files):
            return Copy(folder, {name: folder / name for name in src.files}, packed=True)
        # an extracted archive: its top folder inside `folder`, or `folder` itself
        for paths in ({Path(m).name: folder / m for m in src.unpacked},
                      {Path(m).name: folder / Path(m).name for m in src.unpacked}):
            if paths and all(p.is_file() for p in paths.values()):
                return Copy(folder, paths, packed=False)
    return None


def _digest(check: str, raw: BinaryIO) -> str | None:
    """`raw`'s digest as `check` defines it; None when it should be gzip and is not."""
    # MD5 is what the authors of MNIST and CIFAR publish; it catches broken transfers and wrong files. The
    # bytes are only ever parsed as arrays, never run, so a forged file could mislabel data but not run code.
    digest = hashlib.md5(usedforsecurity=False) if check == "md5" else hashlib.sha256()
    try:
        stream: BinaryIO | gzip.GzipFile = raw if check == "md5" else gzip.GzipFile(fileobj=raw)
        for block in iter(lambda: stream.read(CHUNK), b""):
            digest.update(block)
    except (OSError, EOFError, zlib.error):
        return None
    return digest.hexdigest()


def matches(src: Source, path: Path) -> bool:
    with open(path, "rb") as fh:
        return _digest(src.check, fh) == src.files[path.name]


def local_copy(src: Source, cache_dir: str | None, verbose: bool) -> Copy:
    """A verified copy of `src`: found on this machine, else first downloaded into the cache."""
    found = find(src, cache_dir)
    if found is None:
        looked = candidate_dirs(src, cache_dir)
        if verbose and not offline():
            print(f"{src.title} not found locally; downloading to {looked[-1]}")
        download(src, looked[-1], looked=looked, verbose=verbose)
        return Copy(looked[-1], {name: looked[-1] / name for name in src.files}, packed=True)
    if found.packed:
        bad = [name for name, path in found.paths.items() if not matches(src, path)]
        if bad:
            files, it = ("files", "them") if len(bad) > 1 else ("file", "it")
            raise DatasetError(
                f"{found.folder}: {', '.join(bad)} corrupt (checksum mismatch: not the published {src.title} "
                f"{files}); delete {it} and pigeon downloads {src.title} again, or replace {it} with the originals")
    return found


def download(src: Source, dest: Path, base_urls: Sequence[str] | None = None, timeout: float = 30.0,
             looked: Sequence[Path] = (), verbose: bool = False) -> None:
    """Fetch every file of `src` that `dest` lacks or holds corrupt, each checked before it is kept.

    Each file is tried at each base address in turn; the one that answered is tried first for the rest."""
    bases = list(base_urls or src.base_urls())
    for name, want in src.files.items():
        if (dest / name).is_file() and matches(src, dest / name):
            continue
        if offline():
            raise DatasetError(
                f"--data {src.name}: the dataset is not on this machine and {VARIABLE}=1 forbids downloading it "
                f"from {bases[0].rstrip('/')}/{name}. Looked in {_places(looked or [dest])}. Fix: "
                f"{_fix(src, dest)}, or unset {VARIABLE} to let pigeon download it ({_mb(src.download_bytes)})")
        reasons, mismatch = [], False
        for base in bases:
            url = base.rstrip("/") + "/" + name
            blob, reason = _get(url, timeout, verbose)
            if blob is not None and _digest(src.check, io.BytesIO(blob)) == want:
                atomic_write_bytes(dest / name, blob)
                bases = [base] + [b for b in bases if b != base]
                break
            mismatch = mismatch or blob is not None
            reasons.append(reason or f"{url} does not match the published {src.title} file (checksum mismatch)")
        else:
            if mismatch:
                raise DatasetError(
                    f"{'; '.join(reasons)}; nothing was saved (the published {CHECKS[src.check]} of {name} is "
                    f"{want}). Fix: try again later (a transfer or a mirror can break), or {_fix(src, dest)}")
            raise DatasetError(
                f"{src.title} is not on this machine and {'; '.join(reasons)}. Looked in "
                f"{_places(looked or [dest])}. Fix: {_fix(src, dest)}")


def _get(url: str, timeout: float, verbose: bool) -> tuple[bytes | None, str | None]:
    """The body at `url`, or None and why not."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            size = int(response.headers.get("Content-Length") or 0) or None
            bar = progress(size, url.rsplit("/", 1)[-1], unit="B", enabled=verbose, unit_scale=True,
                           unit_divisor=1024)
            parts = []
            for block in iter(lambda: response.read(CHUNK), b""):
                parts.append(block)
                bar.update(len(block))
            bar.close()
    except (urllib.error.URLError, OSError, http.client.HTTPException) as err:
        return None, f"{url} could not be fetched ({err})"
    return b"".join(parts), None


def _places(dirs: Sequence[Path]) -> str:
    return ", ".join(str(d) for d in dirs)


def _fix(src: Source, dest: Path) -> str:
    apt = f"on Debian/Ubuntu run `apt-get install {src.package}`, or " if src.package else ""
    files = ", ".join(src.files)
    extracted = f" (or its extracted {Path(src.unpacked[0]).parent}/ folder)" if src.unpacked else ""
    it = "them" if len(src.files) > 1 else "it"
    return (f"{apt}copy {files}{extracted} into a folder and set {src.env} to it, or place {it} in {dest}, or set "
            f"{src.url_env} to a mirror serving {it}")


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"
