"""Nothing leaves the machine: every verb runs under `strace -f` and no thread may look up a name or connect
anywhere but loopback.

One traced process runs every verb in sequence through pigeon.cli.main (so imports and threads are shared the
way a long-lived Python caller would share them), on a folder of real digit images. Before each verb it makes a
marker system call (readlink of a path named after the verb), so each line of the trace is attributed to the
verb during which it happened; a poller records every thread's name from /proc while it lives. The process
lingers at the end long enough for onnxruntime's telemetry timer (about 9 s after its import) to have fired, so
a regression cannot pass just by exiting early. A canary (a UDP connect to a TEST-NET address and to port 53,
neither of which sends a packet) proves the trace would have caught a real lookup.

This file is also the traced program: `python tests/test_offline.py <workdir>` runs the verbs.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

MARKER_DIR = "/nonexistent-pigeon-offline-marker"
LINGER_AFTER_ORT_S = 12.0  # onnxruntime's 1DS upload thread resolved its collector ~9 s after import
CANARY = "canary"


def verbs(work: Path) -> list[tuple[str, list[str]]]:
    """(label, argv) for every verb, in the order they run. Paths are inside `work`, built by _prepare."""
    data, runs = str(work / "data"), str(work / "runs")
    best = str(work / "runs" / "t" / "weights" / "best.safetensors")
    onnx = str(work / "runs" / "t" / "weights" / "best.onnx")
    openvino = str(work / "runs" / "t" / "weights" / "best_openvino")
    source = str(work / "data" / "val")
    cpu = ["--device", "cpu"]
    return [
        ("train", ["train", "--data", data, "--model", "pigeon-n", "--epochs", "1", "--imgsz", "16", "--batch",
                   "16", "--project", runs, "--name", "t", "--no-verbose", "--amp", "off", *cpu]),
        ("val", ["val", "--model", best, "--data", data, "--project", str(work / "val"), "--name", "v", *cpu]),
        ("predict checkpoint", ["predict", "--model", best, "--source", source, *cpu]),
        ("export onnx", ["export", "--model", best, "--format", "onnx"]),
        ("export onnx --int8", ["export", "--model", best, "--format", "onnx", "--int8", "--calib-images", "32",
                                "--int8-max-drop", "1"]),
        ("export torchscript", ["export", "--model", best, "--format", "torchscript"]),
        ("export openvino", ["export", "--model", best, "--format", "openvino"]),
        ("predict onnx", ["predict", "--model", onnx, "--source", source, *cpu]),
        ("predict openvino", ["predict", "--model", openvino, "--source", source, *cpu]),
        # the PyTorch row only: bench's ONNX row is an export and an onnxruntime session, as traced above
        ("bench", ["bench", "--model", best, "--formats", "torch", "--runs", "50", "--warmup", "1",
                   "--throughput-seconds", "0.1", "--project", str(work / "bench"), "--name", "b"]),
        ("audit", ["audit", "--data", data, "--out", str(work / "audit"), "--folds", "2", "--epochs", "1",
                   "--imgsz", "16", "--batch", "16", *cpu]),
        ("models", ["models"]),
        ("models --filter", ["models", "--filter", "resnet1*"]),
        ("datasets", ["datasets"]),
        # the app and the API on a loopback port: the page, a dataset, a training job in its child process,
        # and a predict request (see _serve); the loopback connections are allowed, nothing else
        ("serve", ["serve"]),
    ]


# -- the traced program ------------------------------------------------------------------------------------------

def _mark(label: str) -> None:
    try:
        os.readlink(f"{MARKER_DIR}/{label.replace(' ', '_')}")
    except OSError:
        pass


def _canary() -> None:
    """Connect (never send) UDP sockets to a documentation address and to a port-53 resolver."""
    for address in (("192.0.2.1", 9), ("127.0.0.1", 53)):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.connect(address)


def _name_python_threads(names: dict[int, str]) -> None:
    """Every Python thread, however short-lived, records its name and target as it starts (Python threads all
    show as `python` in /proc)."""
    def hook(frame: object, event: str, arg: object) -> None:
        thread = threading.current_thread()
        target = getattr(thread, "_target", None)
        where = f", {target.__module__}.{target.__qualname__}" if callable(target) else ""
        names[threading.get_native_id()] = f"Python thread {thread.name!r}{where}"
        sys.setprofile(None)

    threading.setprofile(hook)


def _poll_thread_names(names: dict[int, str], stop: threading.Event) -> None:
    while not stop.is_set():
        for task in Path("/proc/self/task").iterdir():
            try:
                names.setdefault(int(task.name), f"native thread {(task / 'comm').read_text().strip()!r}")
            except OSError:
                pass  # the thread ended between listing and reading
        stop.wait(0.05)


def _serve(work: Path) -> int:
    """pigeon serve as a user meets it, driven over loopback HTTP: returns 0 when every call answered."""
    import http.client

    import uvicorn

    from pigeon.config import ServeConfig
    from pigeon.serve.app import create_app

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    best = work / "runs" / "t" / "weights" / "best.safetensors"
    app = create_app(ServeConfig(home=str(work / "serve-home"), port=port, model=str(best), verbose=False))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.02)

    def call(method: str, path: str, body: bytes | None = None, kind: str = "application/json") -> dict:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        conn.request(method, path, body, {"Content-Type": kind, "X-CSRF-Token": app.state.ctx.csrf})
        answer = conn.getresponse()
        data = answer.read()
        conn.close()
        if answer.status >= 300:
            raise RuntimeError(f"{method} {path}: {answer.status} {data[:300]!r}")
        return json.loads(data) if answer.headers.get("content-type", "").startswith("application/json") else {}

    try:
        call("GET", "/")
        dataset = call("POST", "/api/v1/datasets", json.dumps({"path": str(work / "data")}).encode())
        job = call("POST", "/api/v1/jobs", json.dumps({"dataset": dataset["id"], "epochs": 1, "imgsz": 16,
                                                        "batch": 16, "plots": False}).encode())
        deadline = time.monotonic() + 120
        while call("GET", f"/api/v1/jobs/{job['id']}")["state"] not in ("done", "failed"):
            if time.monotonic() > deadline:
                return 1
            time.sleep(0.2)
        image = next((work / "data" / "val").rglob("*.png")).read_bytes()
        answer = call("POST", "/api/v1/predict", image, kind="image/png")
        return 0 if answer["predictions"] and call("GET", f"/api/v1/jobs/{job['id']}")["state"] == "done" else 1
    finally:
        app.state.ctx.jobs.stopping.set()
        server.should_exit = True
        thread.join(30)


def child(work: Path) -> None:
    from pigeon.cli import main

    names: dict[int, str] = {threading.get_native_id(): "the main thread"}
    _name_python_threads(names)
    stop = threading.Event()
    poller = threading.Thread(target=_poll_thread_names, args=(names, stop), name="pigeon-poll", daemon=True)
    poller.start()
    results: dict[str, int] = {}
    seconds: dict[str, float] = {}
    _mark(CANARY)
    _canary()
    ort_since = None
    for label, argv in verbs(work):
        _mark(label)
        start = time.monotonic()
        results[label] = _serve(work) if label == "serve" else main(argv)
        seconds[label] = round(time.monotonic() - start, 2)
        if ort_since is None and "onnxruntime" in sys.modules:
            ort_since = time.monotonic()
    _mark("after every verb")
    if ort_since is not None:
        time.sleep(max(0.0, LINGER_AFTER_ORT_S - (time.monotonic() - ort_since)))
    stop.set()
    poller.join()
    (work / "child.json").write_text(json.dumps({"rc": results, "seconds": seconds, "threads": names}))


# -- reading the trace ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Contact:
    verb: str
    tid: int
    syscall: str
    family: str
    address: str
    port: int
    query: str | None  # the name asked for, when the packet is a DNS query

    @property
    def dns(self) -> bool:
        return self.port == 53 or self.family == "AF_UNIX"

    def describe(self, threads: dict[int, str], spawned: dict[int, tuple[int, str]] | None = None) -> str:
        what = f"a DNS query for {self.query}" if self.query else ("a DNS lookup" if self.dns else "a connection")
        where = self.address if self.family == "AF_UNIX" else f"{self.address}:{self.port}"
        return (f"during `pigeon {self.verb}`: {what} to {where} ({self.syscall}) from thread {self.tid} "
                f"({who(self.tid, threads, spawned or {})})")


def who(tid: int, threads: dict[int, str], spawned: dict[int, tuple[int, str]]) -> str:
    """A thread's name, or for one that ended unseen (or a forked process) who started it."""
    if tid in threads:
        return threads[tid]
    if tid in spawned:
        parent, kind = spawned[tid]
        return f"a {kind} started by {parent} ({who(parent, threads, spawned)})"
    return "name unknown: it ended before it was seen"


