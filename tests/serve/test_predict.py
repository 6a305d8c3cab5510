"""POST /api/v1/predict: every way of sending images, the answer's shape, its agreement with pigeon.load, every
refusal and its status, and micro-batching observed in /metrics."""

from __future__ import annotations

import asyncio
import base64
import re
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest


def _wait_ready(client: Any) -> None:
    deadline = time.monotonic() + 30
    while client.get("/readyz").status_code != 200:
        assert time.monotonic() < deadline, client.get("/readyz").json()
        time.sleep(0.05)


@pytest.fixture
def served(make_client: Any, checkpoint: Path) -> Any:
    client = make_client(model=str(checkpoint))
    _wait_ready(client)
    return client


def test_health_and_readiness(make_client: Any, checkpoint: Path, h: Any) -> None:
    bare = make_client()
    assert bare.get("/healthz").json() == {"status": "ok"}
    assert h.error(bare.get("/readyz")) == (503, "not_ready")
    assert h.error(bare.post("/api/v1/predict", content=b"x", headers={"content-type": "image/png"})) == \
        (404, "no_model")
    served = make_client(model=str(checkpoint))
    _wait_ready(served)
    assert served.get("/readyz").json()["ready"] is True


def test_multipart_raw_and_base64_give_the_answer_of_pigeon_load(served: Any, checkpoint: Path, h: Any,
                                                                  digit_pngs: list[tuple[int, bytes]]) -> None:
    import pigeon

    clf = pigeon.load(checkpoint, device="cpu")
    (_, first), (_, second) = digit_pngs[0], digit_pngs[1]
    multi = served.post("/api/v1/predict?top_k=3", files=[("file", ("a.png", first, "image/png")),
                                                          ("file", ("b.png", second, "image/png"))]).json()
    assert [p["file"] for p in multi["predictions"]] == ["a.png", "b.png"]
    assert multi["model"]["sha256"] and multi["model"]["id"] == multi["model"]["sha256"][:12]
    for pred, data in zip(multi["predictions"], (first, second)):
        expected = clf.predict(data, top_k=3)
        assert [t["label"] for t in pred["top"]] == [clf.classes[i] for i in expected.top5[:3]]
        assert pred["top"][0]["score"] == pytest.approx(float(expected.top1_conf), abs=1e-4)
        assert pred["top"][0]["class_index"] == expected.top1
        scores = [t["score"] for t in pred["top"]]
        assert scores == sorted(scores, reverse=True)
        assert set(pred["ms"]) == {"decode", "inference", "total"}
    raw = served.post("/api/v1/predict?top_k=3", content=first, headers={"content-type": "image/png"}).json()
    b64 = served.post("/api/v1/predict?top_k=3", json={"images": ["data:image/png;base64,"
                                                                  + base64.b64encode(first).decode()]}).json()
    for other in (raw, b64):  # batch composition moves scores by float rounding only
        got, want = other["predictions"][0]["top"], multi["predictions"][0]["top"]
        assert [t["label"] for t in got] == [t["label"] for t in want]
        assert [t["score"] for t in got] == pytest.approx([t["score"] for t in want], abs=1e-5)
    # per model id as well, and top_k is clipped to the class count
    by_id = served.post(f"/api/v1/models/{multi['model']['id']}/predict?top_k=50", content=first,
                        headers={"content-type": "image/png"}).json()
    assert len(by_id["predictions"][0]["top"]) == len(clf.classes)


def test_the_content_decides_not_the_name(served: Any, digit_pngs: list[tuple[int, bytes]]) -> None:
    answer = served.post("/api/v1/predict", files={"file": ("photo.jpg", digit_pngs[0][1], "image/jpeg")})
    assert answer.status_code == 200


