"""The app's records in one SQLite file under the home: datasets and training jobs.

Every operation opens its own connection (WAL journal, busy timeout), so two browser tabs, the job runner's
thread and a second server process can use the file at once; SQLite serialises the writers. Run folders are
not in the database: they stay ordinary folders the CLI reads, and the app lists them from disk.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS datasets (id TEXT PRIMARY KEY, created REAL NOT NULL, record TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT, created REAL NOT NULL, state TEXT NOT NULL, run TEXT NOT NULL,
    run_dir TEXT NOT NULL, options TEXT NOT NULL, dataset TEXT, started REAL, ended REAL, error TEXT,
    pid INTEGER, resume INTEGER NOT NULL DEFAULT 0);
"""
JOB_STATES = ("queued", "running", "done", "failed", "cancelled", "interrupted")
FINAL_STATES = ("done", "failed", "cancelled", "interrupted")


class Store:
    def __init__(self, path: Path) -> None:
        self.path = path
        with self._connect() as db:
            db.executescript(SCHEMA)

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        try:
            db.row_factory = sqlite3.Row
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA busy_timeout=30000")
            yield db
        finally:
            db.close()

    # -- datasets
    def put_dataset(self, record: dict[str, Any]) -> None:
        with self._connect() as db:
            db.execute("INSERT OR REPLACE INTO datasets VALUES (?, ?, ?)",
                       (record["id"], record.get("created", time.time()), json.dumps(record)))

    def dataset(self, dataset_id: str) -> dict[str, Any] | None:
        with self._connect() as db:
            row = db.execute("SELECT record FROM datasets WHERE id = ?", (dataset_id,)).fetchone()
        return json.loads(row["record"]) if row else None

    def datasets(self) -> list[dict[str, Any]]:
        with self._connect() as db:
            rows = db.execute("SELECT record FROM datasets ORDER BY created DESC").fetchall()
        return [json.loads(r["record"]) for r in rows]

    def delete_dataset(self, dataset_id: str) -> None:
        with self._connect() as db:
            db.execute("DELETE FROM datasets WHERE id = ?", (dataset_id,))

    # -- jobs
    def add_job(self, options: dict[str, Any], dataset: str | None, runs_dir: Path, model: str) -> dict[str, Any]:
        """A queued job whose run folder name is fixed now, so the job always knows where its run is."""
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            cur = db.execute("INSERT INTO jobs (created, state, run, run_dir, options, dataset) VALUES "
                             "(?, 'queued', '', '', ?, ?)", (time.time(), json.dumps(options), dataset))
            job_id = int(cur.lastrowid or 0)
            safe = "".join(c if c.isalnum() or c in "-_" else "-" for c in model)
            run = f"job-{job_id}-{safe}"
            db.execute("UPDATE jobs SET run = ?, run_dir = ? WHERE id = ?", (run, str(runs_dir / run), job_id))
            db.execute("COMMIT")
        job = self.job(job_id)
        assert job is not None
        return job

    def job(self, job_id: int) -> dict[str, Any] | None:
        with self._connect() as db:
            row = db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return _job(row) if row else None

    def jobs(self, state: str | None = None) -> list[dict[str, Any]]:
        with self._connect() as db:
            rows = (db.execute("SELECT * FROM jobs WHERE state = ? ORDER BY id", (state,)) if state else
                    db.execute("SELECT * FROM jobs ORDER BY id DESC")).fetchall()
        return [_job(r) for r in rows]

    def update_job(self, job_id: int, **fields: Any) -> None:
        keys = ", ".join(f"{k} = ?" for k in fields)
        with self._connect() as db:
            db.execute(f"UPDATE jobs SET {keys} WHERE id = ?", (*fields.values(), job_id))  # noqa: S608 - keys are ours

    def claim_next(self, running_limit: int) -> dict[str, Any] | None:
        """Move the oldest queued job to running if fewer than running_limit run; atomic across processes."""
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            running = db.execute("SELECT COUNT(*) FROM jobs WHERE state = 'running'").fetchone()[0]
            row = db.execute("SELECT id FROM jobs WHERE state = 'queued' ORDER BY id LIMIT 1").fetchone()
            if row is None or running >= running_limit:
                db.execute("COMMIT")
                return None
            db.execute("UPDATE jobs SET state = 'running', started = ?, error = NULL, ended = NULL WHERE id = ?",
                       (time.time(), row["id"]))
            db.execute("COMMIT")
        return self.job(int(row["id"]))


def _job(row: sqlite3.Row) -> dict[str, Any]:
    job = dict(row)
    job["options"] = json.loads(job["options"])
    job["resume"] = bool(job["resume"])
    return job