_CLONE = re.compile(r"^(\d+)\s+(?:<\.\.\. )?(clone3?|v?fork)\b(.*?)(?:= (\d+))?$")


def spawns(trace: str) -> dict[int, tuple[int, str]]:
    """{new tid: (the tid that created it, "thread" or "child process")} from the clone/fork lines of a trace."""
    flags: dict[int, str] = {}  # a call split by strace into "<unfinished ...>" and "<... resumed>" halves
    found = {}
    for line in trace.splitlines():
        m = _CLONE.match(line)
        if not m:
            continue
        tid = int(m.group(1))
        flags[tid] = flags.get(tid, "") + m.group(3)
        if m.group(4):
            found[int(m.group(4))] = (tid, "thread" if "CLONE_THREAD" in flags.pop(tid) else "child process")
    return found


_LINE = re.compile(r"^(\d+)\s+(?:<\.\.\. )?(connect|sendto|sendmmsg|readlink)\b(.*)$")
_INET = re.compile(r'sa_family=(AF_INET6?), sin6?_port=htons\((\d+)\).*?(?:inet_addr\("([^"]+)"\)|'
                   r'inet_pton\(AF_INET6, "([^"]+)")')
_UNIX = re.compile(r'sa_family=AF_UNIX, sun_path=(@?)"([^"]*)"')
_BYTES = re.compile(r'"((?:\\x[0-9a-f]{2})+)"')


