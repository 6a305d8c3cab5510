"""`pigeon audit`: what is in an image folder, and what is wrong with it, without changing a byte of it.

walk (files.py) -> look at each file once: hash, header, pixels (files.py) -> exact and near duplicate groups
(duplicates.py) -> label-error candidates from a cross-validated model (labels.py) -> report.json, report.md
with thumbnails, and a printed summary (report.py, markdown.py).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pigeon.audits import duplicates, labels
from pigeon.audits.files import Inspection, Listing, inspect, walk
from pigeon.audits.report import build, summary_lines
from pigeon.config import AuditConfig
from pigeon.errors import ConfigError, DatasetError
from pigeon.progress import progress

__all__ = ["AuditResult", "run"]

MIN_PER_FOLD = 5  # fewer held-out images per fold than this and the label check is skipped
WEAK_MODEL = 0.7  # out-of-fold top-1 under which the report warns that the candidates are weak evidence


@dataclass(frozen=True)
class AuditResult:
    """What `pigeon.audit()` returns: the report folder and the report itself."""

    dir: Path  # where report.json, report.md and thumbs/ were written
    report: dict[str, Any]  # the content of report.json

    @property
    def findings(self) -> list[dict[str, Any]]:
        return list(self.report["findings"])


def data_root(data: str) -> Path:
    """The folder to audit, refusing a built-in dataset name or a missing path with what to do instead."""
    from pigeon.data import BUILTINS

    root = Path(data).expanduser()
    if data in BUILTINS and not root.exists():
        raise DatasetError(f"{data!r} is a built-in dataset; pigeon audit checks image folders only. Give the path "
                           "of a folder laid out as root/<class>/... or root/{train,val,test}/<class>/...")
    if not root.exists():
        raise DatasetError(f"{data}: no such folder; give the image folder to audit (root/<class>/... or "
                           "root/{train,val,test}/<class>/...)")
    if not root.is_dir():
        raise DatasetError(f"{data} is a file, not a folder; give the folder that holds the class folders "
                           "(or train/, val/, test/)")
    return root


def report_target(cfg: AuditConfig, root: Path) -> Path:
    """Where the report goes: `out` as given, else runs/audit/<name>; refused when inside the data."""
    target = Path(cfg.out).expanduser() if cfg.out else Path("runs/audit") / root.resolve().name
    if target.resolve().is_relative_to(root.resolve()):
        raise ConfigError(f"the report folder {target} is inside the audited folder {root}; the audit never writes "
                          "into the data. Pass --out somewhere else, e.g. --out runs/audit/report")
    return target


def make_report_dir(target: Path, exact: bool) -> Path:
    """`out` is used as given (reports in it are replaced); the default folder is numbered when taken."""
    from pigeon.engine.train import make_run_dir

    if exact:
        target.mkdir(parents=True, exist_ok=True)
        return target
    return make_run_dir(str(target.parent), target.name, exist_ok=False)


def skip_reason(cfg: AuditConfig, labels_present: int, images: int) -> str | None:
    """Why the label check cannot run on this data, or None when it can."""
    if not cfg.label_check:
        return "turned off (--no-label-check)"
    if labels_present < 2:
        return f"it needs images of at least two classes; {labels_present} found"
    if images < MIN_PER_FOLD * cfg.folds:
        return (f"{images} readable images are too few for {cfg.folds} folds; it needs at least "
                f"{MIN_PER_FOLD * cfg.folds} (or pass a smaller --folds)")
    return None


def check_labels(cfg: AuditConfig, listing: Listing, insp: Inspection, device: torch.device | None) -> dict[str, Any]:
    """Out-of-fold predictions for every readable image, and the confident disagreements among them."""
    info: dict[str, Any] = {"ran": False, "model": cfg.model, "folds": cfg.folds, "epochs": cfg.epochs,
                            "imgsz": cfg.imgsz, "confidence": cfg.confidence, "candidates": []}
    y = np.array([e.label for e in insp.entries], dtype=np.int64)
    why = skip_reason(cfg, len(np.unique(y)), len(y))
    if why or device is None:
        return {**info, "skipped_because": why}
    channels = 1 if insp.gray.all() else 3
    bar = progress(cfg.folds, "label check: cross-validating", unit="fold", enabled=cfg.verbose)
    probs = labels.out_of_fold_probs(insp.pixels[:, :channels], y, len(listing.classes), model_name=cfg.model,
                                     folds=cfg.folds, epochs=cfg.epochs, batch=cfg.batch, seed=cfg.seed,
                                     device=device, tick=bar.update)
    bar.close()
    top1 = float((probs.argmax(1) == y).mean())
    found = []
    for i in labels.candidates(probs, y, cfg.confidence):
        e = insp.entries[i]
        found.append({"path": e.path.relative_to(listing.root).as_posix(), "split": e.split,
                      "given": listing.classes[e.label], "predicted": listing.classes[int(probs[i].argmax())],
                      "confidence": round(float(probs[i].max()), 4), "p_given": round(float(probs[i, e.label]), 4)})
    warning = (f"the cross-validated model reached only {top1:.1%} top-1, so its doubts are weak evidence; "
               "try more --epochs or a larger --imgsz") if top1 < WEAK_MODEL else None
    return {**info, "ran": True, "skipped_because": None, "device": str(device), "images": len(y),
            "out_of_fold_top1": round(top1, 4), "warning": warning, "candidates": found}


def run(cfg: AuditConfig) -> AuditResult:
    """Audit cfg.data and write the report; reads the data only."""
    from pigeon._version import __version__
    from pigeon.audits import markdown
    from pigeon.engine.device import select_device
    from pigeon.io import atomic_write_text, write_json
    from pigeon.models import check_model_name

    root = data_root(cfg.data)
    target = report_target(cfg, root)
    device = None
    if cfg.label_check:  # refuse a typo in the model or device before reading any image
        check_model_name(cfg.model)
        device = select_device(cfg.device)
    listing = walk(root)
    bar = progress(len(listing.entries), "auditing images", unit="img", enabled=cfg.verbose)
    insp = inspect(listing.entries, cfg.imgsz, lambda: bar.update(1))
    bar.close()
    exact = duplicates.exact_groups(insp.sha256)
    near = duplicates.near_groups(insp.signature, insp.sha256, cfg.near_threshold)
    label_info = check_labels(cfg, listing, insp, device)
    report = {"pigeon": __version__, **build(listing, insp, exact, near, label_info, asdict(cfg))}
    folder = make_report_dir(target, exact=cfg.out is not None)
    write_json(folder / "report.json", report)
    atomic_write_text(folder / "report.md", markdown.write(report, folder, cfg.thumbnails))
    if cfg.verbose:
        print("\n".join(summary_lines(report, folder)))
    return AuditResult(dir=folder, report=report)
