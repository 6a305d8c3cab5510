"""What every part of the server shares: its configuration, its home folder and the services built on them.

create_app() fills one ServeContext; the routes of app.py (predict, health, metrics) and of workshop.py
(datasets, jobs, runs, exports) read what they need from it, so neither imports the other's internals.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pigeon.config import ServeConfig


@dataclass
class ServeContext:
    config: ServeConfig
    home: Path  # config.home_path, created
    csrf: str  # the per-server-start CSRF token the page sends back in X-CSRF-Token
    store: Any = None  # store.Store: the SQLite records (datasets, jobs)
    models: Any = None  # models.ModelRegistry: loaded, warm models by id
    jobs: Any = None  # jobs.JobRunner: the training queue and its child processes
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def runs_dir(self) -> Path:
        return self.home / "runs" / "train"

    @property
    def datasets_dir(self) -> Path:
        return self.home / "datasets"

    @property
    def db_path(self) -> Path:
        return self.home / "pigeon.db"
