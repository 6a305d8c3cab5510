"""The audit's findings as plain data (what report.json holds) and as a printed summary; markdown.py draws
report.md from the same data. Every finding says what to do about it. Paths are relative to the audited folder.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from pigeon.audits.files import Entry, Inspection, Listing
from pigeon.data.folders import SPLITS

MAX_ROWS = 200  # rows per Markdown table; report.json always holds everything
IMBALANCE_WARN = 3.0


def _file(listing: Listing, entry: Entry) -> dict[str, Any]:
    return {"path": entry.path.relative_to(listing.root).as_posix(), "split": entry.split,
            "class": listing.classes[entry.label]}


def _group(listing: Listing, insp: Inspection, rows: list[int]) -> dict[str, Any]:
    files = [_file(listing, insp.entries[i]) for i in rows]
    splits = sorted({f["split"] for f in files})
    classes = sorted({f["class"] for f in files})
    return {"files": files, "splits": splits, "classes": classes, "cross_split": len(splits) > 1,
            "conflicting_labels": len(classes) > 1}


def _ordered(groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Leaks first, then conflicting labels, then the largest groups."""
    return sorted(groups, key=lambda g: (not g["cross_split"], not g["conflicting_labels"], -len(g["files"])))


def counts(listing: Listing, insp: Inspection) -> dict[str, dict[str, int]]:
    splits = sorted({e.split for e in listing.entries}, key=SPLITS.index) or ["train"]
    table = {s: {c: 0 for c in listing.classes} for s in splits}
    for e in insp.entries:
        table[e.split][listing.classes[e.label]] += 1
    return table


def imbalance(per_class: dict[str, int]) -> dict[str, Any]:
    """Largest over smallest class count; None when a class has no readable image at all."""
    if not per_class:
        return {"ratio": None, "largest": None, "smallest": None}
    largest = max(per_class, key=lambda c: per_class[c])
    smallest = min(per_class, key=lambda c: per_class[c])
    ratio = per_class[largest] / per_class[smallest] if per_class[smallest] else None
    return {"ratio": None if ratio is None else round(ratio, 3), "largest": largest, "smallest": smallest}


def _spread(values: np.ndarray) -> dict[str, float] | None:
    if len(values) == 0:
        return None
    return {"min": float(values.min()), "median": float(np.median(values)), "max": float(values.max())}


def image_stats(insp: Inspection, imgsz: int) -> dict[str, Any]:
    """Sizes, modes, formats, channels and pixel statistics of the readable images."""
    n = len(insp.entries)
    sizes = Counter(f"{w}x{h}" for w, h in zip(insp.width.tolist(), insp.height.tolist()))
    px = insp.pixels.astype(np.float32) / 255.0 if n else np.zeros((0, 3, 1, 1), np.float32)
    # An RGB file whose three channels agree everywhere (on the audit's small copy) is grayscale in disguise.
    same = (px[:, 0] == px[:, 1]).all(axis=(1, 2)) & (px[:, 1] == px[:, 2]).all(axis=(1, 2))
    channels = 1 if n and insp.gray.all() else 3
    keep = px[:, :channels]
    aspect = insp.width / np.maximum(insp.height, 1) if n else np.zeros(0)
    return {
        "count": n, "width": _spread(insp.width), "height": _spread(insp.height),
        "sizes": [{"size": s, "n": k} for s, k in sizes.most_common(10)], "distinct_sizes": len(sizes),
        "aspect_ratio": _spread(aspect), "non_square": int((insp.width != insp.height).sum()),
        "smaller_than_imgsz": int(((insp.width < imgsz) | (insp.height < imgsz)).sum()),
        "file_bytes": _spread(insp.nbytes),
        "modes": dict(Counter(insp.mode).most_common()), "formats": dict(Counter(insp.format).most_common()),
        "grayscale": int(insp.gray.sum()), "rgb": int((~insp.gray).sum()),
        "rgb_but_gray": int((~insp.gray & same).sum()),
        "blank": int((np.abs(insp.signature).sum(1) == 0).sum()),
        "channels": channels,
        "mean": [round(float(v), 4) for v in keep.mean((0, 2, 3))] if n else [],
        "std": [round(float(v), 4) for v in keep.std((0, 2, 3))] if n else [],
        "stats_at": f"{imgsz}x{imgsz}, centre crop, in [0, 1] units",
    }


