"""Fixtures of the server tests: an app on a fresh home, and real digit images as PNG bytes and zips."""

from __future__ import annotations

import io
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="the serve extra is not installed: pip install 'pigeon[serve]'")

BASE = "http://127.0.0.1:8000"  # the Host pigeon accepts; TestClient's own 'testserver' is refused


def png(pixels: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="session")
def digit_pngs(digits_arrays: tuple[np.ndarray, np.ndarray]) -> list[tuple[int, bytes]]:
    """(label, PNG bytes) of the first 300 real digits."""
    images, labels = digits_arrays
    return [(int(labels[i]), png(images[i])) for i in range(300)]


def make_zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


@pytest.fixture(scope="session")
def digits_zip(digit_pngs: list[tuple[int, bytes]]) -> bytes:
    """A zip of class folders under one top folder, with two broken files: a text file named .png and a
    truncated PNG."""
    members = {f"digits/{label}/{i:03d}.png": data for i, (label, data) in enumerate(digit_pngs)}
    members["digits/3/not-an-image.png"] = b"this is text, not a PNG"
    members["digits/4/truncated.png"] = digit_pngs[4][1][:60]
    return make_zip(members)


@pytest.fixture
def make_client(tmp_path: Path) -> Iterator[Callable[..., Any]]:
    """make_client(**ServeConfig options) -> a TestClient on a fresh home (lifespan running), closed after."""
    from fastapi.testclient import TestClient

    from pigeon.config import ServeConfig
    from pigeon.serve.app import create_app

    opened: list[Any] = []

    def make(**options: Any) -> Any:
        options.setdefault("home", str(tmp_path / f"home{len(opened)}"))
        client = TestClient(create_app(ServeConfig(verbose=False, **options)), base_url=BASE)
        client.__enter__()
        opened.append(client)
        return client

    yield make
    for client in opened:
        client.__exit__(None, None, None)


def csrf(client: Any) -> dict[str, str]:
    return {"X-CSRF-Token": client.get("/api/v1/session").json()["csrf"]}


def error(response: Any) -> tuple[int, str]:
    return response.status_code, response.json()["error"]["code"]


@pytest.fixture(scope="session")
def h() -> Any:
    """The helpers above, for test modules (with --import-mode=importlib they cannot import conftest)."""
    from types import SimpleNamespace

    return SimpleNamespace(png=png, make_zip=make_zip, csrf=csrf, error=error)


@pytest.fixture(scope="session")
def checkpoint(digits_run: Path) -> Path:
    return digits_run / "weights" / "best.safetensors"