def _dns_name(escaped: str) -> str | None:
    """The question of a DNS query packet, from strace's -x hex string (header, then length-prefixed labels)."""
    raw = bytes(int(h, 16) for h in re.findall(r"\\x([0-9a-f]{2})", escaped))
    labels, i = [], 12
    while 12 <= i < len(raw) and raw[i] != 0:
        n = raw[i]
        if n > 63 or i + 1 + n > len(raw):
            return None
        labels.append(raw[i + 1:i + 1 + n].decode("ascii", "replace"))
        i += 1 + n
    return ".".join(labels) or None


def _is_local(family: str, address: str, port: int) -> bool:
    if family == "AF_UNIX":
        return "resolve" not in address  # systemd-resolved's varlink socket answers host-name lookups
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    return (ip.is_loopback or ip.is_unspecified) and port != 53


def contacts(trace: str) -> list[Contact]:
    """Every non-local contact in an `strace -f -x` trace, attributed to the verb whose marker preceded it."""
    verb, found, connected = "(start-up)", [], {}  # fd -> (family, address, port) of non-local connects
    for line in trace.splitlines():
        m = _LINE.match(line)
        if not m:
            continue
        tid, syscall, rest = int(m.group(1)), m.group(2), m.group(3)
        if syscall == "readlink":
            marker = re.search(re.escape(MARKER_DIR) + r"/([^\"]+)", rest)
            if marker:
                verb = marker.group(1).replace("_", " ")
            continue
        fd = re.match(r"\((\d+),", rest)
        inet, unix = _INET.search(rest), _UNIX.search(rest)
        if inet:
            family, port, address = inet.group(1), int(inet.group(2)), inet.group(3) or inet.group(4)
        elif unix and syscall == "connect":
            family, port, address = "AF_UNIX", 0, unix.group(1) + unix.group(2)
        elif syscall != "connect" and fd and int(fd.group(1)) in connected:
            family, address, port = connected[int(fd.group(1))]  # sent on a socket connected earlier
        else:
            continue
        if _is_local(family, address, port):
            continue
        if syscall == "connect" and fd:
            connected[int(fd.group(1))] = (family, address, port)
        packet = _BYTES.search(rest) if syscall != "connect" else None
        found.append(Contact(verb, tid, syscall, family, address, port,
                             _dns_name(packet.group(1)) if packet and port == 53 else None))
    return found


# -- the tests -------------------------------------------------------------------------------------------------------

