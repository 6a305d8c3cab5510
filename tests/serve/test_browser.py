"""The app in a real browser (Debian's chromium through Playwright), the way a person uses it: upload a zip of
digit PNGs that holds two broken files and see both reported, train 2 epochs and watch the epoch counter reach
the end through server-sent events, open the confusion matrix and a cell of it, drop a test image and read
its top label, download the checkpoint and load it with pigeon.load.

Every wait is on an element's state, bounded. PIGEON_SCREENSHOTS=1 also writes docs/app-*.png (1280x800)."""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = "/usr/bin/chromium"
pytest.importorskip("playwright.sync_api", reason="playwright is not installed (the dev extra has it)")
if not Path(CHROMIUM).exists():
    pytest.skip("Debian's chromium is missing: apt-get install -y chromium (make browser)", allow_module_level=True)

DOCS = Path(__file__).resolve().parents[2] / "docs"


@pytest.fixture
def server(tmp_path: Path) -> Any:
    import uvicorn

    from pigeon.config import ServeConfig
    from pigeon.serve.app import create_app

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app = create_app(ServeConfig(home=str(tmp_path / "home"), port=port, verbose=False))
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not srv.started:
        assert time.monotonic() < deadline, "the server did not start"
        time.sleep(0.02)
    yield f"http://127.0.0.1:{port}"
    app.state.ctx.jobs.stopping.set()
    srv.should_exit = True
    thread.join(15)


def test_a_person_builds_and_tests_a_classifier(server: str, tmp_path: Path, digits_zip: bytes,
                                                digit_pngs: list[tuple[int, bytes]]) -> None:
    from playwright.sync_api import expect, sync_playwright

    import pigeon

    archive = tmp_path / "digits.zip"
    archive.write_bytes(digits_zip)
    label, image = digit_pngs[7]
    test_image = tmp_path / "seven.png"
    test_image.write_bytes(image)
    shots = os.environ.get("PIGEON_SCREENSHOTS") == "1"

    def shot(page: Any, name: str) -> None:
        if shots:
            DOCS.mkdir(exist_ok=True)
            page.screenshot(path=str(DOCS / f"app-{name}.png"))

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 800}, accept_downloads=True)
            page_errors: list[str] = []
            page.on("pageerror", lambda err: page_errors.append(str(err)))
            page.goto(server + "/")
            # 1 Data: the zip goes in; both broken files come back with their reasons
            page.set_input_files("#zip-input", str(archive))
            rejected = page.locator("#rejected tbody tr")
            expect(rejected).to_have_count(2, timeout=30_000)
            expect(rejected.filter(has_text="not-an-image.png")).to_contain_text("cannot be decoded")
            expect(rejected.filter(has_text="truncated.png")).to_contain_text("cannot be decoded")
            expect(page.locator("#thumbs img").first).to_be_visible()
            expect(page.locator("#go-train")).to_be_enabled()
            shot(page, "data")
            # 2 Train: 2 epochs, a planned time shown before starting, the changed field marked
            page.locator("#go-train").click()
            page.fill("input[name=epochs]", "2")
            expect(page.locator("input[name=epochs]")).to_have_class("changed")
            expect(page.locator("#plan")).to_contain_text("Planned", timeout=30_000)
            shot(page, "train")
            page.locator("#start").click()
            # 3 Watch: the epoch counter reaches the end through the event stream
            expect(page.locator("#epoch-counter")).to_have_text("epoch 2/2", timeout=90_000)
            expect(page.locator("#job-status")).to_contain_text("done", timeout=60_000)
            shot(page, "watch")
            # 4 Evaluate: the confusion matrix, and the images of one of its cells
            page.locator("#tab-evaluate").click()
            cell = page.locator("#confusion button[data-cell='0,0']")
            expect(cell).to_be_visible(timeout=30_000)
            cell.click()
            expect(page.locator("#cell-images h5")).to_contain_text("true 0, predicted 0")
            shot(page, "evaluate")
            # 5 Test: a dropped image is predicted at once, with a curl for the same call
            page.locator("#tab-test").click()
            page.set_input_files("#test-input", str(test_image))
            top = page.locator(".top-label").first
            expect(top).to_be_visible(timeout=30_000)
            shown_label = top.inner_text().split()[0]
            assert shown_label in [str(d) for d in range(10)]
            expect(page.locator("#curl")).to_contain_text("curl")
            expect(page.locator("#raw-json")).to_contain_text('"predictions"')
            shot(page, "test")
            # 6 Keep: download the checkpoint; pigeon.load opens it
            page.locator("#tab-keep").click()
            link = page.locator("#files a", has_text="best.safetensors")
            expect(link).to_be_visible(timeout=30_000)
            with page.expect_download() as download:
                link.click()
            saved = tmp_path / "downloaded" / "best.safetensors"
            saved.parent.mkdir()
            download.value.save_as(saved)
            with page.expect_download() as meta_download:  # the checkpoint's JSON metadata travels beside it
                page.locator("#files a", has_text="best.meta.json").click()
            meta_download.value.save_as(saved.with_name("best.meta.json"))
            shot(page, "keep")
            assert not page_errors, page_errors
        finally:
            browser.close()
    clf = pigeon.load(saved, device="cpu")
    assert clf.classes == tuple(str(d) for d in range(10))
    assert clf.predict(image).label == shown_label  # the downloaded weights are the ones the page tested
    shutil.rmtree(saved.parent)
