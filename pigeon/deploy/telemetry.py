"""Import the export runtimes without their usage telemetry: nothing of pigeon's leaves the machine.

Two of the export libraries phone home as soon as they are imported, whatever is then done with them
(found with `strace -f -k -e trace=connect,sendto,sendmmsg`, see tests/test_offline.py):

- onnxruntime (1.32 on Linux) starts Microsoft's 1DS telemetry when its native module loads: it writes a
  device id and an event database under ~/.cache/Microsoft/DeveloperTools/.onnxruntime and, about 9 s later,
  a native thread resolves mobile.events.data.microsoft.com to upload. `disable_telemetry_events()` comes too
  late; the library's own switch is the environment variable ORT_DISABLE_TELEMETRY, read once at load.
- openvino imports openvino.tools.ovc, which sends an "import" event to Google Analytics through the
  openvino-telemetry package (and more events from every convert_model, each from a forked process that
  resolves www.google-analytics.com), writing a client id under ~/intel, unless a consent file in the home
  says no. ovc falls back to its own bundled no-op stub when openvino-telemetry cannot be imported.

So the first import of each is made with the library's switch on, and everything set is put back at once:
ORT_DISABLE_TELEMETRY is set only for the import (and only if the user has not set it either way), and
openvino-telemetry is hidden only while openvino is imported (importing it afterwards works as before). Nothing
is written to the home. A library the caller had already imported is left exactly as the caller set it up.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
from collections.abc import Iterator
from types import ModuleType

ORT_SWITCH = "ORT_DISABLE_TELEMETRY"
OPENVINO_TELEMETRY = "openvino_telemetry"


@contextlib.contextmanager
def _env_default(name: str, value: str) -> Iterator[None]:
    """`name=value` inside the block unless the user chose a value; the environment is as before afterwards."""
    if name in os.environ:  # the user's own choice, in either direction, stands
        yield
        return
    os.environ[name] = value
    try:
        yield
    finally:
        os.environ.pop(name, None)


@contextlib.contextmanager
def _unimportable(module: str) -> Iterator[None]:
    """`import module` raises ImportError inside the block (None in sys.modules), as if it were not installed."""
    missing = object()
    saved = sys.modules.get(module, missing)
    sys.modules[module] = None  # type: ignore[assignment]
    try:
        yield
    finally:
        if saved is missing:
            sys.modules.pop(module, None)
        else:
            sys.modules[module] = saved  # type: ignore[assignment]


def import_quietly(package: str) -> ModuleType:
    """`import package`, with its telemetry off when pigeon is the one importing it (see the module docstring)."""
    loaded = sys.modules.get(package)
    if loaded is not None:  # (None there means "blocked": the import below raises ImportError, as it should)
        return loaded
    if package == "onnxruntime" or package.startswith("onnxruntime."):
        with _env_default(ORT_SWITCH, "1"):
            return importlib.import_module(package)
    if package == "openvino" or package.startswith("openvino."):
        with _unimportable(OPENVINO_TELEMETRY):
            return importlib.import_module(package)
    return importlib.import_module(package)
