"""`pigeon runs` and `pigeon compare`: what the run folders under runs/train hold, side by side.

Everything is read from the files a run writes (config.json, results.csv, summary.json); nothing is trained.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Any

from pigeon.errors import ConfigError, did_you_mean

OPTIONS = ("model", "data", "epochs", "batch", "imgsz", "optimizer", "lr", "weight_decay", "label_smoothing",
           "seed")
FIGURES = ("best_epoch", "epochs_run", "val_top1", "val_macro_f1", "val_loss", "test_top1", "test_macro_f1",
           "seconds")
COLUMNS = ("name", "status", *OPTIONS, *FIGURES)
HIGHER_IS_BETTER = ("top1", "top5", "macro_f1")


def _read_rows(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    with open(path, newline="") as fh:
        return [{k: (float(v) if v not in ("", None) else None) for k, v in row.items()} for row in csv.DictReader(fh)]


def is_run(path: Path) -> bool:
    return (path / "config.json").is_file() and ((path / "results.csv").is_file() or (path / "weights").is_dir())


def read_run(path: str | os.PathLike[str]) -> dict[str, Any]:
    """One run's key options and figures as a flat dict (COLUMNS), plus its path, config and epoch rows."""
    path = Path(path)
    if not is_run(path):
        raise ConfigError(f"{path}: not a training run folder (it needs config.json and results.csv, as "
                          "`pigeon train` writes them under runs/train/<name>)")
    config = json.loads((path / "config.json").read_text())
    rows = _read_rows(path / "results.csv")
    summary = json.loads((path / "summary.json").read_text()) if (path / "summary.json").is_file() else None
    run: dict[str, Any] = {"name": path.name, "path": str(path)}
    if summary is None:
        run["status"] = f"incomplete ({len(rows)} of {config.get('epochs')} epochs)"
    else:
        run["status"] = f"stopped: {summary['stopped']}" if summary.get("stopped") else "done"
    run.update({k: config.get(k) for k in OPTIONS})
    summary = summary or {}
    run["best_epoch"] = summary.get("best_epoch")
    run["epochs_run"] = summary.get("epochs_run", len(rows))
    for split in ("val", "test"):
        figures = summary.get(split) or {}
        for metric in ("top1", "macro_f1", "loss"):
            if f"{split}_{metric}" in FIGURES:
                run[f"{split}_{metric}"] = figures.get(metric)
    if not summary and rows:  # an unfinished run: its latest validation figures
        for key in ("val_top1", "val_macro_f1", "val_loss"):
            run[key] = rows[-1].get(key)
    run["seconds"] = summary.get("seconds", rows[-1].get("elapsed_seconds") if rows else None)
    run["config"], run["rows"] = config, rows
    return run


def sort_runs(runs: list[dict[str, Any]], key: str) -> list[dict[str, Any]]:
    """Best first for accuracy-like figures, smallest first otherwise; missing values last."""
    if key not in COLUMNS:
        raise ConfigError(f"cannot sort by {key!r}{did_you_mean(key, COLUMNS)}; choose one of {', '.join(COLUMNS)}")
    descending = key.endswith(HIGHER_IS_BETTER)
    present = [r for r in runs if r.get(key) is not None]
    missing = [r for r in runs if r.get(key) is None]
    try:
        ordered = sorted(present, key=lambda r: r[key], reverse=descending)
    except TypeError:  # mixed types: compare as text
        ordered = sorted(present, key=lambda r: str(r[key]), reverse=descending)
    return ordered + missing


def list_runs(project: str | os.PathLike[str] = "runs/train", sort: str | None = None) -> list[dict[str, Any]]:
    """Every run folder directly under `project`, oldest first (or sorted by a column; see sort_runs)."""
    project = Path(project)
    if not project.is_dir():
        raise ConfigError(f"{project}: no such folder; give the parent folder of run folders (--project)")
    folders = sorted((p for p in project.iterdir() if p.is_dir() and is_run(p)),
                     key=lambda p: ((p / "config.json").stat().st_mtime, p.name))
    runs = [read_run(p) for p in folders]
    return sort_runs(runs, sort) if sort else runs


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 1 else f"{value:.4g}"
    return str(value)


