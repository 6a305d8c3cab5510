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


def test_every_file_of_a_run_and_its_exports_is_readable_by_others(digits_folder, tmp_path: Path,  # type: ignore[no-untyped-def]
                                                                   umask: int) -> None:
    import pigeon

    pytest.importorskip("onnxruntime")
    data = digits_folder(splits=("train", "val"), per_class=4, size=8)
    run = pigeon.train(str(data), epochs=1, batch=8, verbose=False, device="cpu", amp="off",
                       project=str(tmp_path / "runs"), name="r", cache_dir=str(tmp_path / "cache"))
    pigeon.export(run.best, format="onnx", verbose=False, check_images=8, cache_dir=str(tmp_path / "cache"))
    pigeon.export(run.best, format="openvino", verbose=False, check=False)
    entries = [p for root in (run.run_dir, tmp_path / "cache") for p in root.rglob("*")]
    files = [p for p in entries if p.is_file()]
    assert {p.name for p in files} >= {"best.safetensors", "last.state.pt", "config.json", "results.csv",
                                       "curves.png", "best.onnx", "best.xml", "pigeon.json", "meta.json"}
    assert {str(p.relative_to(tmp_path)): oct(_mode(p)) for p in files if _mode(p) != 0o644} == {}
    assert {str(p.relative_to(tmp_path)): oct(_mode(p)) for p in entries if p.is_dir() and _mode(p) != 0o755} == {}