def test_contacts_parses_real_strace_lines() -> None:
    """The reader on lines strace printed for onnxruntime 1.32's telemetry lookup (before pigeon stopped it)."""
    packet = (b"\xd0\x9b\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x06mobile\x06events\x04data\x09microsoft"
              b"\x03com\x00\x00\x01\x00\x01")
    query = "".join(f"\\x{b:02x}" for b in packet)
    trace = "\n".join([
        '7978  readlink("/nonexistent-pigeon-offline-marker/export_onnx", 0x7ffd, 4096) = -1 ENOENT',
        '7978  connect(6, {sa_family=AF_UNIX, sun_path="/var/run/nscd/socket"}, 110) = -1 ENOENT',
        '7978  connect(7, {sa_family=AF_INET, sin_port=htons(8000), sin_addr=inet_addr("127.0.0.1")}, 16) = 0',
        '8100  connect(8, {sa_family=AF_INET, sin_port=htons(53), sin_addr=inet_addr("10.255.255.53")}, 16) = 0',
        f'8100  sendto(8, "{query}", 50, MSG_NOSIGNAL, NULL, 0) = 50',
        '7978  readlink("/nonexistent-pigeon-offline-marker/bench", 0x7ffd, 4096) = -1 ENOENT',
        '8200  connect(9, {sa_family=AF_INET6, sin6_port=htons(443), sin6_flowinfo=htonl(0), '
        'inet_pton(AF_INET6, "2001:db8::1", &sin6_addr), sin6_scope_id=0}, 28 <unfinished ...>',
        '8201  connect(3, {sa_family=AF_INET6, sin6_port=htons(80), sin6_flowinfo=htonl(0), '
        'inet_pton(AF_INET6, "::1", &sin6_addr), sin6_scope_id=0}, 28) = 0',
    ])
    found = contacts(trace)
    spawned = spawns("\n".join([
        "7978  clone3({flags=CLONE_VM|CLONE_FS|CLONE_FILES|CLONE_SIGHAND|CLONE_THREAD|CLONE_SYSVSEM, "
        "exit_signal=0, stack=0x7f, stack_size=0x7ff} <unfinished ...>",
        "7978  <... clone3 resumed> => {parent_tid=[8100]}, 88) = 8100",
        "8100  clone(child_stack=NULL, flags=CLONE_CHILD_CLEARTID|CLONE_CHILD_SETTID|SIGCHLD, "
        "child_tidptr=0x7f) = 8200",
    ]))
    assert spawned == {8100: (7978, "thread"), 8200: (8100, "child process")}
    assert who(8200, {7978: "the main thread"}, spawned) == (
        "a child process started by 8100 (a thread started by 7978 (the main thread))")
    assert [(c.verb, c.tid, c.syscall, c.address, c.port, c.query) for c in found] == [
        ("export onnx", 8100, "connect", "10.255.255.53", 53, None),
        ("export onnx", 8100, "sendto", "10.255.255.53", 53, "mobile.events.data.microsoft.com"),
        ("bench", 8200, "connect", "2001:db8::1", 443, None),
    ]
    assert found[1].describe({8100: "ort-1ds"}) == (
        "during `pigeon export onnx`: a DNS query for mobile.events.data.microsoft.com to 10.255.255.53:53 "
        "(sendto) from thread 8100 (ort-1ds)")


def test_no_verb_contacts_the_network(tmp_path: Path, digits_folder, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import pytest

    strace = shutil.which("strace")
    if strace is None:
        pytest.skip("strace is not installed (Debian: apt-get install strace; `make install` does it)")
    work = tmp_path / "work"
    digits_folder(work / "data", splits=("train", "val"), per_class={"train": 12, "val": 4}, size=16)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1]),
                                                          os.environ.get("PYTHONPATH", "")]),
           "HOME": str(tmp_path / "home"), "XDG_CACHE_HOME": str(tmp_path / "home" / ".cache"),
           "MPLCONFIGDIR": str(tmp_path / "mpl")}
    for var in ("ORT_DISABLE_TELEMETRY", "HF_HUB_OFFLINE", "PIGEON_OFFLINE", "CI"):
        env.pop(var, None)  # the test proves pigeon's own switches, not the machine's
    (tmp_path / "home").mkdir()
    trace_file = tmp_path / "trace.txt"
    # --seccomp-bpf stops the process only at the traced calls (2-3x faster); -x prints packets in hex
    calls = "trace=connect,sendto,sendmmsg,readlink,clone,clone3,fork,vfork"
    proc = subprocess.run([strace, "-f", "--seccomp-bpf", "-qq", "-x", "-s", "256", "-o", str(trace_file), "-e", calls,
                           sys.executable, __file__, str(work)],
                          env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((work / "child.json").read_text())
    threads = {int(k): v for k, v in report["threads"].items()}
    assert report["rc"] == {label: 0 for label, _ in verbs(work)}, proc.stdout[-3000:] + proc.stderr[-3000:]

    trace = trace_file.read_text()
    found, spawned = contacts(trace), spawns(trace)
    canaries = [c for c in found if c.verb == CANARY]
    assert [(c.address, c.port) for c in canaries] == [("192.0.2.1", 9), ("127.0.0.1", 53)]  # the trace sees them
    leaks = [c.describe(threads, spawned) for c in found if c.verb != CANARY]
    assert not leaks, "pigeon contacted the network:\n" + "\n".join(leaks)
    # and the libraries wrote nothing of theirs into the home (onnxruntime's device id, OpenVINO's client id)
    assert sorted(str(p.relative_to(tmp_path / "home")) for p in (tmp_path / "home").rglob("*")) == []


if __name__ == "__main__":
    child(Path(sys.argv[1]))