def text_table(runs: list[dict[str, Any]], columns: tuple[str, ...] = COLUMNS) -> str:
    """A plain aligned table for the terminal."""
    cells = [list(columns)] + [[_cell(r.get(c)) for c in columns] for r in runs]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip() for row in cells)


def markdown_table(runs: list[dict[str, Any]], columns: tuple[str, ...]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(r.get(c)).replace("|", "\\|") for c in columns) + " |" for r in runs]
    return "\n".join(lines)


def differing_options(runs: list[dict[str, Any]]) -> list[str]:
    """Config keys whose values are not the same in every run (the run-specific name/project/resume aside)."""
    keys = sorted(set().union(*(r["config"] for r in runs)) - {"name", "project", "resume", "exist_ok", "verbose"})
    return [k for k in keys if len({json.dumps(r["config"].get(k)) for r in runs}) > 1]


def compare(runs: list[str | os.PathLike[str]], out: str | os.PathLike[str] | None = None,
            verbose: bool = True) -> dict[str, Any]:
    """Write one table (compare.md, compare.json) and overlaid curves (curves.png) of the runs given.

    Returns {"dir", "runs" (rows), "differing" (option names)}. `out` defaults to runs/compare/compare(-N).
    """
    from pigeon.engine.train import make_run_dir
    from pigeon.io import atomic_write_text, write_json

    if len(runs) < 1:
        raise ConfigError("compare needs at least one run folder (runs/train/<name>)")
    read = [read_run(p) for p in runs]
    labels = [r["name"] for r in read]
    if len(set(labels)) < len(labels):  # same names in different projects: label by path instead
        for r in read:
            r["name"] = r["path"]
    differing = differing_options(read)
    out_dir = Path(out) if out else make_run_dir("runs/compare", "compare", False)
    out_dir.mkdir(parents=True, exist_ok=True)
    figures = ("name", "status", "best_epoch", "epochs_run", "val_top1", "val_macro_f1", "val_loss", "test_top1",
               "test_macro_f1", "seconds")
    text = "# Compared runs\n\n" + markdown_table(read, figures) + "\n"
    if differing:
        option_rows = [{"name": r["name"], **{k: r["config"].get(k) for k in differing}} for r in read]
        text += "\n## Options that differ\n\n" + markdown_table(option_rows, ("name", *differing)) + "\n"
    else:
        text += "\nEvery option is the same in all runs.\n"
    text += "\n![curves](curves.png)\n"
    atomic_write_text(out_dir / "compare.md", text)
    write_json(out_dir / "compare.json", {"runs": [{k: v for k, v in r.items() if k != "rows"} for r in read],
                                          "differing": differing})
    plot_overlay(read, out_dir / "curves.png")
    if verbose:
        print(text_table(read, figures))
        print(f"written to {out_dir}")
    return {"dir": out_dir, "runs": read, "differing": differing}


def plot_overlay(runs: list[dict[str, Any]], path: Path) -> Path:
    """Loss (train solid, validation dashed) and validation top-1 against epoch, one colour per run."""
    from matplotlib.figure import Figure

    from pigeon.plots import _save, _series

    fig = Figure(figsize=(11, 4.2), layout="constrained")
    loss_ax, acc_ax = fig.subplots(1, 2)
    for i, run in enumerate(runs):
        colour = f"C{i % 10}"
        split = "val" if any(row.get("val_loss") is not None for row in run["rows"]) else "test"
        for ax, key, style, label in ((loss_ax, "train_loss", "-", f"{run['name']} train"),
                                      (loss_ax, f"{split}_loss", "--", f"{run['name']} {split}"),
                                      (acc_ax, f"{split}_top1", "-", f"{run['name']} {split}")):
            xs, ys = _series(run["rows"], key)
            if xs:
                ax.plot(xs, ys, style, color=colour, marker="o" if len(xs) < 30 else None, markersize=3,
                        label=label)
    for ax, ylabel in ((loss_ax, "loss"), (acc_ax, "top-1")):
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if ax.get_lines():
            ax.legend(fontsize=7)
    return _save(fig, path)
