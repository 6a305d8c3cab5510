"""The decode-once cache: reuse, invalidation, location, repair of broken entries, concurrent builds."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import numpy as np
import pytest

from pigeon.data import Dataset, cache, folders, load_dataset


@pytest.fixture
def decodes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Records the path of every image the folder loader decodes."""
    seen: list[str] = []
    real = folders._decode

    def counting(path: Path, imgsz: int, channels: int, resize: str) -> tuple:
        seen.append(str(path))
        return real(path, imgsz, channels, resize)

    monkeypatch.setattr(folders, "_decode", counting)
    return seen


def _load(root: Path, cache_dir: Path | None, **kw: object) -> Dataset:
    kw.setdefault("imgsz", 16)
    return load_dataset(str(root), cache_dir=str(cache_dir) if cache_dir else None, verbose=False,
                        **kw)  # type: ignore[arg-type]


def _entries(cache_dir: Path) -> list[str]:
    return sorted(p.name for p in cache_dir.iterdir())


def _same(a: Dataset, b: Dataset) -> None:
    assert a.splits.keys() == b.splits.keys()
    for s in a.splits:
        np.testing.assert_array_equal(a.splits[s].images, b.splits[s].images)
        np.testing.assert_array_equal(a.splits[s].labels, b.splits[s].labels)
        assert a.splits[s].paths == b.splits[s].paths


# ---- reuse -----------------------------------------------------------------------------------------------


