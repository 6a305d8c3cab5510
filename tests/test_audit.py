"""`pigeon audit` on real digit images with planted problems: duplicates, leaks, label flips, bad files.

One planted dataset is audited once (label check included) and shared by the tests of this module; the
audit must find every planted exact duplicate, at least 90% of near duplicates, flag every cross-split copy
as a leak, rank planted label flips first, and leave every byte and listing of the data folder as it was.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image, ImageEnhance

import pigeon
from pigeon.audits import duplicates, labels
from pigeon.audits.files import SIGNATURE_SIZE, signature
from pigeon.cli import main
from pigeon.errors import ConfigError, DatasetError

CLASSES = ("zero", "one", "two", "three")
EDITS = ("jpeg90", "resize+1px", "brightness+12", "contrast0.9", "scale75%")
FAST = {"epochs": 8, "folds": 3, "imgsz": 16, "batch": 64, "device": "cpu", "verbose": False}


def digit_image(pixels: np.ndarray, size: int = 16) -> Image.Image:
    return Image.fromarray(pixels, "L").resize((size, size), Image.BILINEAR)


def edited(img: Image.Image, kind: str) -> tuple[bytes, str]:
    """An edited copy as file bytes: a different file showing the same picture."""
    buf = io.BytesIO()
    if kind == "jpeg90":
        img.convert("RGB").save(buf, "JPEG", quality=90)
        return buf.getvalue(), ".jpg"
    out = {"resize+1px": lambda: img.resize((img.width + 1, img.height + 1), Image.BILINEAR),
           "brightness+12": lambda: Image.fromarray(np.clip(np.asarray(img, np.int16) + 12, 0, 255).astype(np.uint8)),
           "contrast0.9": lambda: ImageEnhance.Contrast(img).enhance(0.9),
           "scale75%": lambda: img.resize((12, 12), Image.LANCZOS)}[kind]()
    out.save(buf, "PNG")
    return buf.getvalue(), ".png"


def snapshot(root: Path) -> dict[str, Any]:
    """Every folder's listing and every file's bytes (hashed), mtime and mode under root."""
    state: dict[str, Any] = {}
    for top, dirs, files in os.walk(root):
        state[top] = sorted(dirs + files)
        for name in files:
            path = Path(top) / name
            st = path.stat()
            state[str(path)] = (hashlib.sha256(path.read_bytes()).hexdigest(), st.st_mtime_ns, st.st_mode)
    return state


@dataclass(frozen=True)
class Planted:
    root: Path
    exact: list[tuple[str, str]]  # (original, copy) within train
    near: list[tuple[str, str]]
    leaks: list[tuple[str, str, str]]  # (train original, test copy, "exact"|"near")
    flips: list[str]  # images moved into a wrong class folder
    conflict: tuple[str, str]  # one image copied into another class folder
    before: dict[str, Any]
    result: Any
    cache: Path


def write_planted(root: Path, digits: tuple[np.ndarray, np.ndarray]) -> dict[str, Any]:
    """40 train + 12 test real digits per class (0-3) at 16 px, then the planted problems."""
    pixels, targets = digits
    rng = np.random.default_rng(0)
    originals: dict[str, Image.Image] = {}
    for c, name in enumerate(CLASSES):
        samples = np.flatnonzero(targets == c)
        for split, chunk in (("train", samples[:40]), ("test", samples[40:52])):
            (root / split / name).mkdir(parents=True, exist_ok=True)
            for i in chunk:
                rel = f"{split}/{name}/{i:04d}.png"
                originals[rel] = digit_image(pixels[i])
                originals[rel].save(root / rel)
    train = sorted(p for p in originals if p.startswith("train/"))
    pick = iter(rng.permutation(train).tolist())
    plan: dict[str, Any] = {"exact": [], "near": [], "leaks": [], "flips": []}
    for n in range(6):  # byte copies within train
        src = next(pick)
        copy = src.replace(".png", f"-copy{n}.png")
        shutil.copyfile(root / src, root / copy)
        plan["exact"].append((src, copy))
    for n in range(10):  # edited copies within train, two of each edit
        src = next(pick)
        data, ext = edited(originals[src], EDITS[n % len(EDITS)])
        copy = src.replace(".png", f"-near{n}{ext}")
        (root / copy).write_bytes(data)
        plan["near"].append((src, copy))
    for n in range(6):  # train images copied into test: half byte copies, half edited
        src = next(pick)
        cls = src.split("/")[1]
        if n % 2 == 0:
            copy = f"test/{cls}/leak{n}.png"
            shutil.copyfile(root / src, root / copy)
        else:
            data, ext = edited(originals[src], EDITS[n % len(EDITS)])
            copy = f"test/{cls}/leak{n}{ext}"
            (root / copy).write_bytes(data)
        plan["leaks"].append((src, copy, "exact" if n % 2 == 0 else "near"))
    for n in range(6):  # label flips: moved into another class folder
        src = next(pick)
        cls = src.split("/")[1]
        wrong = CLASSES[(CLASSES.index(cls) + 1 + n % 3) % len(CLASSES)]
        moved = f"train/{wrong}/moved{n}.png"
        shutil.move(root / src, root / moved)
        plan["flips"].append(moved)
    src = next(pick)
    cls = src.split("/")[1]
    other = CLASSES[(CLASSES.index(cls) + 1) % len(CLASSES)]
    plan["conflict"] = (src, f"train/{other}/same-as-{Path(src).stem}.png")
    shutil.copyfile(root / src, root / plan["conflict"][1])
    # Files that are not usable images.
    (root / "train/zero/empty.png").write_bytes(b"")
    (root / "train/one/text.png").write_bytes(b"this is not a png")
    good = (root / "train/two" / sorted(os.listdir(root / "train/two"))[0]).read_bytes()
    (root / "train/two/truncated.png").write_bytes(good[: len(good) // 2])
    (root / "train/three/notes.txt").write_text("labelling notes")
    (root / "train/stray.png").write_bytes(good)
    return plan


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory, digits_arrays: tuple[np.ndarray, np.ndarray]) -> Planted:
    base = tmp_path_factory.mktemp("audit")
    root = base / "digits"
    plan = write_planted(root, digits_arrays)
    before = snapshot(root)
    cache = base / "cache"
    cache.mkdir()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PIGEON_CACHE_DIR", str(cache))
        result = pigeon.audit(str(root), out=str(base / "report"), **FAST)
    return Planted(root=root, before=before, result=result, cache=cache, **plan)


def groups_with(groups: list[dict[str, Any]], a: str, b: str) -> list[dict[str, Any]]:
    return [g for g in groups if {a, b} <= {f["path"] for f in g["files"]}]


def test_the_audit_reads_only(planted: Planted) -> None:
    assert snapshot(planted.root) == planted.before
    assert not any(planted.cache.iterdir())  # no cache entry anywhere, let alone beside the images
    assert not planted.result.dir.resolve().is_relative_to(planted.root.resolve())


def test_every_exact_duplicate_is_found(planted: Planted) -> None:
    groups = planted.result.report["exact_duplicates"]
    for src, copy in planted.exact:
        (group,) = groups_with(groups, src, copy)
        assert not group["cross_split"] and not group["conflicting_labels"]
        assert group["splits"] == ["train"]


def test_near_duplicates_are_found_and_exact_copies_not_double_counted(planted: Planted) -> None:
    near = planted.result.report["near_duplicates"]
    found = [bool(groups_with(near, src, copy)) for src, copy in planted.near]
    assert sum(found) / len(found) >= 0.9, list(zip(planted.near, found))
    for g in near:  # a near group shows at least two different files' contents, never only byte copies
        assert len({(planted.root / f["path"]).read_bytes() for f in g["files"]}) >= 2


def test_cross_split_copies_are_flagged_as_leaks(planted: Planted) -> None:
    report = planted.result.report
    for src, copy, kind in planted.leaks:
        (group,) = groups_with(report["exact_duplicates" if kind == "exact" else "near_duplicates"], src, copy)
        assert group["cross_split"] and group["splits"] == ["test", "train"]
    leakage = next(f for f in report["findings"] if f["kind"] == "leakage")
    assert leakage["count"] == len(planted.leaks)
    assert report["findings"][0]["kind"] == "leakage"  # the most serious finding comes first
    assert "delete the val/test copies" in leakage["advice"]


def test_no_false_duplicates_on_real_digits(planted: Planted) -> None:
    planted_pairs = [set(p[:2]) for p in (*planted.exact, *planted.near, *planted.leaks, planted.conflict)]
    for key in ("exact_duplicates", "near_duplicates"):
        for g in planted.result.report[key]:
            assert any(pair <= {f["path"] for f in g["files"]} for pair in planted_pairs), g


def test_a_copy_under_another_class_is_a_label_conflict(planted: Planted) -> None:
    report = planted.result.report
    (group,) = groups_with(report["exact_duplicates"], *planted.conflict)
    assert group["conflicting_labels"] and len(group["classes"]) == 2
    assert any(f["kind"] == "conflicting_labels" for f in report["findings"])


def test_label_flips_are_found_and_ranked_first(planted: Planted) -> None:
    lc = planted.result.report["label_check"]
    assert lc["ran"] and lc["out_of_fold_top1"] > 0.8
    cands = [c["path"] for c in lc["candidates"]]
    recall = sum(f in cands for f in planted.flips) / len(planted.flips)
    assert recall >= 0.5, (recall, lc["candidates"])
    top = cands[: len(planted.flips)]
    assert sum(c in planted.flips for c in top) >= len(top) * 2 / 3, lc["candidates"]
    p_given = [c["p_given"] for c in lc["candidates"]]
    assert p_given == sorted(p_given)  # least-believed label first
    assert all(c["confidence"] >= 0.7 and c["predicted"] != c["given"] for c in lc["candidates"])


def test_unreadable_and_stray_files_are_reported_with_reasons(planted: Planted) -> None:
    reasons = {u["path"]: u["reason"] for u in planted.result.report["unreadable"]}
    assert reasons["train/zero/empty.png"] == "empty file (0 bytes)"
    assert reasons["train/one/text.png"].startswith("cannot be decoded (not an image format")
    assert reasons["train/two/truncated.png"].startswith("cannot be decoded")
    assert reasons["train/three/notes.txt"] == "not an image file (extension .txt)"
    assert "not inside a class folder" in reasons["train/stray.png"]
    assert len(reasons) == 5


def test_counts_and_image_statistics(planted: Planted) -> None:
    report = planted.result.report
    per = report["counts"]["per_split"]
    assert list(per) == ["train", "test"] and list(per["train"]) == sorted(CLASSES)
    files = [k for k, v in planted.before.items() if isinstance(v, tuple)]
    readable = sum(sum(c.values()) for c in per.values())
    assert readable == report["counts"]["images"] == len(files) - 5  # every file but the five unusable ones
    assert report["imbalance"]["train"]["ratio"] >= 1.0
    stats = report["images"]
    assert stats["width"]["min"] == 12 and stats["width"]["max"] == 17  # the 75% and the +1 px copies
    assert stats["formats"]["PNG"] > 0 and stats["formats"]["JPEG"] == 3
    assert stats["rgb"] == stats["rgb_but_gray"] == 3  # the JPEG copies were saved as RGB
    assert stats["blank"] == 0 and len(stats["mean"]) == 3


def test_report_files(planted: Planted) -> None:
    out = planted.result.dir
    assert json.loads((out / "report.json").read_text()) == json.loads(json.dumps(planted.result.report))
    md = (out / "report.md").read_text()
    for section in ("## Summary", "## Files per class and split", "## Images", "## Unreadable files",
                    "## Exact duplicates", "## Near duplicates", "## Label-error candidates"):
        assert section in md, section
    links = [line.split("](")[1].split(")")[0] for line in md.splitlines() if "![" in line]
    assert links and all((out / link).is_file() for link in links)
    assert any(link.startswith("thumbs/label-") for link in links)
    with Image.open(out / links[0]) as thumb:
        assert thumb.height == 96


def test_findings_each_say_what_to_do(planted: Planted) -> None:
    kinds = [f["kind"] for f in planted.result.findings]
    for kind in ("leakage", "conflicting_labels", "unreadable", "label_candidates", "exact_duplicates",
                 "near_duplicates", "rgb_but_gray"):
        assert kind in kinds, kind
    assert all(f["count"] > 0 and f["advice"] for f in planted.result.findings)
    count = {f["kind"]: f["count"] for f in planted.result.findings}
    # each group is counted once, under its most serious kind: the label conflict is not also a plain copy
    assert (count["leakage"], count["conflicting_labels"], count["unreadable"], count["exact_duplicates"]) == (
        len(planted.leaks), 1, 5, len(planted.exact))


# --- smaller cases ------------------------------------------------------------------------------------------


def test_flat_layout_and_layout_problems_are_findings_not_refusals(digits_folder, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    root = digits_folder(splits=("train", "test"), per_class=3)
    shutil.rmtree(root / "test" / "2")  # test lacks a class
    (root / "train" / "3").mkdir()  # an empty class folder
    result = pigeon.audit(str(root), out=str(tmp_path / "r"), label_check=False, verbose=False)
    problems = result.report["layout_problems"]
    assert any("lacks class folder(s) ['2', '3']" in p for p in problems)
    assert any("holds no images" in p for p in problems)
    assert result.findings[0]["kind"] == "layout"

    flat = digits_folder(tmp_path / "flat", splits=None, per_class=3)
    result = pigeon.audit(str(flat), out=str(tmp_path / "r2"), label_check=False, verbose=False)
    assert result.report["layout"] == "classes" and result.report["splits"] == ["train"]
    assert result.report["counts"]["images"] == 9 and result.findings == []


def test_label_check_is_skipped_with_a_reason_on_tiny_data(digits_folder, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    root = digits_folder(per_class=3)
    result = pigeon.audit(str(root), out=str(tmp_path / "r"), verbose=False, device="cpu")
    lc = result.report["label_check"]
    assert not lc["ran"] and "too few for 5 folds" in lc["skipped_because"]
    assert "Not checked: 9 readable images are too few" in (result.dir / "report.md").read_text()


def test_default_report_folder_is_numbered(digits_folder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    root = digits_folder(per_class=2)
    monkeypatch.chdir(tmp_path)
    first = pigeon.audit(str(root), label_check=False, verbose=False)
    second = pigeon.audit(str(root), label_check=False, verbose=False)
    assert first.dir == Path("runs/audit/data") and second.dir == Path("runs/audit/data-2")
    assert (first.dir / "report.md").is_file() and (second.dir / "report.json").is_file()


def test_refusals(digits_folder, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    root = digits_folder(per_class=2)
    with pytest.raises(DatasetError, match="built-in dataset; pigeon audit checks image folders only"):
        pigeon.audit("digits", out=str(tmp_path / "r"))
    with pytest.raises(DatasetError, match="no such folder"):
        pigeon.audit(str(tmp_path / "nope"))
    with pytest.raises(ConfigError, match="inside the audited folder"):
        pigeon.audit(str(root), out=str(root / "report"))
    with pytest.raises(ConfigError, match="near_threshold=3 is out of range"):
        pigeon.audit(str(root), near_threshold=3)
    with pytest.raises(ConfigError, match="did you mean 'near_threshold'"):
        pigeon.audit(str(root), near_treshold=0.1)
    assert sorted(os.listdir(root / "train")) == ["0", "1", "2"]  # nothing written, not even a report folder
    assert not (tmp_path / "r").exists()


# --- the CLI ------------------------------------------------------------------------------------------------


def test_cli_audit_writes_the_report(digits_folder, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:  # type: ignore[no-untyped-def]
    root = digits_folder(splits=("train", "test"), per_class=4)
    shutil.copyfile(root / "train/1/000.png", root / "test/1/copy.png")
    out = tmp_path / "report"
    assert main(["audit", "--data", str(root), "--out", str(out), "--no-label-check"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith(f"audit of {root}: 25 readable images in train 12, test 13; 3 classes")
    assert "1 duplicate group(s) span splits (1 exact, 0 near)" in lines[1]
    assert json.loads(lines[-1]) == {"dir": str(out), "findings": {"leakage": 1}}
    assert (out / "report.md").is_file() and (out / "report.json").is_file() and (out / "thumbs").is_dir()


def test_cli_audit_help_and_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["audit", "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for option in ("--data", "--out", "--near-threshold", "--no-label-check", "--folds", "--confidence"):
        assert option in out, option
    assert main(["audit", "--data", "fashion-mnist"]) == 1
    assert capsys.readouterr().err.startswith("DatasetError: 'fashion-mnist' is a built-in dataset;")
    assert main(["audit", "--data", str(tmp_path / "missing")]) == 1
    assert "no such folder" in capsys.readouterr().err
    assert main(["audit", "--data", str(tmp_path), "--folds", "1"]) == 2
    assert capsys.readouterr().err == "ConfigError: folds=1 is out of range; it must be >= 2 and <= 20\n"
    assert main(["audit", "--data", str(tmp_path), "--model", "pigeon-q"]) == 2
    assert "unknown model 'pigeon-q'" in capsys.readouterr().err


# --- the pieces ---------------------------------------------------------------------------------------------


def test_signature_ignores_brightness_and_contrast_not_content(digits_arrays: tuple[np.ndarray, np.ndarray]) -> None:
    pixels, _ = digits_arrays

    def gray(i: int) -> np.ndarray:
        return np.asarray(digit_image(pixels[i], SIGNATURE_SIZE), dtype=np.float64)
    a = signature(gray(0))
    assert a.shape == (63,) and a.dtype == np.float32 and abs(np.linalg.norm(a) - 1) < 1e-5
    assert np.allclose(signature(gray(0) * 0.8 + 20), a, atol=1e-5)  # affine brightness/contrast: same direction
    assert np.linalg.norm(signature(gray(1)) - a) > 0.1  # another digit
    assert not signature(np.full((32, 32), 200.0)).any()  # blank: the zero vector
    noisy = np.full((32, 32), 200.0) + np.random.default_rng(0).normal(0, 0.3, (32, 32))
    assert not signature(noisy).any()  # compression noise on a blank image is still blank


def test_close_pairs_match_brute_force() -> None:
    rng = np.random.default_rng(0)
    sig = rng.normal(size=(300, 63)).astype(np.float32)
    sig /= np.linalg.norm(sig, axis=1, keepdims=True)
    sig[50] = sig[7]
    sig[50, 0] += 0.03
    sig[120] = sig[7]
    sig[299] = 0
    sig[298] = 0
    found = {(i, j) for i, j, _ in duplicates.close_pairs(sig, 0.06, block=64)}
    dist = np.linalg.norm(sig[:, None] - sig[None], axis=-1)
    expected = {(i, j) for i, j in zip(*np.nonzero(dist <= 0.06)) if i < j}
    assert found == expected == {(7, 50), (7, 120), (50, 120), (298, 299)}


def test_components_and_groups() -> None:
    assert duplicates.components(6, [(4, 5), (0, 2), (2, 4)]) == [[0, 2, 4, 5]]
    assert duplicates.components(3, []) == []
    assert duplicates.exact_groups(["a", "b", "a", "c", "b", "a"]) == [[0, 2, 5], [1, 4]]
    sig = np.zeros((4, 63), np.float32)
    sig[:, 0] = 1
    sig[3, 1] = 1
    sig[3] /= np.linalg.norm(sig[3])
    # rows 0 and 1 are byte copies, 2 a near copy of them, 3 another picture
    assert duplicates.near_groups(sig, ["x", "x", "y", "z"], 0.06) == [([0, 1, 2], 0.0)]
    blank = np.zeros((3, 63), np.float32)  # blank images of different colours are not near duplicates
    assert duplicates.near_groups(blank, ["a", "b", "b"], 0.06) == []


def test_folds_are_stratified_and_balanced() -> None:
    y = np.repeat(np.arange(3), [10, 7, 2])
    ids = labels.fold_ids(y, 5, seed=0)
    assert np.bincount(ids).tolist() == [4, 4, 4, 4, 3]
    for c in range(3):
        per_fold = np.bincount(ids[y == c], minlength=5)
        assert per_fold.max() - per_fold.min() <= 1
    assert np.array_equal(ids, labels.fold_ids(y, 5, seed=0))


def test_candidates_are_confident_disagreements_least_believed_first() -> None:
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.05, 0.95], [0.4, 0.6], [0.75, 0.25]], dtype=np.float32)
    y = np.array([0, 0, 0, 0, 1])
    assert labels.candidates(probs, y, 0.7).tolist() == [2, 1, 4]

