"""Who may talk to the server: the Host guard against DNS rebinding, the bearer token, CSRF and Origin.

A web page on another site can make the browser send requests to 127.0.0.1; three checks stop it from doing
harm. Host must name this machine (a rebinding page's requests carry the attacker's host name). A state-changing
request must carry the per-start CSRF token, which only a page served by pigeon can read (no CORS headers are
ever sent). An Origin, when the browser sends one, must be this server's own. Off loopback a bearer token is
also required for every API call, since anyone on the network can reach the port.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable

from pigeon.config import LOOPBACK_HOSTS

UNSAFE_METHODS = {"POST", "PUT", "PATCH", "DELETE"}
PROTECTED_PREFIXES = ("/api/", "/metrics")


def host_name(host_header: str) -> str:
    """'127.0.0.1:8000' -> '127.0.0.1', '[::1]:8000' -> '::1', 'Example.COM' -> 'example.com'."""
    host = host_header.strip().lower()
    if host.startswith("["):
        return host[1:host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def allowed_hosts(bound: str, extra: Iterable[str]) -> set[str] | None:
    """The Host names accepted; None means any (--allow-host '*')."""
    extra = set(extra)
    if "*" in extra:
        return None
    return {*LOOPBACK_HOSTS, bound.lower(), *(h.lower() for h in extra)} - {"0.0.0.0", "::"}


def check_host(host_header: str | None, allowed: set[str] | None) -> str | None:
    """Why the request's Host is refused, or None."""
    if allowed is None:
        return None
    name = host_name(host_header or "")
    if name in allowed:
        return None
    return (f"Host {host_header!r} is not this server's name; pigeon answers only to "
            f"{', '.join(sorted(allowed))} (a DNS-rebinding guard). Start it with --allow-host {name or 'NAME'} "
            "to accept that name")


def check_token(authorization: str | None, token: str | None, query_token: str | None = None
                ) -> tuple[int, str, str] | None:
    """(status, code, message) when the bearer token is missing or wrong, else None. `query_token` is the
    ?token= of a GET: a browser's EventSource and <img> cannot send headers."""
    if not token:
        return None
    if query_token and not authorization:
        authorization = f"Bearer {query_token}"
    if not authorization or not authorization.lower().startswith("bearer "):
        return 401, "unauthorized", ("this server needs a token: send 'Authorization: Bearer <token>' (the token "
                                     "given to pigeon serve with --token or PIGEON_TOKEN)")
    if not hmac.compare_digest(authorization[7:].strip().encode(), token.encode()):
        return 403, "forbidden", "the bearer token is not this server's token"
    return None


def check_csrf(method: str, path: str, headers: dict[str, str], scheme: str, csrf: str) -> tuple[str, str] | None:
    """(code, message) when a state-changing request lacks the page's CSRF token or comes from another origin."""
    if method not in UNSAFE_METHODS or is_predict(path):
        return None
    origin = headers.get("origin")
    if origin is not None and origin.rstrip("/") != f"{scheme}://{headers.get('host', '')}":
        return "origin", (f"Origin {origin!r} is not this server ({scheme}://{headers.get('host', '')}); "
                          "requests that change state are accepted only from pigeon's own page")
    sent = headers.get("x-csrf-token", "")
    if not hmac.compare_digest(sent.encode(), csrf.encode()):
        return "csrf", ("this request changes state, so it needs the X-CSRF-Token header of pigeon's page (read it "
                        "from GET /api/v1/session)")
    return None


def is_predict(path: str) -> bool:
    """Predict changes nothing, and programs call it with curl: it needs no CSRF token."""
    return path == "/api/v1/predict" or (path.startswith("/api/v1/models/") and path.endswith("/predict"))


def is_protected(path: str) -> bool:
    return path.startswith(PROTECTED_PREFIXES)
