"""Property-based tests (hypothesis): arbitrary arrays and byte strings into the preprocessing and `predict`.

Every input gives either a valid result (a uint8 [C, imgsz, imgsz] array; a Prediction whose probabilities are
finite and sum to 1 and whose label is a class) or a clear refusal (the error the function documents; a
Prediction with .error set), never another exception and never a hang (a per-example alarm).

The examples are derandomized, so a run is reproducible; failures found while writing these (and the minimal
inputs) are pinned below as strict xfails.
"""

from __future__ import annotations

import io
import re
import signal
import struct
import warnings
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from PIL import Image

from pigeon.data.preprocess import Preprocess, array_to_uint8, image_to_array, open_image
from pigeon.engine.predict import Classifier, Prediction
from pigeon.errors import ImageError, PigeonError

PER_EXAMPLE_SECONDS = 30  # a hang guard only; an example takes milliseconds
# Decoding a header that declares tens of millions of pixels is legitimate but slow on two shared cores; a
# lower bomb limit keeps every example small while still sending such headers down the refusal path.
MAX_PIXELS = 1 << 20
SETTINGS = settings(max_examples=60, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

DTYPES = (np.uint8, np.uint16, np.float32, np.float64, np.bool_, np.int64)
SPECS = [Preprocess(imgsz=s, channels=c, resize=r, mean=(0.5,) * c, std=(0.5,) * c)
         for s in (8, 5) for c in (1, 3) for r in ("crop", "pad", "stretch")]
# pigeon's own refusals in array_to_uint8 (pigeon/data/preprocess.py): anything else is an accident
ARRAY_REFUSALS = r"array of shape .* is not an image; .*|array dtype \w+ is not an image; .*|" \
                 r"array holds NaN or infinite values"


class Hang(BaseException):
    """A BaseException, so predict's `except Exception` (one bad image -> one error entry) cannot swallow it."""


@contextmanager
def _guard() -> Iterator[None]:
    """Fail an example that runs too long; decode with a small bomb limit and with PIL's warnings shown, not
    raised (pytest turns warnings into errors; a user's run only prints them)."""
    def fire(signum: int, frame: Any) -> None:
        raise Hang(f"one example ran past {PER_EXAMPLE_SECONDS} s")

    alarm = hasattr(signal, "SIGALRM")  # not on Windows
    previous = signal.signal(signal.SIGALRM, fire) if alarm else None
    if alarm:
        signal.setitimer(signal.ITIMER_REAL, PER_EXAMPLE_SECONDS)
    try:
        with mock.patch.object(Image, "MAX_IMAGE_PIXELS", MAX_PIXELS), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        if alarm:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)


# ---- strategies ------------------------------------------------------------------------------------------


def _shapes() -> st.SearchStrategy[tuple[int, ...]]:
    """Any small shape of 0-5 dims, weighted towards the image layouts (HW, HWC, CHW, NCHW)."""
    side = st.integers(0, 6)
    chan = st.sampled_from([1, 2, 3, 4])
    return st.one_of(
        hnp.array_shapes(min_dims=0, max_dims=5, min_side=0, max_side=4),
        st.tuples(side, side),
        st.tuples(side, side, chan),
        st.tuples(chan, side, side),
        st.tuples(st.integers(0, 3), chan, side, side),
    )


@st.composite
def arrays(draw: st.DrawFn) -> np.ndarray:
    dtype = draw(st.sampled_from(DTYPES))
    shape = draw(_shapes())
    elements = None
    if np.issubdtype(dtype, np.floating) and draw(st.booleans()):
        elements = st.floats(0, 1, width=np.dtype(dtype).itemsize * 8)  # the documented 0..1 range, often
    return draw(hnp.arrays(dtype, shape, elements=elements))


def _encode(img: Image.Image, fmt: str, **kw: Any) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def _seed_images() -> list[bytes]:
    """Small valid files of many formats and modes: mutating them reaches deep into the decoders."""
    rgb = Image.fromarray(np.random.default_rng(0).integers(0, 256, (6, 5, 3), dtype=np.uint8), "RGB")
    exif = Image.Exif()
    exif[0x0112] = 6
    return [
        _encode(rgb, "PNG"), _encode(rgb.convert("L"), "PNG"), _encode(rgb.convert("RGBA"), "PNG"),
        _encode(rgb.convert("P"), "PNG", transparency=0),
        _encode(Image.fromarray(np.arange(30, dtype=np.uint16).reshape(6, 5) * 2000), "PNG"),
        _encode(rgb, "JPEG"), _encode(rgb.convert("CMYK"), "JPEG"), _encode(rgb, "JPEG", exif=exif),
        _encode(rgb, "GIF"), _encode(rgb, "BMP"), _encode(rgb, "TIFF"), _encode(rgb, "WEBP"),
        _encode(rgb, "ICO"), _encode(rgb, "PPM"), _encode(rgb, "TGA"),
        _encode(Image.fromarray(np.ones((4, 4), np.float32)), "TIFF"),
    ]


