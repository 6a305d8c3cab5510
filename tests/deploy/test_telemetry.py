"""pigeon.deploy.telemetry: the runtimes are imported with their telemetry off, and nothing pigeon set stays set.

Each case runs in a fresh interpreter (a library imports once per process) with an empty HOME, because
onnxruntime writes its telemetry device id there the moment it loads and OpenVINO its client id: an empty home
right after the import is the proof, without waiting for the upload timers (tests/test_offline.py waits).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]


def _installed(*packages: str) -> None:
    """Skip unless installed, without importing them here (a plain import would start their telemetry in the
    test process itself)."""
    for package in packages:
        if importlib.util.find_spec(package) is None:
            pytest.skip(f"{package} is not installed (pip install 'pigeon[export]')")

PROBE = r"""
import json, os, sys
from pigeon.deploy.runtimes import need
before = dict(os.environ)
ort = need("onnxruntime")
ov = need("openvino")
from openvino.tools.ovc import convert_impl
import openvino_telemetry  # still importable by the caller afterwards
print(json.dumps({
    "env_unchanged": dict(os.environ) == before,
    "ovc_telemetry": convert_impl.tm.__name__,
    "openvino_telemetry_importable": openvino_telemetry.__name__,
    "again_same": need("onnxruntime") is ort and need("openvino") is ov,
}))
"""


def _probe(tmp_path: Path, code: str, **env: str) -> dict:
    home = tmp_path / "home"
    home.mkdir()
    full = {k: v for k, v in os.environ.items() if k not in ("ORT_DISABLE_TELEMETRY", "CI")}
    full.update(HOME=str(home), XDG_CACHE_HOME=str(home / ".cache"), PYTHONPATH=str(ROOT), **env)
    proc = subprocess.run([sys.executable, "-c", code], env=full, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["home"] = sorted(str(p.relative_to(home)) for p in home.rglob("*"))
    return result


def test_runtimes_load_without_telemetry_and_leave_the_process_as_it_was(tmp_path: Path) -> None:
    _installed("onnxruntime", "openvino")
    result = _probe(tmp_path, PROBE)
    assert result == {"env_unchanged": True, "ovc_telemetry": "openvino.tools.ovc.telemetry_stub",
                      "openvino_telemetry_importable": "openvino_telemetry", "again_same": True, "home": []}


def test_a_plain_onnxruntime_import_does_write_its_telemetry_id_into_the_home(tmp_path: Path) -> None:
    """The control, so the test above can fail: onnxruntime imported without pigeon writes its device id at
    once. The probe exits straight after, long before the upload timer; OpenVINO's control is not run here
    because its plain import sends its event to Google Analytics at once."""
    _installed("onnxruntime")
    result = _probe(tmp_path, "import os, onnxruntime; print('{}', flush=True); os._exit(0)")
    assert any(".onnxruntime/deviceid" in p for p in result["home"]), result["home"]


def test_a_users_own_onnxruntime_setting_is_left_alone(tmp_path: Path) -> None:
    _installed("onnxruntime")
    code = ("import json, os; from pigeon.deploy.runtimes import need; need('onnxruntime'); "
            "print(json.dumps({'value': os.environ.get('ORT_DISABLE_TELEMETRY')}))")
    assert _probe(tmp_path, code, ORT_DISABLE_TELEMETRY="0")["value"] == "0"
