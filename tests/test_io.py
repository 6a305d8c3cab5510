"""Artefacts get the mode the user's umask gives, not the 0600/0700 of Python's private temp files."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from pigeon.io import atomic_path, atomic_write_text, make_temp_dir, write_json


@pytest.fixture
def umask() -> Iterator[int]:
    """Run the test under umask 022 (the usual one); restore the process's own afterwards."""
    old = os.umask(0o022)
    try:
        yield 0o022
    finally:
        os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_atomic_writes_get_the_umask_mode(tmp_path: Path, umask: int) -> None:
    atomic_write_text(tmp_path / "a.txt", "x")
    write_json(tmp_path / "deep" / "b.json", {"a": 1})
    with atomic_path(tmp_path / "c.bin") as tmp:
        tmp.write_bytes(b"\0")
    assert [_mode(tmp_path / p) for p in ("a.txt", "deep/b.json", "c.bin")] == [0o644] * 3
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a.txt", "b.json", "c.bin", "deep"]  # no temp left


def test_a_stricter_umask_is_honoured(tmp_path: Path) -> None:
    old = os.umask(0o077)
    try:
        atomic_write_text(tmp_path / "private.txt", "x")
        folder = make_temp_dir(tmp_path, ".stage.")
    finally:
        os.umask(old)
    assert _mode(tmp_path / "private.txt") == 0o600 and _mode(folder) == 0o700


def test_temp_dirs_get_the_umask_mode(tmp_path: Path, umask: int) -> None:
    first, second = make_temp_dir(tmp_path / "new", ".x."), make_temp_dir(tmp_path / "new", ".x.")
    assert first != second and first.name.startswith(".x.")
    assert _mode(first) == _mode(second) == 0o755


def test_every_file_of_a_run_and_its_exports_is_readable_by_others(digits_run: Path, tmp_path: Path) -> None:
    """The shared run was written under the session's umask, the exports under 022: each file has its mode."""
    import pigeon

    pytest.importorskip("onnxruntime")
    session = os.umask(0o022)
    try:
        best = digits_run / "weights" / "best.safetensors"
        pigeon.export(best, format="onnx", out=str(tmp_path / "x" / "m.onnx"), check=False, verbose=False)
        pigeon.export(best, format="openvino", out=str(tmp_path / "ov"), check=False, verbose=False)
    finally:
        os.umask(session)
    ran = [p for root in (digits_run, digits_run.parent.parent / "shared-digits-cache") for p in root.rglob("*")]
    exported = list(tmp_path.rglob("*"))
    assert {p.name for p in ran if p.is_file()} >= {"best.safetensors", "last.state.pt", "config.json",
                                                    "results.csv", "curves.png"}
    assert {p.name for p in exported} >= {"m.onnx", "ov", "best.xml", "pigeon.json"}
    wrong = {str(p): oct(_mode(p)) for p in ran if _mode(p) != (0o777 if p.is_dir() else 0o666) & ~session}
    wrong |= {str(p): oct(_mode(p)) for p in exported if _mode(p) != (0o755 if p.is_dir() else 0o644)}
    assert wrong == {}


def test_a_cache_entry_is_readable_by_others(digits_folder, tmp_path: Path, umask: int) -> None:  # type: ignore[no-untyped-def]
    from pigeon.data import load_dataset

    load_dataset(str(digits_folder(per_class=2, size=8)), cache_dir=str(tmp_path / "cache"), verbose=False)
    entries = list((tmp_path / "cache").rglob("*"))
    assert any(p.name == "meta.json" for p in entries)
    assert {str(p): oct(_mode(p)) for p in entries if _mode(p) != (0o755 if p.is_dir() else 0o644)} == {}
