"""The one error shape of the REST API: {"error": {"code": ..., "message": ...}} with a fitting status."""

from __future__ import annotations


class ApiError(Exception):
    """Raised by any route; the app turns it into JSON with this status (and headers, e.g. Retry-After)."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers or {}

    def body(self) -> dict[str, dict[str, str]]:
        return {"error": {"code": self.code, "message": self.message}}