def test_second_load_reuses_memory_maps(digits_folder, cache_dir: Path, decodes: list[str],
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    root = digits_folder(splits=("train", "val"), per_class=3)
    first = _load(root, cache_dir)
    assert len(decodes) == 18
    reused = []
    real = cache.load_or_build

    def spy(*args: object) -> tuple:
        out = real(*args)  # type: ignore[arg-type]
        reused.append(out[2])
        return out

    monkeypatch.setattr(cache, "load_or_build", spy)

    def no_decoding(*args: object) -> None:
        raise AssertionError("a cache hit decoded an image")

    monkeypatch.setattr(folders, "_decode", no_decoding)
    second = _load(root, cache_dir)
    assert reused == [True]
    _same(first, second)
    assert second.fingerprint == first.fingerprint and second.preprocess == first.preprocess
    for split in second.splits.values():
        assert isinstance(split.images, np.memmap) and not split.images.flags.writeable


def test_load_or_build_reports_reuse(tmp_path: Path) -> None:
    calls = []

    def build(tmp: Path) -> tuple[list[str], dict]:
        calls.append(tmp)
        np.save(tmp / "x.npy", np.arange(6).reshape(2, 3))
        return ["x"], {"note": "hi"}

    arrays, meta, reused = cache.load_or_build(tmp_path, "k", build)
    assert reused is False and len(calls) == 1 and not calls[0].exists()  # the build folder is gone
    assert meta == {"note": "hi", "arrays": ["x"], "cache_version": cache.CACHE_VERSION}
    np.testing.assert_array_equal(arrays["x"], [[0, 1, 2], [3, 4, 5]])
    arrays, meta, reused = cache.load_or_build(tmp_path, "k", build)
    assert reused is True and len(calls) == 1 and isinstance(arrays["x"], np.memmap)
    assert _entries(tmp_path) == ["k"]
    assert sorted(p.name for p in (tmp_path / "k").iterdir()) == ["meta.json", "x.npy"]


# ---- invalidation ----------------------------------------------------------------------------------------


def test_touching_a_file_rebuilds(digits_folder, cache_dir: Path, decodes: list[str]) -> None:
    root = digits_folder(per_class=3, classes=("a", "b"))
    first = _load(root, cache_dir)
    target = root / "train" / "a" / "001.png"
    st = target.stat()
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    decodes.clear()
    second = _load(root, cache_dir)
    assert second.fingerprint != first.fingerprint and len(decodes) == 6
    assert _entries(cache_dir) == sorted([first.cache_entry, second.cache_entry])


def test_rewriting_a_file_rebuilds_with_the_new_pixels(digits_folder, cache_dir: Path) -> None:
    from PIL import Image

    root = digits_folder(per_class=2, classes=("a", "b"))
    target = root / "train" / "b" / "000.png"
    _load(root, cache_dir)
    Image.new("L", (16, 16), 123).save(target)
    os.utime(target, ns=(0, target.stat().st_mtime_ns + 1_000_000_000))  # even on a coarse clock
    ds = _load(root, cache_dir)
    i = ds.splits["train"].paths.index(str(target))
    assert (ds.splits["train"].images[i] == 123).all()


def test_adding_a_file_rebuilds(digits_folder, cache_dir: Path, decodes: list[str]) -> None:
    root = digits_folder(per_class=3, classes=("a", "b"))
    first = _load(root, cache_dir)
    (root / "train" / "b" / "003.png").write_bytes((root / "train" / "a" / "000.png").read_bytes())
    decodes.clear()
    second = _load(root, cache_dir)
    assert second.fingerprint != first.fingerprint and len(decodes) == 7
    assert np.bincount(second.splits["train"].labels).tolist() == [3, 4]


def test_removing_a_file_rebuilds(digits_folder, cache_dir: Path) -> None:
    root = digits_folder(per_class=3, classes=("a", "b"))
    first = _load(root, cache_dir)
    (root / "train" / "a" / "002.png").unlink()
    second = _load(root, cache_dir)
    assert second.fingerprint != first.fingerprint and len(second.splits["train"]) == 5


@pytest.mark.parametrize("change", [{"imgsz": 8}, {"resize": "pad"}, {"resize": "stretch"}, {"channels": 3}])
def test_preprocessing_changes_rebuild(digits_folder, cache_dir: Path, decodes: list[str],
                                       change: dict) -> None:
    root = digits_folder(per_class=2, classes=("a", "b"))
    base = _load(root, cache_dir)
    decodes.clear()
    other = _load(root, cache_dir, **change)
    assert other.fingerprint != base.fingerprint and len(decodes) == 4
    spec = other.preprocess
    assert (spec.imgsz, spec.resize, spec.channels) == (change.get("imgsz", 16), change.get("resize", "crop"),
                                                        change.get("channels", 1))
    assert other.splits["train"].images.shape == (4, spec.channels, spec.imgsz, spec.imgsz)
    decodes.clear()
    _same(_load(root, cache_dir), base)  # the first entry is still there and still used
    assert decodes == []


def test_spelling_the_resolved_channels_reuses_the_entry(digits_folder, cache_dir: Path, decodes: list[str]) -> None:
    root = digits_folder(per_class=2, classes=("a", "b"))  # grayscale files: channels resolves to 1
    auto = _load(root, cache_dir)
    decodes.clear()
    spelled = _load(root, cache_dir, channels=1)  # what a resumed run, val, export and bench pass
    assert decodes == [] and spelled.fingerprint == auto.fingerprint and spelled.cache_entry == auto.cache_entry
    _same(spelled, auto)


def test_spelling_the_channels_first_gives_the_same_fingerprint(digits_folder, cache_dir: Path) -> None:
    root = digits_folder(per_class=2, classes=("a", "b"))
    spelled = _load(root, cache_dir, channels=1)  # no entry yet: decoded for exactly what was asked
    auto = _load(root, cache_dir)
    assert spelled.fingerprint == auto.fingerprint
    _same(spelled, auto)


@pytest.mark.parametrize(("mode", "channels"), [("RGB", 1), ("L", 3)])
def test_a_channel_count_the_data_lacks_is_decoded_as_predict_converts(digits_folder, cache_dir: Path,
                                                                       mode: str, channels: int) -> None:
    from pigeon.data.preprocess import image_to_array, open_image

    root = digits_folder(per_class=2, classes=("a", "b"), mode=mode)
    ds = _load(root, cache_dir, channels=channels)
    train = ds.splits["train"]
    assert ds.preprocess.channels == channels and train.paths is not None
    for pixels, path in zip(train.images, train.paths):
        # An RGB image's grayscale is its luma, not its red channel: training must see what predict sees.
        np.testing.assert_array_equal(pixels, image_to_array(open_image(path), 16, channels, "crop"))
    assert ds.fingerprint != _load(root, cache_dir).fingerprint  # a different input is a different run


# ---- location --------------------------------------------------------------------------------------------


def test_cache_lives_in_cache_dir_only(digits_folder, cache_dir: Path) -> None:
    root = digits_folder(splits=("train", "test"), per_class=2, classes=("a", "b"))
    ds = _load(root, cache_dir)
    assert _entries(cache_dir) == [ds.cache_entry]  # no build folders left behind
    entry = cache_dir / ds.cache_entry
    assert sorted(p.name for p in entry.iterdir()) == ["meta.json", "test_images.npy", "test_labels.npy",
                                                       "train_images.npy", "train_labels.npy"]
    assert Path(ds.splits["train"].images.filename).parent == entry
    meta = json.loads((entry / "meta.json").read_text())
    assert meta["channels"] == 1 and meta["train_n"] == 4 and meta["test_n"] == 4
    assert all(not Path(p).is_absolute() for p in meta["paths"]["train"])  # relative to the data folder


def test_pigeon_cache_dir_env_is_honoured(digits_folder, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    env_dir = tmp_path / "from-env"
    monkeypatch.setenv("PIGEON_CACHE_DIR", str(env_dir))
    ds = _load(digits_folder(per_class=2, classes=("a", "b")), None)
    assert _entries(env_dir) == [ds.cache_entry]


def test_cache_root_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PIGEON_CACHE_DIR", str(tmp_path / "env"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache.cache_root(tmp_path / "arg") == tmp_path / "arg"
    assert cache.cache_root("~/c") == tmp_path / "home" / "c"
    assert cache.cache_root() == tmp_path / "env"
    monkeypatch.delenv("PIGEON_CACHE_DIR")
    assert cache.cache_root() == tmp_path / "xdg" / "pigeon"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert cache.cache_root() == tmp_path / "home" / ".cache" / "pigeon"


# ---- broken entries --------------------------------------------------------------------------------------


def _truncate_images(entry: Path) -> None:
    f = entry / "train_images.npy"
    f.write_bytes(f.read_bytes()[:200])


def _drop_meta(entry: Path) -> None:
    (entry / "meta.json").unlink()


def _garble_meta(entry: Path) -> None:
    (entry / "meta.json").write_text('{"arrays": [')


def _list_meta(entry: Path) -> None:
    (entry / "meta.json").write_text("[1, 2]")


def _drop_labels(entry: Path) -> None:
    (entry / "train_labels.npy").unlink()


@pytest.mark.parametrize("damage", [_truncate_images, _drop_meta, _garble_meta, _list_meta, _drop_labels])
def test_a_broken_entry_is_rebuilt(digits_folder, cache_dir: Path, decodes: list[str], damage) -> None:
    root = digits_folder(per_class=3, classes=("a", "b"))
    first = _load(root, cache_dir)
    expected = {s: (np.array(sp.images), np.array(sp.labels)) for s, sp in first.splits.items()}
    damage(cache_dir / first.cache_entry)
    decodes.clear()
    again = _load(root, cache_dir)
    assert len(decodes) == 6 and again.fingerprint == first.fingerprint
    np.testing.assert_array_equal(again.splits["train"].images, expected["train"][0])
    np.testing.assert_array_equal(again.splits["train"].labels, expected["train"][1])
    assert _entries(cache_dir) == [first.cache_entry]
    decodes.clear()
    _load(root, cache_dir)
    assert decodes == []  # and the repaired entry is used from then on


def test_a_failed_build_leaves_nothing(tmp_path: Path) -> None:
    def build(tmp: Path) -> tuple[list[str], dict]:
        np.save(tmp / "x.npy", np.zeros(3))
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError, match="disk on fire"):
        cache.load_or_build(tmp_path, "k", build)
    assert _entries(tmp_path) == []


# ---- concurrency -----------------------------------------------------------------------------------------


def test_two_builds_at_once_are_safe(tmp_path: Path) -> None:
    barrier = threading.Barrier(2, timeout=10)
    results: list[tuple] = []

    def build(tmp: Path) -> tuple[list[str], dict]:
        np.save(tmp / "x.npy", np.arange(1000))
        barrier.wait()  # both builders are done before either publishes
        return ["x"], {}

    def worker() -> None:
        results.append(cache.load_or_build(tmp_path, "k", build))

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=20)
    assert len(results) == 2
    for arrays, _, reused in results:
        assert reused is False
        np.testing.assert_array_equal(arrays["x"], np.arange(1000))
    assert _entries(tmp_path) == ["k"]


