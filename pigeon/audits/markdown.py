"""report.md: the audit as a page to read, with thumbnails of label candidates and duplicate groups.

Thumbnails are small PNGs in <out>/thumbs/, re-read from the data (read-only) for the few images shown.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pigeon.audits.report import MAX_ROWS
from pigeon.data.preprocess import open_image, to_standard_mode
from pigeon.io import atomic_path

THUMB = 96  # pixels, longer side
STRIP = 4  # members of a duplicate group drawn side by side
GROUP_FILES = 10  # members of a duplicate group listed in its table cell; report.json lists them all


def thumbnail(path: Path, size: int = THUMB) -> Any:
    """The image at `path` as an RGB PIL image whose longer side is `size`, or None when it cannot be read."""
    from PIL import Image

    try:
        img = to_standard_mode(open_image(path)).convert("RGB")
    except Exception:  # noqa: BLE001 - a file that changed or vanished since the audit read it: no thumbnail
        return None
    scale = size / max(img.size)
    # Small images are enlarged pixel by pixel so an 8x8 digit stays legible; large ones are filtered down.
    resample = Image.Resampling.NEAREST if scale > 1 else Image.Resampling.LANCZOS
    return img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))), resample)


def strip(paths: list[Path], size: int = THUMB, gap: int = 4) -> Any:
    """Thumbnails side by side on white: the members of one duplicate group."""
    from PIL import Image

    thumbs = [t for t in (thumbnail(p, size) for p in paths) if t is not None]
    if not thumbs:
        return None
    canvas = Image.new("RGB", (sum(t.width for t in thumbs) + gap * (len(thumbs) - 1), size), "white")
    x = 0
    for t in thumbs:
        canvas.paste(t, (x, (size - t.height) // 2))
        x += t.width + gap
    return canvas


def _save(img: Any, out_dir: Path, name: str) -> str | None:
    if img is None:
        return None
    (out_dir / "thumbs").mkdir(parents=True, exist_ok=True)
    with atomic_path(out_dir / "thumbs" / name) as tmp:
        img.save(tmp, format="PNG")
    return f"thumbs/{name}"


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows[:MAX_ROWS]]
    if len(rows) > MAX_ROWS:
        lines.append(f"\n... and {len(rows) - MAX_ROWS} more in report.json.")
    return lines


def _overview(r: dict[str, Any]) -> list[str]:
    lines = ["## Summary", ""]
    if not r["findings"]:
        return [*lines, "No problems found.", ""]
    rows = [[f["summary"], f["advice"]] for f in r["findings"]]
    return [*lines, *_table(["finding", "what to do"], rows), ""]


def _counts(r: dict[str, Any]) -> list[str]:
    per = r["counts"]["per_split"]
    rows = [[c, *(per[s][c] for s in per), sum(per[s][c] for s in per)] for c in r["classes"]]
    rows.append(["**total**", *(sum(per[s].values()) for s in per), r["counts"]["images"]])
    ratios = [f"{s}: {v['ratio']:.2f}x ({v['largest']} / {v['smallest']})" if v["ratio"] is not None else
              f"{s}: a class has no images" for s, v in r["imbalance"].items()]
    return ["## Files per class and split", "", *_table(["class", *per, "all"], rows), "",
            f"Readable images only; {r['counts']['unreadable']} unreadable file(s) are listed below. "
            f"Imbalance (largest / smallest class): {'; '.join(ratios)}.", ""]


def _images(r: dict[str, Any]) -> list[str]:
    s = r["images"]
    if not s["count"]:
        return []

    def span(d: dict[str, float] | None, fmt: str = "{:.0f}") -> str:
        return "-" if d is None else " / ".join(fmt.format(d[k]) for k in ("min", "median", "max"))

    rows = [["width (min / median / max)", span(s["width"])], ["height", span(s["height"])],
            ["aspect ratio w/h", span(s["aspect_ratio"], "{:.2f}")],
            ["most common sizes", ", ".join(f"{d['size']} ({d['n']})" for d in s["sizes"][:5])],
            ["distinct sizes", s["distinct_sizes"]], ["non-square", s["non_square"]],
            [f"smaller than {r['config']['imgsz']} px", s["smaller_than_imgsz"]],
            ["file size, bytes", span(s["file_bytes"])],
            ["modes (as stored)", ", ".join(f"{k} {v}" for k, v in s["modes"].items())],
            ["formats", ", ".join(f"{k} {v}" for k, v in s["formats"].items())],
            ["decoded as", f"grayscale {s['grayscale']}, RGB {s['rgb']} (of which {s['rgb_but_gray']} grayscale "
                           "in RGB form)"],
            ["blank (single colour)", s["blank"]],
            [f"channel mean / std ({s['channels']} channel(s))", f"{s['mean']} / {s['std']}"]]
    return ["## Images", "", *_table(["statistic", "value"], rows), "",
            f"Pixel statistics at {s['stats_at']}.", ""]


def _problems(r: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    if r["layout_problems"]:
        lines += ["## Layout problems", "", *[f"- {p}" for p in r["layout_problems"]], ""]
    if r["unreadable"]:
        rows = [[f"`{u['path']}`", u["reason"]] for u in r["unreadable"]]
        lines += ["## Unreadable files", "", "pigeon train skips these. Delete them, or re-export them from the "
                  "source.", "", *_table(["file", "reason"], rows), ""]
    return lines


def _groups(r: dict[str, Any], key: str, title: str, intro: str, out_dir: Path, limit: int) -> list[str]:
    groups = r[key]
    if not groups:
        return []
    root = Path(r["data"])
    rows = []
    for k, g in enumerate(groups):
        picture = _save(strip([root / f["path"] for f in g["files"][:STRIP]]), out_dir,
                        f"{key.split('_')[0]}-{k + 1:03d}.png") if k < limit else None
        files = "<br>".join(f"{f['split']}/{f['class']}: `{f['path']}`" for f in g["files"][:GROUP_FILES])
        if len(g["files"]) > GROUP_FILES:
            files += f"<br>... and {len(g['files']) - GROUP_FILES} more"
        what = ("**leak** across " + ", ".join(g["splits"]) if g["cross_split"] else f"within {g['splits'][0]}")
        if g["conflicting_labels"]:
            what += "; **labels differ**: " + ", ".join(g["classes"])
        if "distance" in g:
            what += f"; distance {g['distance']:.3f}"
        rows.append([k + 1, f"![group {k + 1}]({picture})" if picture else "", files, what])
    return [f"## {title}", "", intro, "", *_table(["#", "images", "files", "what"], rows), ""]


def _labels(r: dict[str, Any], out_dir: Path, limit: int) -> list[str]:
    lc = r["label_check"]
    lines = ["## Label-error candidates", ""]
    if not lc["ran"]:
        return [*lines, f"Not checked: {lc['skipped_because']}.", ""]
    lines += [f"{lc['model']} was trained {lc['folds']} times at {lc['imgsz']} px ({lc['epochs']} epochs each), "
              f"each time on all folds but one; every image was predicted by the model that did not see it "
              f"(out-of-fold top-1 {lc['out_of_fold_top1']:.1%} over {lc['images']} images). Listed: images whose "
              f"predicted class differs from their folder's with confidence >= {lc['confidence']}, least-believed "
              "label first. Move a mislabelled file to its right class folder; keep the ones that are right.", ""]
    if lc.get("warning"):
        lines += [f"**Note:** {lc['warning']}", ""]
    if not lc["candidates"]:
        return [*lines, "No candidates.", ""]
    root = Path(r["data"])
    rows = []
    for k, c in enumerate(lc["candidates"]):
        picture = _save(thumbnail(root / c["path"]), out_dir, f"label-{k + 1:03d}.png") if k < limit else None
        rows.append([k + 1, f"![candidate {k + 1}]({picture})" if picture else "", f"`{c['path']}`", c["split"],
                     c["given"], c["predicted"], f"{c['confidence']:.1%}", f"{c['p_given']:.1%}"])
    return [*lines, *_table(["rank", "image", "file", "split", "label", "model says", "confidence",
                             "p(label)"], rows), ""]


METHOD = """## How this was measured

