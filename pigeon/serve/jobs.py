"""Training jobs: a queue in SQLite, one child process per running job, and the events a page watches.

A runner thread starts queued jobs (ctx.config.jobs at a time) as `python -m pigeon.serve.worker`, each in its
own session so a Ctrl-C at the server's terminal does not reach it, and reaps them: exit 0 is done, 130
(SIGINT) is cancelled (or interrupted, when the server itself is stopping), anything else is failed with the
last line the child printed. A job recorded as running whose process is gone when the server starts was cut
off by a restart or a crash: it becomes interrupted, and Resume continues it with `--resume` exactly.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from pigeon.serve.errors import ApiError
from pigeon.serve.store import FINAL_STATES, Store

POLL_S = 0.2


def _alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    try:  # a recycled pid is some other program: only our worker counts
        return b"pigeon.serve.worker" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return True


def last_line(path: Path) -> str:
    try:
        lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    errors = [ln for ln in lines if "Error" in ln or "error" in ln]
    return (errors or lines or [""])[-1][-500:]


class JobRunner:
    def __init__(self, store: Store, runs_dir: Path, slots: int, on_done: Any = None) -> None:
        self.store, self.runs_dir, self.slots, self.on_done = store, runs_dir, slots, on_done
        self._children: dict[int, subprocess.Popen[bytes]] = {}
        self._cancelled: set[int] = set()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self.stopping = threading.Event()

    # -- lifecycle
    def start(self) -> None:
        for job in self.store.jobs("running"):
            if not _alive(job["pid"]):
                self.store.update_job(job["id"], state="interrupted", ended=time.time(), pid=None,
                                      error="the server stopped while this job ran; Resume continues it")
        self._thread = threading.Thread(target=self._loop, name="pigeon-jobs", daemon=True)
        self._thread.start()

    def stop(self, wait_s: float = 20.0) -> None:
        """Interrupt running children (they keep a resumable state) and mark them interrupted."""
        self.stopping.set()
        with self._lock:
            children = dict(self._children)
        for proc in children.values():
            _signal(proc, signal.SIGINT)
        deadline = time.monotonic() + wait_s
        for job_id, proc in children.items():
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _signal(proc, signal.SIGKILL)
                proc.wait()
            self.store.update_job(job_id, state="interrupted", ended=time.time(), pid=None,
                                  error="the server stopped while this job ran; Resume continues it")
        if self._thread is not None:
            self._thread.join(5)

    # -- requests
    def submit(self, options: dict[str, Any], dataset: str | None) -> dict[str, Any]:
        from pigeon.engine.recipe import AUTO_MODEL, recipe_for

        model = str(options.get("model") or AUTO_MODEL)
        if model == AUTO_MODEL and not options.get("weights"):  # name the run after what the recipe will train
            model = recipe_for(str(options.get("device") or "auto"), str(options.get("amp") or "auto")).model
        return self.store.add_job(options, dataset, self.runs_dir, model)

    def cancel(self, job_id: int) -> dict[str, Any]:
        job = self._job(job_id)
        if job["state"] == "queued":
            self.store.update_job(job_id, state="cancelled", ended=time.time())
        elif job["state"] == "running":
            with self._lock:
                proc = self._children.get(job_id)
                self._cancelled.add(job_id)
            if proc is not None:
                _signal(proc, signal.SIGINT)
            elif job["pid"] and _alive(job["pid"]):
                os.killpg(job["pid"], signal.SIGINT)
        else:
            raise ApiError(409, "conflict", f"job {job_id} is {job['state']}; only a queued or running job can be "
                           "cancelled")
        return self._job(job_id)

    def resume(self, job_id: int) -> dict[str, Any]:
        job = self._job(job_id)
        if job["state"] not in ("interrupted", "cancelled", "failed"):
            raise ApiError(409, "conflict", f"job {job_id} is {job['state']}; only an interrupted, cancelled or "
                           "failed job can be resumed")
        if not (Path(job["run_dir"]) / "weights" / "last.state.pt").is_file():
            raise ApiError(409, "conflict", f"job {job_id} stopped before its first epoch ended, so there is "
                           "nothing to resume; start it again")
        self.store.update_job(job_id, state="queued", resume=1, error=None, ended=None)
        return self._job(job_id)

    def _job(self, job_id: int) -> dict[str, Any]:
        job = self.store.job(job_id)
        if job is None:
            raise ApiError(404, "not_found", f"no job {job_id}; GET /api/v1/jobs lists them")
        return job

    # -- the runner thread
    def _loop(self) -> None:
        while not self.stopping.is_set():
            try:
                self._reap()
                while not self.stopping.is_set() and len(self._children) < self.slots:
                    job = self.store.claim_next(self.slots)
                    if job is None:
                        break
                    self._spawn(job)
            except Exception as err:  # noqa: BLE001 - the runner must outlive any one bad job
                print(f"pigeon serve: job runner: {type(err).__name__}: {err}", file=sys.stderr)
            self.stopping.wait(POLL_S)

    def _spawn(self, job: dict[str, Any]) -> None:
        run_dir = Path(job["run_dir"])
        run_dir.mkdir(parents=True, exist_ok=True)
        spec = run_dir / "serve-job.json"
        spec.write_text(json.dumps({"options": job["options"], "run_dir": str(run_dir), "resume": job["resume"]}))
        log = open(run_dir / "serve.log", "ab")  # noqa: SIM115 - the child owns it from here
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "TQDM_MININTERVAL": "5"}
        proc = subprocess.Popen([sys.executable, "-m", "pigeon.serve.worker", str(spec)], stdout=log,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                                env=env)
        log.close()
        with self._lock:
            self._children[job["id"]] = proc
        self.store.update_job(job["id"], pid=proc.pid)

    def _reap(self) -> None:
        with self._lock:
            finished = [(i, p) for i, p in self._children.items() if p.poll() is not None]
            ours = set(self._children)
        # A worker that outlived an earlier server (a crash, or a second server on this home) is not our child:
        # there is no exit status to read, so its own events say how it ended once its process is gone.
        for job in self.store.jobs("running"):
            if job["id"] not in ours and job["pid"] and not _alive(job["pid"]):
                ended = any(e.get("event") == "done" for _, e in read_events(Path(job["run_dir"]), 0))
                self.store.update_job(job["id"], state="done" if ended else "interrupted", ended=time.time(),
                                      pid=None, error=None if ended else "the training process ended while no "
                                      "server watched it; Resume continues from its last finished epoch")
        for job_id, proc in finished:
            if self.stopping.is_set():
                return  # stop() records these as interrupted
            with self._lock:
                self._children.pop(job_id, None)
                cancelled = job_id in self._cancelled
                self._cancelled.discard(job_id)
            job = self._job(job_id)
            log = Path(job["run_dir"]) / "serve.log"
            if proc.returncode == 0:
                state, error = "done", None
            elif cancelled:
                state, error = "cancelled", "cancelled; Resume continues from the last finished epoch"
            else:
                why = last_line(log) or f"exit status {proc.returncode}"
                signame = signal.Signals(-proc.returncode).name if proc.returncode < 0 else None
                state, error = "failed", (f"the training process was killed ({signame}); " if signame else "") + why
            self.store.update_job(job_id, state=state, error=error, ended=time.time(), pid=None)
            if state == "done" and self.on_done is not None:
                self.on_done(job)


def _signal(proc: subprocess.Popen[bytes], sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except OSError:
        pass


def read_events(run_dir: Path, after: int) -> list[tuple[int, dict[str, Any]]]:
    """Events of a run after event number `after` (numbered from 1), as (id, event)."""
    path = run_dir / "events.jsonl"
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return []
    out = []
    for i, line in enumerate(lines[after:], start=after + 1):
        try:
            out.append((i, json.loads(line)))
        except json.JSONDecodeError:
            break  # a line being written right now: read it next time
    return out


def is_final(state: str) -> bool:
    return state in FINAL_STATES
