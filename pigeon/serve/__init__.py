"""`pigeon serve`: the no-code app and the REST API, from one command, on one machine.

Importing this package costs nothing: FastAPI, uvicorn and the model code load only when a server starts.
"""

from __future__ import annotations

import os
import secrets
import sys
from typing import Any

EXTRA_HINT = "pigeon serve needs its extra: pip install 'pigeon[serve]' (FastAPI, uvicorn, python-multipart, " \
             "prometheus-client)"


def serve(**options: Any) -> None:
    """Run the app and the API until interrupted; see `pigeon serve --help` (ServeConfig) for the options."""
    from pigeon.config import LOOPBACK_HOSTS, ServeConfig, build
    from pigeon.errors import ConfigError

    if not options.get("token") and os.environ.get("PIGEON_TOKEN"):
        options["token"] = os.environ["PIGEON_TOKEN"]
    if options.get("token") == "auto":
        options["token"] = secrets.token_urlsafe(24)
        announce_token = True
    else:
        announce_token = False
    config = build(ServeConfig, **options)
    try:
        import uvicorn

        from pigeon.serve.app import create_app
    except ImportError as err:
        raise ConfigError(f"{EXTRA_HINT} ({err})") from None
    app = create_app(config)
    shown = f"[{config.host}]" if ":" in config.host else config.host
    url = f"http://{'127.0.0.1' if config.host in ('0.0.0.0', '::') else shown}:{config.port}/"
    if config.verbose:
        where = "this machine only" if config.host in LOOPBACK_HOSTS else "the network (token required)"
        print(f"pigeon serve: {url} (reachable from {where}); home {config.home_path}; API docs {url}docs",
              file=sys.stderr)
        if announce_token:
            print(f"pigeon serve: open {url}?token={config.token}  (shown once; API calls need "
                  "'Authorization: Bearer <token>')", file=sys.stderr)
        if config.model:
            print(f"pigeon serve: serving {config.model} at {url}api/v1/predict", file=sys.stderr)
    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            # Open event streams end at once, so Ctrl-C does not wait on a page that is watching a job.
            app.state.ctx.jobs.stopping.set()
            super().handle_exit(sig, frame)

    Server(uvicorn.Config(app, host=config.host, port=config.port, log_level="warning",
                          timeout_graceful_shutdown=3, access_log=False)).run()