def test_bad_images_and_parameters_get_their_status(served: Any, h: Any, digit_pngs: list[tuple[int, bytes]],
                                                   tmp_path: Path) -> None:
    from PIL import Image

    jpeg = tmp_path / "x.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(jpeg)
    truncated = jpeg.read_bytes()[:300]
    bad = served.post("/api/v1/predict", files={"file": ("cut.jpg", truncated, "image/jpeg")})
    assert h.error(bad) == (400, "bad_image") and "cut.jpg" in bad.json()["error"]["message"]
    text = served.post("/api/v1/predict", files={"file": ("notes.png", b"plain text", "image/png")})
    assert h.error(text) == (400, "bad_image") and "notes.png" in text.json()["error"]["message"]
    assert h.error(served.post("/api/v1/predict", files={"file": ("empty.png", b"", "image/png")})) == \
        (400, "bad_image")
    assert h.error(served.post("/api/v1/predict", content=b"hi", headers={"content-type": "text/plain"})) == \
        (415, "unsupported_type")
    assert h.error(served.post("/api/v1/predict?top_k=0", content=digit_pngs[0][1],
                               headers={"content-type": "image/png"})) == (422, "bad_parameter")
    assert h.error(served.post("/api/v1/predict", json={"images": "nope"})) == (422, "bad_parameter")
    assert h.error(served.post("/api/v1/predict", json={"images": ["!!notbase64"]})) == (400, "bad_image")
    assert h.error(served.post("/api/v1/models/000000000000/predict", content=digit_pngs[0][1],
                               headers={"content-type": "image/png"})) == (404, "no_model")


def test_caps_on_pixels_files_body_and_queue(make_client: Any, checkpoint: Path, h: Any,
                                            digit_pngs: list[tuple[int, bytes]]) -> None:
    client = make_client(model=str(checkpoint), max_pixels=80, max_files=3, max_request_mb=0.02, queue_limit=2)
    _wait_ready(client)
    one = digit_pngs[0][1]
    assert client.post("/api/v1/predict", content=one, headers={"content-type": "image/png"}).status_code == 200
    big = h.png(np.zeros((10, 10), np.uint8))  # 100 pixels > 80
    assert h.error(client.post("/api/v1/predict", content=big, headers={"content-type": "image/png"})) == \
        (413, "too_large")
    four = [("file", (f"{i}.png", one, "image/png")) for i in range(4)]
    assert h.error(client.post("/api/v1/predict", files=four)) == (413, "too_large")
    three = four[:3]  # 3 images, but the queue holds at most 2
    busy = client.post("/api/v1/predict", files=three)
    assert h.error(busy) == (503, "busy") and busy.headers["retry-after"] == "1"

    def chunks() -> Any:  # streamed without a Content-Length: the server must count what arrives
        for _ in range(40):
            yield b"\0" * 1000

    assert h.error(client.post("/api/v1/predict", content=chunks(), headers={"content-type": "image/png"})) == \
        (413, "too_large")
    lying = client.post("/api/v1/predict", content=b"\0" * 30_000,
                        headers={"content-type": "image/png", "content-length": "100"})
    assert lying.status_code in (400, 413)  # never a 200 from a body that is not what it claims


def _batch_sizes(client: Any) -> tuple[float, float]:
    text = client.get("/metrics").text
    total = float(re.search(r"^pigeon_batch_size_sum (\S+)", text, re.M).group(1))
    count = float(re.search(r"^pigeon_batch_size_count (\S+)", text, re.M).group(1))
    return total, count