def build(listing: Listing, insp: Inspection, exact: list[list[int]], near: list[tuple[list[int], float]],
          label_check: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
    """Everything the audit found, as plain JSON-ready data, with `findings` saying what to do."""
    table = counts(listing, insp)
    exact_groups = _ordered([_group(listing, insp, rows) for rows in exact])
    near_groups = _ordered([{**_group(listing, insp, rows), "distance": round(d, 4)} for rows, d in near])
    unreadable = [{**_file(listing, e), "reason": why} for e, why in insp.unreadable]
    for entry, path, why in listing.skipped:
        unreadable.append({**_file(listing, entry), "reason": why} if entry is not None else
                          {"path": path.relative_to(listing.root).as_posix(), "split": None, "class": None,
                           "reason": why})
    report = {
        "data": str(listing.root), "layout": listing.layout, "classes": list(listing.classes),
        "splits": list(table), "config": config,
        "counts": {"images": len(insp.entries), "unreadable": len(unreadable), "per_split": table},
        "imbalance": {s: imbalance(per) for s, per in table.items()},
        "images": image_stats(insp, int(config["imgsz"])),
        "layout_problems": list(listing.problems),
        "unreadable": unreadable,
        "exact_duplicates": exact_groups,
        "near_duplicates": near_groups,
        "label_check": label_check,
    }
    report["findings"] = findings(report)
    return report


def _n_files_to_drop(groups: list[dict[str, Any]]) -> int:
    return sum(len(g["files"]) - 1 for g in groups)


def findings(r: dict[str, Any]) -> list[dict[str, Any]]:
    """One entry per kind of problem found, most serious first, each with a count and what to do."""
    out: list[dict[str, Any]] = []

    def add(kind: str, count: int, summary: str, advice: str) -> None:
        if count:
            out.append({"kind": kind, "count": count, "summary": summary, "advice": advice})

    add("layout", len(r["layout_problems"]), f"{len(r['layout_problems'])} layout problem(s) pigeon train refuses",
        "Fix the folder layout as each problem says; `pigeon train` stops on these.")
    leaks = [g for k in ("exact_duplicates", "near_duplicates") for g in r[k] if g["cross_split"]]
    exact_leaks = sum(g["cross_split"] for g in r["exact_duplicates"])
    add("leakage", len(leaks), f"{len(leaks)} duplicate group(s) span splits ({exact_leaks} exact, "
        f"{len(leaks) - exact_leaks} near): val/test scores are inflated",
        "Keep each group in one split: delete the val/test copies (keep the train one), or move the whole group "
        "into train. Re-measure afterwards; the old val/test figures counted these images as unseen.")
    conflicts = [g for k in ("exact_duplicates", "near_duplicates") for g in r[k] if g["conflicting_labels"]]
    add("conflicting_labels", len(conflicts), f"{len(conflicts)} duplicate group(s) carry different labels",
        "The same picture is filed under two classes: decide its class, keep one copy in that class folder and "
        "delete the others.")
    add("unreadable", len(r["unreadable"]), f"{len(r['unreadable'])} file(s) unreadable or not images",
        "pigeon train skips these and lists them; delete them, or re-export them from the source as PNG/JPEG.")
    lc = r["label_check"]
    n_cand = len(lc.get("candidates", []))
    add("label_candidates", n_cand, f"{n_cand} label-error candidate(s) (cross-validated {lc.get('model')}, "
        f"out-of-fold top-1 {lc.get('out_of_fold_top1') or 0:.1%})",
        "Look at each, least-believed label first: move a mislabelled file to its right class folder, delete one "
        "that shows no class, keep the rest. A candidate is a model's confident doubt, not a verdict.")
    # Groups that leak or disagree on labels were counted above; these are the plain copies within a split.
    within = [g for g in r["exact_duplicates"] if not g["cross_split"] and not g["conflicting_labels"]]
    add("exact_duplicates", len(within), f"{len(within)} group(s) of identical files within a split "
        f"({_n_files_to_drop(within)} redundant copies)",
        "Copies weigh those images more in training and in the scores: keep one file of each group (report.json "
        "lists them).")
    near_within = [g for g in r["near_duplicates"] if not g["cross_split"] and not g["conflicting_labels"]]
    add("near_duplicates", len(near_within), f"{len(near_within)} group(s) of near-identical images within a split",
        "Re-saved, resized or re-coloured copies of one picture: usually accidental; keep one of each group unless "
        "the variants are deliberate.")
    imb: dict[str, Any] = r["imbalance"].get("train") or next(iter(r["imbalance"].values()), {})
    ratio = imb.get("ratio")
    if ratio is None and imb.get("smallest") is not None:
        add("imbalance", 1, f"class {imb['smallest']!r} has no readable training image",
            "Add images of that class, or remove its folder.")
    elif ratio is not None and ratio >= IMBALANCE_WARN:
        add("imbalance", 1, f"classes are imbalanced: {imb['largest']!r} has {ratio:.1f}x the images of "
            f"{imb['smallest']!r}",
            "Collect more images of the small classes; meanwhile judge models by per-class recall and macro-F1 "
            "(`pigeon val` reports both) rather than top-1 alone.")
    img = r["images"]
    add("blank", img["blank"], f"{img['blank']} blank image(s) (a single colour)",
        "A blank image teaches nothing about its class: check and delete them.")
    add("rgb_but_gray", img["rgb_but_gray"] if img["rgb"] else 0,
        f"{img['rgb_but_gray']} RGB file(s) hold grayscale pixels",
        "pigeon trains on 3 channels when any file is RGB; if all your images are really grayscale, pass "
        "--channels 1 (a third of the input, same information).")
    if img["distinct_sizes"] > 1 and img["non_square"]:
        add("sizes", img["non_square"], f"{img['non_square']} non-square image(s); {img['distinct_sizes']} "
            "distinct sizes", "pigeon resizes to --imgsz with --resize crop (the default), which cuts the long "
            "side; pass --resize pad to keep each whole image.")
    return out


def summary_lines(r: dict[str, Any], out_dir: Path) -> list[str]:
    per = r["counts"]["per_split"]
    head = (f"audit of {r['data']}: {r['counts']['images']} readable images in "
            f"{', '.join(f'{s} {sum(c.values())}' for s, c in per.items())}; {len(r['classes'])} classes")
    lines = [head]
    lines += [f"  {f['summary']}" for f in r["findings"]] or ["  no problems found"]
    lc = r["label_check"]
    if not lc["ran"]:
        lines.append(f"  label check skipped: {lc['skipped_because']}")
    lines.append(f"report: {out_dir / 'report.md'} (and report.json)")
    return lines