def test_a_build_finished_elsewhere_first_wins(tmp_path: Path) -> None:
    def theirs(tmp: Path) -> tuple[list[str], dict]:
        np.save(tmp / "x.npy", np.array([1, 2, 3]))
        return ["x"], {"who": "theirs"}

    def ours(tmp: Path) -> tuple[list[str], dict]:
        cache.load_or_build(tmp_path, "k", theirs)  # "another process" publishes while we are building
        np.save(tmp / "x.npy", np.array([1, 2, 3]))
        return ["x"], {"who": "ours"}

    arrays, meta, reused = cache.load_or_build(tmp_path, "k", ours)
    assert reused is False and meta["who"] == "theirs"
    np.testing.assert_array_equal(arrays["x"], [1, 2, 3])
    assert _entries(tmp_path) == ["k"]


def test_fingerprint_is_stable_and_sensitive() -> None:
    a = cache.fingerprint(["folder", ("a", "b"), [("train", "a/1.png", 0, 10, 5)], 16, None, "crop"])
    assert a == cache.fingerprint(["folder", ("a", "b"), [("train", "a/1.png", 0, 10, 5)], 16, None, "crop"])
    assert len(a) == 24 and int(a, 16) >= 0
    assert a != cache.fingerprint(["folder", ("a", "b"), [("train", "a/1.png", 0, 10, 6)], 16, None, "crop"])
    assert cache.fingerprint(["ab", "c"]) != cache.fingerprint(["a", "bc"])  # parts are delimited
    assert cache.fingerprint([b"x"]) != cache.fingerprint(["x"])
