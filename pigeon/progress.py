"""Progress bars on long work: tqdm on a terminal or in logs, nothing when disabled."""

from __future__ import annotations

from typing import Any


class _Silent:
    def update(self, n: int = 1) -> None:
        pass

    def set_postfix_str(self, s: str, refresh: bool = True) -> None:
        pass

    def close(self) -> None:
        pass


def progress(total: int | None, desc: str, unit: str = "it", enabled: bool = True, **kw: Any) -> Any:
    if not enabled:
        return _Silent()
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True, leave=kw.pop("leave", True), **kw)
