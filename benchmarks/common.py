"""Shared by the benchmark scripts: machine facts, the git revision, and writing JSON + Markdown."""

from __future__ import annotations

import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
BENCHMARKS_MD = ROOT / "BENCHMARKS.md"


def machine() -> dict[str, Any]:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"cpu": cpu, "cpu_flags": cpu_flags(), "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "gpu": gpu,
            "python": platform.python_version(), "torch": torch.__version__, "platform": platform.platform()}


def cpu_flags() -> str:
    """The CPU features that decide pigeon's speed and precision (pigeon's own probe), and any oneDNN ISA limit."""
    from pigeon.engine.device import probe_cpu

    cpu = probe_cpu()
    return " ".join(cpu.flags) + (f", ONEDNN_MAX_CPU_ISA={cpu.isa_limit}" if cpu.isa_limit else "")


def cpu_table_suffix() -> str:
    """Which CPU kind a table speaks for, so that one machine's run never overwrites another kind's figures:
    '' on a CPU with native bf16, '-avx2' for such a CPU limited by ONEDNN_MAX_CPU_ISA=AVX2, and
    '-avx2-native' on a CPU that has AVX2 and no bf16 of its own (the most common x86 kind)."""
    from pigeon.engine.device import probe_cpu

    cpu = probe_cpu()
    if cpu.isa_limit:
        return f"-{cpu.isa_limit.lower()}"
    return "" if cpu.native_bf16 else "-avx2-native" if cpu.avx2 else "-fp32"


def write_png_folder(root: Path, classes: Any, splits: dict[str, tuple[Any, Any]]) -> Path:
    """Write uint8 arrays [N, C, H, W] (pigeon's layout; C is 1 or 3) or [N, H, W] as
    root/<split>/<class>/NNNNN.png; returns root."""
    import numpy as np
    from PIL import Image

    for split, (images, labels) in splits.items():
        for c in classes:
            (root / split / c).mkdir(parents=True, exist_ok=True)
        for i, (img, label) in enumerate(zip(images, labels)):
            img = np.asarray(img)
            if img.ndim == 3:  # CHW -> HW or HWC
                img = img[0] if img.shape[0] == 1 else img.transpose(1, 2, 0)
            Image.fromarray(img).save(root / split / classes[int(label)] / f"{i:05d}.png")
    return root


def git_revision() -> str:
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                             check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, check=True).stdout.strip()
        return rev + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def spread(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values),
            "mean": statistics.fmean(values), "n": len(values)}


def run_timed(cmd: list[str], env: dict[str, str] | None = None) -> tuple[float, str]:
    """Run a whole command, return (wall seconds, stdout); raise with its output if it fails."""
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **(env or {})})
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n"
                           f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return seconds, proc.stdout


def save(name: str, payload: dict[str, Any], table: str, stamp: dict[str, Any] | None = None) -> Path:
    """Write results/<name>.json and replace the <name> section of BENCHMARKS.md with `table`.

    `stamp` (git, machine, date, command of an earlier measurement) is kept when a table is only rebuilt.
    """
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = stamp or {"git": git_revision(), "machine": machine(),
                      "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "command": " ".join(sys.argv)}
    payload = {"benchmark": name, **stamp, **payload}
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2) + "\n")
    m = payload["machine"]
    section = (f"<!-- {name}:start -->\n{table.rstrip()}\n\n"
               f"Measured {payload['date']} at git {payload['git']} on {m['cpu']} ({m['cores']} cores"
               f"{'; flags ' + m['cpu_flags'] if m.get('cpu_flags') else ''}"
               f"{', ' + m['gpu'] if m['gpu'] else ''}), torch {m['torch']}, by `{payload['command']}`; "
               f"raw numbers in `benchmarks/results/{name}.json`.\n<!-- {name}:end -->")
    header = "# Benchmarks\n\nEvery figure below is written by a script in `benchmarks/`; re-run it to check.\n"
    text = BENCHMARKS_MD.read_text() if BENCHMARKS_MD.exists() else header
    pattern = re.compile(rf"<!-- {name}:start -->.*?<!-- {name}:end -->", re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _: section, text)
    else:
        text = text.rstrip() + f"\n\n## {name}\n\n{section}\n"
    BENCHMARKS_MD.write_text(text)
    return path