SEEDS = _seed_images()


@st.composite
def image_bytes(draw: st.DrawFn) -> bytes:
    """Arbitrary bytes, or a valid small image file with bytes overwritten and/or cut short."""
    if draw(st.integers(0, 3)) == 0:
        return draw(st.binary(max_size=300))
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(0, 6))):
        data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    if draw(st.booleans()):
        data = data[: draw(st.integers(0, len(data)))]
    return bytes(data)


def _png(width: int, height: int, tail: bytes = b"") -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    raw = zlib.compress(b"".join(b"\0" + bytes(range(width % 256)) for _ in range(min(height, 16))))
    head = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
    if tail:
        return head + chunk(b"IDAT", raw[: len(raw) // 2]) + tail
    return head + chunk(b"IDAT", raw) + chunk(b"IEND", b"")


BOMB_HEADER = _png(100_000, 100_000)  # declares 10^10 pixels: PIL raises DecompressionBombError
BROKEN_CHUNK = _png(16, 16, tail=b"\0\0\0\0!!!!")  # a chunk named "!!!!" after half the data: SyntaxError


# ---- fixtures ----------------------------------------------------------------------------------------------



# ---- checks --------------------------------------------------------------------------------------------------


def _is_image(a: np.ndarray) -> bool:
    """The documented rule: HxW, HxWx1/3/4 or 1/3/4xHxW; numbers (not bool); no NaN/inf; at least one pixel."""
    if a.dtype == np.bool_ or a.size == 0:
        return False
    if np.issubdtype(a.dtype, np.floating) and not np.isfinite(a).all():
        return False
    return a.ndim == 2 or (a.ndim == 3 and (a.shape[-1] in (1, 3, 4) or a.shape[0] in (1, 3, 4)))


def _check_prediction(pred: Any, clf: Classifier) -> None:
    assert isinstance(pred, Prediction)
    if pred.error is not None:
        assert pred.error and pred.probs is None and pred.label is None and pred.top5 == []
        return
    probs = pred.probs
    assert probs is not None and probs.shape == (len(clf.classes),) and np.isfinite(probs).all()
    assert (probs >= 0).all() and float(probs.sum()) == pytest.approx(1.0, abs=1e-4)
    assert pred.label in clf.classes and pred.top1 == int(np.argmax(probs))


# ---- arrays --------------------------------------------------------------------------------------------------


@SETTINGS
@given(arr=arrays(), spec=st.sampled_from(SPECS))
@example(arr=np.array(np.nan, np.float32), spec=SPECS[0])
@example(arr=np.full((3, 4, 4), np.inf), spec=SPECS[3])
@example(arr=np.zeros((1, 1, 1, 1, 1), np.int64), spec=SPECS[0])
@example(arr=np.iinfo(np.int64).max * np.ones((2, 5), np.int64), spec=SPECS[4])
@example(arr=np.ones((4, 4, 4), np.bool_), spec=SPECS[0])
def test_array_to_uint8_gives_an_image_or_refuses_clearly(arr: np.ndarray, spec: Preprocess) -> None:
    with _guard():
        try:
            out = array_to_uint8(arr, spec)
        except ValueError as err:  # the documented refusal (see test_refusals_are_pigeon_errors)
            assert re.fullmatch(ARRAY_REFUSALS, str(err)), f"an accidental ValueError: {err}"
            assert not _is_image(arr), f"refused a valid image of shape {arr.shape} and dtype {arr.dtype}: {err}"
            return
    assert _is_image(arr), f"accepted a non-image of shape {arr.shape} and dtype {arr.dtype}"
    assert isinstance(out, np.ndarray) and out.dtype == np.uint8
    assert out.shape == (spec.channels, spec.imgsz, spec.imgsz)


@SETTINGS
@given(arr=arrays(), as_tensor=st.booleans())
@example(arr=np.zeros((0, 1, 4, 4), np.uint8), as_tensor=False)
@example(arr=np.full((2, 3, 4, 4), np.nan), as_tensor=True)
def test_predict_on_any_array(tiny_clf: Classifier, arr: np.ndarray, as_tensor: bool) -> None:
    source: Any = torch.from_numpy(arr) if as_tensor else arr
    with _guard():
        out = tiny_clf.predict(source)
    if arr.ndim == 4:  # a batch: one result per image, in order
        assert isinstance(out, list) and len(out) == arr.shape[0]
        assert [p.source for p in out] == [f"<array[{i}]>" for i in range(arr.shape[0])]
        for pred, one in zip(out, arr):
            _check_prediction(pred, tiny_clf)
            assert pred.ok == _is_image(one)
    else:
        _check_prediction(out, tiny_clf)
        assert out.source == "<array>" and out.ok == _is_image(arr)


@pytest.mark.parametrize("arr", [np.zeros(16, np.uint8), np.zeros((8, 8), bool), np.full((8, 8), np.nan)],
                         ids=["1-d", "bool", "nan"])
def test_refusals_are_pigeon_errors(arr: np.ndarray) -> None:
    with pytest.raises(PigeonError):
        array_to_uint8(arr, SPECS[0])


# ---- bytes ---------------------------------------------------------------------------------------------------


# open_image's documented refusals: the file cannot be read (OSError) or is not a usable image (ImageError)
REFUSALS = (OSError, ImageError)


def _decode(data: bytes, spec: Preprocess) -> np.ndarray | None:
    """open_image + image_to_array: the uint8 array, or None for a refusal."""
    try:
        img = open_image(data)
    except REFUSALS:
        return None
    out = image_to_array(img, spec.imgsz, spec.channels, spec.resize)
    assert isinstance(out, np.ndarray) and out.dtype == np.uint8
    assert out.shape == (spec.channels, spec.imgsz, spec.imgsz)
    return out


@SETTINGS
@given(data=image_bytes(), spec=st.sampled_from(SPECS))
@example(data=b"", spec=SPECS[0])
@example(data=b"\x89PNG\r\n\x1a\n", spec=SPECS[0])
@example(data=_png(5, 3), spec=SPECS[3])
@example(data=_png(2000, 2000), spec=SPECS[0])  # over the (lowered) bomb limit: pigeon's own refusal
def test_preprocessing_on_any_bytes(data: bytes, spec: Preprocess) -> None:
    with _guard():
        _decode(data, spec)


@SETTINGS
@given(data=image_bytes())
@example(data=b"")
@example(data=BOMB_HEADER)
@example(data=BROKEN_CHUNK)
@example(data=SEEDS[0])
def test_predict_on_any_bytes(tiny_clf: Classifier, data: bytes) -> None:
    with _guard():
        pred = tiny_clf.predict(data)
        good = _decode(data, tiny_clf.preprocess) if pred.ok else None
    _check_prediction(pred, tiny_clf)
    assert pred.source == "<bytes>"
    if pred.ok:
        assert good is not None  # predict read it exactly as the preprocessing does
        np.testing.assert_allclose(pred.probs, tiny_clf.probabilities(good[None])[0], rtol=1e-5, atol=1e-6)


@SETTINGS
@given(data=image_bytes())
def test_predict_on_any_file(tiny_clf: Classifier, tmp_path_factory: pytest.TempPathFactory, data: bytes) -> None:
    folder = tmp_path_factory.mktemp("bytes")
    path = folder / "x.png"
    path.write_bytes(data)
    with _guard():
        pred = tiny_clf.predict(path)
    _check_prediction(pred, tiny_clf)
    assert pred.source == str(path)
    assert path.read_bytes() == data and [p.name for p in folder.iterdir()] == ["x.png"]


@pytest.mark.parametrize("data", [BOMB_HEADER, BROKEN_CHUNK], ids=["10^10-pixel-header", "png-chunk-named-!!!!"])
def test_open_image_refuses_only_with_pigeon_or_os_errors(data: bytes) -> None:
    with pytest.raises((OSError, ImageError)):
        open_image(data)


def test_the_pinned_inputs_are_what_they_claim(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="DecompressionBombError"):
        open_image(BOMB_HEADER)
    with pytest.raises(ImageError, match=r"SyntaxError: broken PNG file \(chunk b'!!!!'\)"):
        open_image(BROKEN_CHUNK)
    assert open_image(_png(5, 3)).size == (5, 3)
