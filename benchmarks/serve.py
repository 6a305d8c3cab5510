"""Load test of `pigeon serve`: requests/s and latency of /api/v1/predict on loopback, at several concurrencies,
with micro-batching on and off, and again while a training job runs in the same server.

    python benchmarks/serve.py                 # pigeon-n on 28-px Fashion-MNIST PNGs; about 3 minutes
    python benchmarks/serve.py --quick         # a tiny smoke run (nothing saved)

The server is the real one (`python -m pigeon serve`, a subprocess on 127.0.0.1 and a free port); the client is
a small asyncio client in this process (keep-alive connections, one request in flight per connection) sending
a fixed number of requests per setting, so the run stops by itself. Each request is one multipart PNG, as
`curl -F file=@x.png` sends it. Client and server share the machine's cores, so the figures are what one
machine does on its own.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, save, write_png_folder  # noqa: E402

CONCURRENCY = (1, 4, 16, 64)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(home: Path, model: Path, max_batch: int) -> tuple[subprocess.Popen[bytes], str]:
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "pigeon", "serve", "--home", str(home), "--port", str(port),
                             "--model", str(model), "--max-batch", str(max_batch), "--no-verbose"],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    import httpx

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/readyz", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited: {proc.stderr.read().decode()[-2000:] if proc.stderr else ''}")
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError("the server did not get ready within 120 s")


def stop_server(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(2)  # Ctrl-C, as a person stops it
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _request(host: str, image: bytes) -> bytes:
    """One keep-alive HTTP/1.1 POST of a multipart PNG, as `curl -F file=@x.png` sends it, built once."""
    boundary = "pigeonbench"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"x.png\"\r\n"
            f"Content-Type: image/png\r\n\r\n").encode() + image + f"\r\n--{boundary}--\r\n".encode()
    head = (f"POST /api/v1/predict?top_k=3 HTTP/1.1\r\nHost: {host}\r\nContent-Type: multipart/form-data; "
            f"boundary={boundary}\r\nContent-Length: {len(body)}\r\n\r\n").encode()
    return head + body


async def _load(url: str, images: list[bytes], concurrency: int, total: int) -> dict[str, Any]:
    """`concurrency` keep-alive connections send `total` requests between them, each waiting for its answer.

    The client is a few lines of asyncio streams rather than a general HTTP library: on a 2-core machine the
    client shares the cores with the server, and a heavier client would measure itself more than pigeon."""
    host_port = url.split("//", 1)[1]
    host, port = host_port.rsplit(":", 1)
    requests = [_request(host_port, image) for image in images]
    latencies: list[float] = []
    errors = 0
    sent = 0

    async def connection() -> None:
        nonlocal sent, errors
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            while sent < total:
                request = requests[sent % len(requests)]
                sent += 1
                t0 = time.perf_counter()
                writer.write(request)
                status_line = await reader.readline()
                length = 0
                while (line := await reader.readline()) not in (b"\r\n", b""):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                await reader.readexactly(length)
                latencies.append(time.perf_counter() - t0)
                errors += b" 200 " not in status_line
        finally:
            writer.close()

    await asyncio.gather(*[connection() for _ in range(min(4, concurrency))])  # warm up
    latencies.clear()
    errors, sent = 0, 0
    t0 = time.perf_counter()
    await asyncio.gather(*[connection() for _ in range(concurrency)])
    wall = time.perf_counter() - t0
    latencies.sort()
    return {"concurrency": concurrency, "requests": len(latencies), "errors": errors,
            "requests_per_s": len(latencies) / wall, "p50_ms": 1000 * statistics.median(latencies),
            "p99_ms": 1000 * latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))]}


def measure(url: str, images: list[bytes], levels: tuple[int, ...], total: int) -> list[dict[str, Any]]:
    rows = []
    for c in levels:
        row = asyncio.run(_load(url, images, c, total if c > 1 else total // 4))
        print(f"  c={c:<3} {row['requests_per_s']:7.0f} req/s  p50 {row['p50_ms']:6.1f} ms  p99 "
              f"{row['p99_ms']:6.1f} ms  errors {row['errors']}", flush=True)
        rows.append(row)
    return rows


def _start_training(url: str, data: str, epochs: int) -> int:
    import httpx

    csrf = httpx.get(url + "/api/v1/session").json()["csrf"]
    headers = {"X-CSRF-Token": csrf}
    ds = httpx.post(url + "/api/v1/datasets", json={"builtin": data} if data == "fashion-mnist" else {"path": data},
                    headers=headers, timeout=300).json()
    job = httpx.post(url + "/api/v1/jobs", json={"dataset": ds["id"], "epochs": epochs, "plots": False},
                     headers=headers).json()
    deadline = time.monotonic() + 180
    events = Path(job["run_dir"]) / "events.jsonl"
    while not (events.is_file() and '"progress"' in events.read_text()):  # training steps are running
        if time.monotonic() > deadline:
            status = httpx.get(f"{url}/api/v1/jobs/{job['id']}").text
            raise RuntimeError(f"the training job did not start: {status}")
        time.sleep(0.5)
    return int(job["id"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="a checkpoint to serve (default: pigeon-n trained here for 1 epoch)")
    parser.add_argument("--requests", type=int, default=2000, help="requests per setting (c=1 sends a quarter)")
    parser.add_argument("--quick", action="store_true", help="tiny smoke run; nothing saved")
    parser.add_argument("--levels", type=int, nargs="+", help="only these concurrencies, batching on, no table "
                        "(for a quick look while tuning)")
    args = parser.parse_args()
    import pigeon
    from pigeon.data import load_dataset

    total = 40 if args.quick else args.requests
    levels = (1, 4) if args.quick else tuple(args.levels or CONCURRENCY)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if args.quick:
            ds = load_dataset("digits", verbose=False)
        else:
            ds = load_dataset("fashion-mnist", verbose=False)
        part = ds.splits["test"] if "test" in ds.splits else ds.splits["train"]
        n = 200 if args.quick else 2000
        folder = write_png_folder(work / "pngs", list(ds.classes), {"train": (part.images[:n], part.labels[:n])})
        images = [p.read_bytes() for p in sorted((folder / "train").rglob("*.png"))[:256]]
        model = Path(args.model) if args.model else pigeon.train(
            data=str(folder), epochs=1, verbose=False, plots=False, project=str(work / "runs"),
            cache_dir=str(work / "cache")).best
        results: dict[str, Any] = {"model": str(model), "image_px": int(ds.preprocess.imgsz)}
        modes = (("batching on (max 16, 5 ms)", 16), ("batching off (--max-batch 1)", 1))
        for label, max_batch in modes[:1] if args.levels else modes:
            print(label, flush=True)
            proc, url = start_server(work / f"home-{max_batch}", model, max_batch)
            try:
                results[label] = measure(url, images, levels, total)
            finally:
                stop_server(proc)
        if args.levels:
            return
        label = "batching on, while a job trains"
        print(label, flush=True)
        proc, url = start_server(work / "home-train", model, 16)
        try:
            job = _start_training(url, str(folder) if args.quick else "fashion-mnist", 1 if args.quick else 3)
            results[label] = measure(url, images, (16,) if not args.quick else (4,), total)
            import httpx

            state = httpx.get(f"{url}/api/v1/jobs/{job}").json()["state"]
            results["training_job_state_after"] = state
            print(f"  the training job was {state} when the load ended")
        finally:
            stop_server(proc)
    if args.quick:
        print(json.dumps({k: v for k, v in results.items() if isinstance(v, list)})[:400])
        return
    table = ["| setting | concurrency | requests/s | p50 ms | p99 ms | errors |", "|---|---|---|---|---|---|"]
    for label, rows in results.items():
        if isinstance(rows, list):
            table += [f"| {label} | {r['concurrency']} | {r['requests_per_s']:.0f} | {r['p50_ms']:.1f} | "
                      f"{r['p99_ms']:.1f} | {r['errors']} |" for r in rows]
    on = {r["concurrency"]: r for r in results["batching on (max 16, 5 ms)"]}
    off = {r["concurrency"]: r for r in results["batching off (--max-batch 1)"]}
    busy = results["batching on, while a job trains"][0]
    table += ["", f"Targets on this machine: >= 500 req/s at c=16 with p99 <= 50 ms and 0 errors: "
              f"**{on[16]['requests_per_s']:.0f} req/s, p99 {on[16]['p99_ms']:.1f} ms, {on[16]['errors']} errors**; "
              f"batching at c=16 beats none: **{on[16]['requests_per_s'] / off[16]['requests_per_s']:.2f}x**; "
              f"p99 <= 250 ms while training: **{busy['p99_ms']:.1f} ms** ({busy['requests_per_s']:.0f} req/s). "
              f"One multipart PNG of {results['image_px']} px per request, pigeon-n, client and server on the same "
              "cores."]
    save("serve", results, "\n".join(table))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
