"""The child process of one training job: `python -m pigeon.serve.worker JOB.json`.

It trains with pigeon's own engine and appends every engine event as one JSON line to <run>/events.jsonl,
which the server streams to the page. It runs at lower CPU priority so the server keeps answering /predict
while it trains. SIGINT (Cancel, or the server stopping) ends it the way Ctrl-C ends `pigeon train`: the
run keeps a resumable state, and the exit status is 130.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any


def main(job_file: str) -> int:
    job = json.loads(Path(job_file).read_text())
    run_dir = Path(job["run_dir"])
    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        os.nice(10)
    except OSError:
        pass
    from pigeon.config import TrainConfig, build
    from pigeon.engine.train import train
    from pigeon.errors import PigeonError

    events = open(run_dir / "events.jsonl", "a", buffering=1)  # noqa: SIM115 - open for the whole run

    def emit(event: dict[str, Any]) -> None:
        event = {k: v for k, v in event.items() if k != "history"} | {"time": time.time()}
        events.write(json.dumps(event, default=str) + "\n")

    try:
        if job.get("resume"):
            cfg = build(TrainConfig, resume=str(run_dir))
        else:
            cfg = build(TrainConfig, **job["options"], project=str(run_dir.parent), name=run_dir.name,
                        exist_ok=True)
        train(cfg, emit)
        return 0
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except PigeonError as err:
        print(f"{type(err).__name__}: {err}", file=sys.stderr)
        return 1
    finally:
        events.close()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
