"""Who may talk to the server: the DNS-rebinding Host guard, CSRF and Origin on state-changing calls, the
bearer token off loopback, and a server that will not start on the network without one."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest


def test_a_rebinding_page_gets_403(make_client: Any, h: Any) -> None:
    client = make_client()
    for path in ("/", "/api/v1/session", "/metrics"):
        assert h.error(client.get(path, headers={"host": "attacker.example"})) == (403, "bad_host")
    for host in ("localhost:8000", "127.0.0.1", "[::1]:8000"):
        assert client.get("/api/v1/session", headers={"host": host}).status_code == 200
    named = make_client(allow_host=("pigeon.lan",))
    assert named.get("/api/v1/session", headers={"host": "pigeon.lan:8000"}).status_code == 200
    anyone = make_client(allow_host=("*",))
    assert anyone.get("/api/v1/session", headers={"host": "whatever"}).status_code == 200


def test_state_changes_need_the_pages_csrf_token_and_origin(make_client: Any, h: Any) -> None:
    client = make_client()
    builtin = {"builtin": "nope"}  # refused by the route (422) only once the guard lets it through
    assert h.error(client.post("/api/v1/datasets", json=builtin)) == (403, "csrf")
    assert h.error(client.post("/api/v1/datasets", json=builtin, headers={"X-CSRF-Token": "guess"})) == (403, "csrf")
    token = h.csrf(client)
    assert h.error(client.post("/api/v1/datasets", json=builtin, headers={**token, "Origin": "http://evil.example"})) \
        == (403, "origin")
    own = {**token, "Origin": "http://127.0.0.1:8000"}
    assert h.error(client.post("/api/v1/datasets", json=builtin, headers=own)) == (422, "bad_parameter")
    assert h.error(client.delete("/api/v1/datasets/x")) == (403, "csrf")
    # the page carries the token in a meta tag; predict needs none (it changes nothing)
    assert token["X-CSRF-Token"] in client.get("/").text
    assert h.error(client.post("/api/v1/predict", content=b"x", headers={"content-type": "image/png"})) == \
        (404, "no_model")


def test_off_loopback_every_api_call_needs_the_bearer_token(make_client: Any, h: Any) -> None:
    from pigeon.config import ServeConfig, build
    from pigeon.errors import ConfigError

    with pytest.raises(ConfigError, match="needs a token"):
        build(ServeConfig, host="0.0.0.0")
    client = make_client(host="0.0.0.0", token="s3cret", allow_host=("127.0.0.1",))
    assert h.error(client.get("/api/v1/session")) == (401, "unauthorized")
    assert h.error(client.get("/api/v1/session", headers={"Authorization": "Bearer wrong"})) == (403, "forbidden")
    assert client.get("/api/v1/session", headers={"Authorization": "Bearer s3cret"}).json()["token_required"]
    assert client.get("/api/v1/session?token=s3cret").status_code == 200  # EventSource and <img> send no headers
    assert h.error(client.get("/metrics")) == (401, "unauthorized")
    assert client.get("/healthz").status_code == 200  # probes and the page itself hold no data
    assert client.get("/").status_code == 200


def test_the_cli_refuses_a_network_host_without_a_token(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "pigeon", "serve", "--host", "0.0.0.0", "--home", str(tmp_path)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "needs a token" in proc.stderr
    assert not list(tmp_path.iterdir())


def test_docs_and_page_work_offline(make_client: Any) -> None:
    import re

    client = make_client()
    docs = client.get("/docs").text
    schema = client.get("/openapi.json").json()
    assert schema["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    assert "/api/v1/predict" in schema["paths"]
    static = Path(__import__("pigeon.serve.app", fromlist=["STATIC"]).STATIC)
    for text in (docs, client.get("/").text, (static / "app.js").read_text(), (static / "docs.js").read_text()):
        assert not re.search(r"""(src|href)\s*=\s*["']?https?://""", text), "an asset from another host"
        assert "//cdn" not in text
    for src in re.findall(r'(?:src|href)="(/static/[^"]+)"', docs + client.get("/").text):
        assert client.get(src).status_code == 200, src
    assert "validatorUrl: null" in (static / "docs.js").read_text()  # Swagger UI's badge would call out