- **Read only.** Every file was read, hashed and decoded in memory; nothing in the data folder was moved,
  deleted, rewritten or added, and no cache entry was written.
- **Exact duplicates**: identical SHA-256 of the file bytes.
- **Near duplicates**: the 63 lowest non-constant DCT coefficients of each image at 32x32 grayscale (what a
  64-bit pHash binarises), as a unit vector; two images whose vectors lie within `near_threshold` are grouped
  (union-find), and exact copies are counted once. This finds re-encoded, resized, blurred and brightness- or
  contrast-shifted copies; crops or shifts of more than a few percent, flips and rotations are not found.
  All pairs are compared: fine to about 50,000 images.
- **Label-error candidates**: k-fold cross-validation of a small model on all readable images of every split,
  decoded at `imgsz` with the default centre crop.
"""


def write(r: dict[str, Any], out_dir: Path, thumbnails: int) -> str:
    """The whole page as text; writes the thumbnails it links into out_dir/thumbs."""
    leak_intro = ("Groups are listed leaks first (the same picture in two splits inflates val/test scores), then "
                  "conflicting labels, then copies within a split.")
    lines = [f"# Data audit: `{r['data']}`", "",
             f"{r['counts']['images']} readable images, {len(r['classes'])} classes, layout "
             f"{'root/<split>/<class>/' if r['layout'] == 'splits' else 'root/<class>/'}; pigeon {r['pigeon']}.",
             "", *_overview(r), *_counts(r), *_images(r), *_problems(r),
             *_groups(r, "exact_duplicates", "Exact duplicates", leak_intro + " Identical bytes.", out_dir,
                      thumbnails),
             *_groups(r, "near_duplicates", "Near duplicates", leak_intro + " Same picture, different bytes; "
                      "the distance is the largest within the group (0 = identical).", out_dir, thumbnails),
             *_labels(r, out_dir, thumbnails), METHOD]
    return "\n".join(lines)