@pytest.mark.parametrize("max_batch", [16, 1])
def test_requests_that_arrive_together_run_as_one_batch(make_client: Any, checkpoint: Path, max_batch: int,
                                                        digit_pngs: list[tuple[int, bytes]]) -> None:
    import httpx

    client = make_client(model=str(checkpoint), max_batch=max_batch, max_wait_ms=50)
    _wait_ready(client)
    before_total, before_count = _batch_sizes(client)

    async def burst() -> list[int]:
        transport = httpx.ASGITransport(app=client.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8000") as ac:
            answers = await asyncio.gather(*[ac.post("/api/v1/predict", content=digit_pngs[i][1],
                                                     headers={"content-type": "image/png"}) for i in range(16)])
        return [a.status_code for a in answers]

    assert asyncio.run(burst()) == [200] * 16
    total, count = _batch_sizes(client)
    images, passes = total - before_total, count - before_count
    assert images == 16
    assert passes < 16 if max_batch > 1 else passes == 16
    metrics = client.get("/metrics").text
    assert 'pigeon_requests_total{route="/api/v1/predict",status="200"}' in metrics
    assert "pigeon_queue_depth 0.0" in metrics


def test_an_onnx_export_is_served_too(make_client: Any, digits_exports: dict[str, Any],
                                      digit_pngs: list[tuple[int, bytes]]) -> None:
    import pigeon

    onnx = digits_exports["onnx"].path  # the session's export of the shared checkpoint
    client = make_client(model=str(onnx))
    _wait_ready(client)
    assert client.get("/api/v1/models").json()[0]["format"] == "onnx"
    files = [("file", (f"{i}.png", digit_pngs[i][1], "image/png")) for i in range(3)]
    served = client.post("/api/v1/predict", files=files).json()["predictions"]
    expected = pigeon.load(onnx).predict([digit_pngs[i][1] for i in range(3)])
    assert [p["top"][0]["label"] for p in served] == [e.label for e in expected]


def test_min_conf_answers_unknown_below_it(make_client: Any, checkpoint: Path, h: Any,
                                           digit_pngs: list[tuple[int, bytes]]) -> None:
    import pigeon

    clf = pigeon.load(checkpoint, device="cpu")
    images = [data for _, data in digit_pngs[:12]]
    confs = [float(clf.predict(data).top1_conf) for data in images]
    threshold = float(np.median(confs))
    files = [("file", (f"{i}.png", data, "image/png")) for i, data in enumerate(images)]
    served = make_client(model=str(checkpoint), min_conf=threshold)  # the server's default threshold
    _wait_ready(served)
    answer = served.post("/api/v1/predict", files=files).json()
    assert answer["min_conf"] == threshold and answer["model"]["temperature"] == clf.temperature
    for pred, conf in zip(answer["predictions"], confs):
        assert pred["abstained"] is (conf < threshold)
        assert pred["label"] == ("unknown" if conf < threshold else pred["top"][0]["label"])
        assert pred["confidence"] == pytest.approx(conf, abs=1e-4)
    assert any(p["abstained"] for p in answer["predictions"]) and not all(p["abstained"] for p in
                                                                           answer["predictions"])
    # a request's own min_conf wins over the server's
    relaxed = served.post("/api/v1/predict?min_conf=0", files=files).json()
    assert not any(p["abstained"] for p in relaxed["predictions"])
    assert h.error(served.post("/api/v1/predict?min_conf=2", files=files)) == (422, "bad_parameter")


def test_a_height_x_width_model_is_served_at_its_box(make_client: Any, wide_folder: Any, tmp_path: Path) -> None:
    import io

    from PIL import Image

    import pigeon

    data = wide_folder(size=(20, 40))
    run = pigeon.train(str(data), model="pigeon-p", imgsz="16x32", epochs=1, batch=4, fliplr=0.0, val_fraction=0.0,
                       plots=False, verbose=False, device="cpu", amp="off", project=str(tmp_path / "runs"),
                       cache_dir=str(tmp_path / "cache"))
    client = make_client(model=str(run.best))
    _wait_ready(client)
    buf = io.BytesIO()
    Image.open(next(data.rglob("*.png"))).save(buf, format="PNG")
    got = client.post("/api/v1/predict?top_k=2", content=buf.getvalue(), headers={"content-type": "image/png"})
    expected = pigeon.load(run.best, device="cpu").predict(buf.getvalue(), top_k=2)
    assert got.status_code == 200
    top = got.json()["predictions"][0]["top"]
    assert top[0]["class_index"] == expected.top1
    assert top[0]["score"] == pytest.approx(float(expected.top1_conf), abs=1e-4)


def test_a_raster_model_is_refused_with_the_way_to_use_it(make_client: Any, raster_folder: Any, tmp_path: Path,
                                                           h: Any) -> None:
    import io

    from PIL import Image

    import pigeon

    run = pigeon.train(str(raster_folder()), model="pigeon-p", imgsz=12, epochs=1, batch=4, val_fraction=0.0,
                       plots=False, verbose=False, device="cpu", amp="off", project=str(tmp_path / "runs"),
                       cache_dir=str(tmp_path / "cache"))
    client = make_client(model=str(run.best))
    _wait_ready(client)
    buf = io.BytesIO()
    Image.new("RGB", (12, 12)).save(buf, format="PNG")
    got = client.post("/api/v1/predict", content=buf.getvalue(), headers={"content-type": "image/png"})
    assert h.error(got) == (415, "unsupported_model_input")
    assert "4-band uint16 rasters" in got.text and "pigeon predict" in got.text
