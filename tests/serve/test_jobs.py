"""Training jobs end to end: a real child process trains, /predict answers meanwhile, Cancel keeps a resumable
run, Resume finishes it exactly where it stopped, a killed child is marked failed, a second job waits its turn,
the event stream is framed as server-sent events and continues after Last-Event-ID, and a job the server lost
in a restart comes back as interrupted."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pigeon.serve.jobs import read_events


def _until(what: Callable[[], Any], seconds: float = 90, message: str = "") -> Any:
    deadline = time.monotonic() + seconds
    while True:
        value = what()
        if value:
            return value
        assert time.monotonic() < deadline, message or "timed out"
        time.sleep(0.1)


def _state(client: Any, job_id: int) -> dict[str, Any]:
    return client.get(f"/api/v1/jobs/{job_id}").json()


def _sse(text: str) -> list[dict[str, Any]]:
    events = []
    for block in text.strip().split("\n\n"):
        fields: dict[str, Any] = {}
        for line in block.splitlines():
            key, _, value = line.partition(": ")
            fields[key] = value
        events.append(fields)
    return events


def test_a_job_trains_cancels_resumes_and_streams(make_client: Any, checkpoint: Path, h: Any,
                                                  digit_pngs: list[tuple[int, bytes]]) -> None:
    client = make_client(model=str(checkpoint))
    token = h.csrf(client)
    ds = client.post("/api/v1/datasets", json={"builtin": "digits"}, headers=token).json()
    bad = client.post("/api/v1/jobs", json={"dataset": ds["id"], "epochs": 0}, headers=token)
    assert h.error(bad) == (422, "bad_parameter") and "epochs" in bad.json()["error"]["message"]
    assert h.error(client.post("/api/v1/jobs", json={"dataset": ds["id"], "project": "/tmp"}, headers=token)) == \
        (422, "bad_parameter")
    job = client.post("/api/v1/jobs", json={"dataset": ds["id"], "epochs": 4, "plots": False, "batch": 256},
                      headers=token).json()
    run_dir = Path(job["run_dir"])
    assert job["state"] == "queued" and run_dir.name == job["run"] == f"job-{job['id']}-pigeon-p"
    second = client.post("/api/v1/jobs", json={"dataset": ds["id"], "epochs": 1, "plots": False},
                         headers=token).json()
    _until(lambda: [e for _, e in read_events(run_dir, 0) if e["event"] == "epoch"], message="no first epoch")
    _until(lambda: (run_dir / "weights" / "last.state.pt").is_file(), message="epoch 1 was never saved")
    assert _state(client, job["id"])["state"] == "running"
    assert _state(client, second["id"])["state"] == "queued"  # one job at a time; the next one waits
    # Cancel at once: an epoch of digits lasts well under a second, so anything done first (the predict below
    # loads a model) could let the job finish before the cancel lands, and a finished job is done, not cancelled.
    assert client.post(f"/api/v1/jobs/{job['id']}/cancel", headers=token).status_code == 200
    cancelled = _until(lambda: (s := _state(client, job["id"]))["state"] == "cancelled" and s)
    assert (run_dir / "weights" / "last.state.pt").is_file()
    assert h.error(client.post(f"/api/v1/jobs/{job['id']}/cancel", headers=token)) == (409, "conflict")
    assert "Resume" in cancelled["error"]

    # the queued job starts now; a child killed from outside is a failed job, with the reason
    pid = _until(lambda: _state(client, second["id"])["pid"])
    os.kill(pid, signal.SIGKILL)
    failed = _until(lambda: (s := _state(client, second["id"]))["state"] == "failed" and s)
    assert "SIGKILL" in failed["error"]
    assert h.error(client.post(f"/api/v1/jobs/{second['id']}/resume", headers=token)) == (409, "conflict")

    assert client.post(f"/api/v1/jobs/{job['id']}/resume", headers=token).json()["state"] == "queued"
    # the server keeps answering while a model trains in the child
    _until(lambda: _state(client, job["id"])["state"] == "running", message="the resumed job never started")
    answer = client.post("/api/v1/predict", content=digit_pngs[0][1], headers={"content-type": "image/png"})
    assert answer.status_code == 200
    done = _until(lambda: (s := _state(client, job["id"]))["state"] == "done" and s, message="resume never ended")
    assert done["error"] is None
    rows = (run_dir / "results.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["1", "2", "3", "4"]  # every epoch once, across the cancel

    stream = client.get(f"/api/v1/jobs/{job['id']}/events")
    assert stream.headers["content-type"].startswith("text/event-stream")
    events = _sse(stream.text)
    numbered = [e for e in events if "id" in e]
    assert [int(e["id"]) for e in numbered] == list(range(1, len(numbered) + 1))
    kinds = [e["event"] for e in numbered]
    assert kinds.count("epoch") == 4 and kinds.count("start") == 2 and kinds[-1] == "done"
    assert events[-1]["event"] == "state" and json.loads(events[-1]["data"])["state"] == "done"
    assert any(e["event"] == "log" for e in events)
    later = _sse(client.get(f"/api/v1/jobs/{job['id']}/events", headers={"Last-Event-ID": "3"}).text)
    assert int(next(e for e in later if "id" in e)["id"]) == 4

    # the run is an ordinary run folder: the CLI's loader opens it, the app lists and serves it
    import pigeon

    assert pigeon.load(run_dir / "weights" / "best.safetensors").classes
    assert any(r["name"] == job["run"] and r["status"] == "done" for r in client.get("/api/v1/runs").json())
    assert any(m["name"] == f"{job['run']}/best" for m in client.get("/api/v1/models").json())


def test_a_job_lost_in_a_restart_comes_back_interrupted(tmp_path: Path) -> None:
    from pigeon.serve.jobs import JobRunner
    from pigeon.serve.store import Store

    store = Store(tmp_path / "pigeon.db")
    job = store.add_job({"data": "digits"}, None, tmp_path / "runs", "pigeon-n")
    store.update_job(job["id"], state="running", pid=2 ** 22 + 12345)  # no such process
    queued = store.add_job({"data": "digits"}, None, tmp_path / "runs", "pigeon-n")
    runner = JobRunner(store, tmp_path / "runs", slots=0)  # slots 0: recover, start nothing
    runner.start()
    try:
        lost = store.job(job["id"])
        assert lost["state"] == "interrupted" and "Resume" in lost["error"]
        assert store.job(queued["id"])["state"] == "queued"
    finally:
        runner.stop()


def test_runs_trained_outside_the_app_show_up(make_client: Any, digits_run: Path) -> None:
    import shutil

    client = make_client()
    shutil.copytree(digits_run, client.app.state.ctx.runs_dir / "from-the-cli")
    listed = {r["name"]: r for r in client.get("/api/v1/runs").json()}
    assert listed["from-the-cli"]["status"] == "done"
    detail = client.get("/api/v1/runs/from-the-cli").json()
    assert detail["report"]["confusion"] and len(detail["rows"]) == detail["summary"]["epochs_run"]
    wrong = client.get("/api/v1/runs/from-the-cli/misclassified?limit=500").json()
    confidences = [w["confidence"] for w in wrong]
    assert confidences == sorted(confidences) and all(w["true"] != w["pred"] for w in wrong)
    confusion = detail["report"]["confusion"]
    classes = [c["class"] for c in detail["report"]["per_class"]]
    i, j = next((i, j) for i, row in enumerate(confusion) for j, n in enumerate(row) if i != j and n)
    cell = client.get(f"/api/v1/runs/from-the-cli/cell?true={i}&pred={j}").json()
    assert len(cell) == confusion[i][j] and {(c["true"], c["pred"]) for c in cell} == {(classes[i], classes[j])}
    assert client.get(cell[0]["thumb"]).content.startswith(b"\x89PNG")
    assert client.get("/api/v1/runs/from-the-cli/files/weights/best.safetensors").status_code == 200
    for escape in ("../../pigeon.db", "weights/../../../pigeon.db", "%2e%2e/%2e%2e/pigeon.db"):
        assert client.get(f"/api/v1/runs/from-the-cli/files/{escape}").status_code == 404
    assert client.get("/api/v1/runs/nope").status_code == 404
    token = {"X-CSRF-Token": client.get("/api/v1/session").json()["csrf"]}
    exported = client.post("/api/v1/runs/from-the-cli/exports", json={"format": "onnx"}, headers=token).json()
    assert exported["parity"]["top1_agreement"] >= 0.99 and exported["file"] == "weights/best.onnx"
    onnx = client.get(exported["url"])
    assert onnx.status_code == 200 and len(onnx.content) > 1000
    bad = client.post("/api/v1/runs/from-the-cli/exports", json={"format": "tflite"}, headers=token)
    assert bad.status_code == 422


@pytest.mark.parametrize("writers", [4])
def test_tabs_writing_at_once_never_corrupt_the_records(tmp_path: Path, writers: int) -> None:
    import sqlite3
    import threading

    from pigeon.serve.store import Store

    store = Store(tmp_path / "pigeon.db")
    errors: list[BaseException] = []

    def tab(n: int) -> None:
        try:
            for i in range(25):
                job = store.add_job({"n": n, "i": i}, None, tmp_path / "runs", "pigeon-n")
                store.update_job(job["id"], state="cancelled")
                store.put_dataset({"id": f"{n}-{i}", "created": time.time(), "name": "x"})
                store.jobs()
        except BaseException as err:  # noqa: BLE001 - collected and re-raised below
            errors.append(err)

    threads = [threading.Thread(target=tab, args=(n,)) for n in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    jobs = store.jobs()
    assert len(jobs) == 100 and len({j["run"] for j in jobs}) == 100  # every job got its own run folder name
    assert len(store.datasets()) == 100
    assert sqlite3.connect(tmp_path / "pigeon.db").execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_a_worker_that_outlived_its_server_is_accounted_for_when_it_ends(tmp_path: Path) -> None:
    import subprocess
    import sys

    from pigeon.serve.jobs import JobRunner
    from pigeon.serve.store import Store

    store = Store(tmp_path / "pigeon.db")
    runner = JobRunner(store, tmp_path / "runs", slots=1)
    workers = []
    for ended_well in (True, False):
        job = store.add_job({"data": "digits"}, None, tmp_path / "runs", "pigeon-n")
        run_dir = Path(job["run_dir"])
        run_dir.mkdir(parents=True)
        if ended_well:
            (run_dir / "events.jsonl").write_text(json.dumps({"event": "done"}) + "\n")
        # a stand-in whose command line names the worker, alive when this server starts
        proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(1.5)", "pigeon.serve.worker"])
        store.update_job(job["id"], state="running", pid=proc.pid)
        workers.append((job["id"], proc, "done" if ended_well else "interrupted"))
    runner.start()
    try:
        assert [store.job(i)["state"] for i, _, _ in workers] == ["running", "running"]  # still training
        for job_id, proc, expected in workers:
            proc.wait(30)
            assert _until(lambda: store.job(job_id)["state"] != "running", 30) and \
                store.job(job_id)["state"] == expected  # noqa: B023 - waited on now
    finally:
        runner.stop()


def test_mixing_options_are_offered_and_checked_like_any_training_option(make_client: Any, h: Any) -> None:
    client = make_client()
    token = h.csrf(client)
    defaults = client.get("/api/v1/train-options").json()["defaults"]
    assert defaults["mixup"] == 0.0 and defaults["cutmix"] == 0.0  # the page shows them as off
    ds = client.post("/api/v1/datasets", json={"builtin": "digits"}, headers=token).json()
    bad = client.post("/api/v1/jobs", json={"dataset": ds["id"], "cutmix": -1}, headers=token)
    assert h.error(bad) == (422, "bad_parameter") and "cutmix" in bad.json()["error"]["message"]
    assert client.get("/api/v1/jobs").json() == []  # nothing was queued
