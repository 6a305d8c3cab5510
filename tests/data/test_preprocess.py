"""The preprocessing contract: decode -> EXIF -> L/RGB -> square resize -> uint8 [C, H, W]; normalize."""

from __future__ import annotations

import io
import json
import threading
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pigeon.data.preprocess import (
    BACKGROUND,
    Preprocess,
    array_to_uint8,
    image_to_array,
    is_grayscale,
    normalize,
    open_image,
    resize_to,
    to_standard_mode,
)
from pigeon.errors import ConfigError


def _save(img: Image.Image, path: Path, **kw: object) -> Path:
    img.save(path, **kw)
    return path


def _opened(path: Path) -> Image.Image:
    """The file as PIL opens it (header only), with the file closed again."""
    with Image.open(path) as img:
        img.load()
        return img


def _std(path: Path) -> np.ndarray:
    """File -> the standard-mode pixels as an array."""
    return np.asarray(to_standard_mode(open_image(path)))


# ---- colour modes -------------------------------------------------------------------------------------


def test_l_and_rgb_pass_through_unchanged(tmp_path: Path) -> None:
    gray = np.arange(64, dtype=np.uint8).reshape(8, 8) * 4
    rgb = np.stack([gray, 255 - gray, gray // 2], axis=-1)
    for arr, mode in ((gray, "L"), (rgb, "RGB")):
        path = _save(Image.fromarray(arr, mode), tmp_path / f"{mode}.png")
        img = to_standard_mode(open_image(path))
        assert img.mode == mode
        np.testing.assert_array_equal(np.asarray(img), arr)


def test_rgba_composited_on_white(tmp_path: Path) -> None:
    px = np.array([[[255, 0, 0, 0], [255, 0, 0, 255], [0, 0, 0, 128], [0, 0, 255, 255]]], np.uint8)
    out = _std(_save(Image.fromarray(px, "RGBA"), tmp_path / "a.png"))
    assert BACKGROUND == 255
    assert out.shape == (1, 4, 3)
    np.testing.assert_array_equal(out[0, 0], [255, 255, 255])  # fully transparent -> white
    np.testing.assert_array_equal(out[0, 1], [255, 0, 0])  # opaque -> itself
    np.testing.assert_allclose(out[0, 2], [127, 127, 127], atol=1)  # half black over white
    np.testing.assert_array_equal(out[0, 3], [0, 0, 255])


def test_la_composited_on_white_stays_grayscale(tmp_path: Path) -> None:
    px = np.array([[[0, 0], [0, 255], [0, 128], [200, 255]]], np.uint8)
    img = to_standard_mode(open_image(_save(Image.fromarray(px, "LA"), tmp_path / "la.png")))
    assert img.mode == "L"
    out = np.asarray(img)[0].astype(int)
    assert out[0] == 255 and out[1] == 0 and out[3] == 200
    assert abs(out[2] - 127) <= 1


def test_palette_with_transparency_composited_on_white(tmp_path: Path) -> None:
    img = Image.new("P", (4, 1))
    img.putpalette([10, 20, 30, 200, 100, 50] + [0] * (256 * 3 - 6))
    img.putdata([0, 1, 0, 1])
    path = _save(img, tmp_path / "p.png", transparency=0)
    assert _opened(path).mode == "P"
    out = _std(path)
    np.testing.assert_array_equal(out[0], [[255, 255, 255], [200, 100, 50], [255, 255, 255], [200, 100, 50]])


def test_one_bit_becomes_0_or_255(tmp_path: Path) -> None:
    bits = np.array([[True, False, True], [False, True, False]])
    path = _save(Image.fromarray(bits), tmp_path / "1.png")
    assert _opened(path).mode == "1"
    img = to_standard_mode(open_image(path))
    assert img.mode == "L"
    np.testing.assert_array_equal(np.asarray(img), np.where(bits, 255, 0))


def test_16_bit_png_scaled_by_65535(tmp_path: Path) -> None:
    px = np.array([[0, 257, 32768, 65535]], np.uint16)
    path = _save(Image.fromarray(px), tmp_path / "16.png")
    assert _opened(path).mode == "I;16"
    img = to_standard_mode(open_image(path))
    assert img.mode == "L"
    np.testing.assert_array_equal(np.asarray(img), [[0, 1, 128, 255]])


def test_16_bit_dark_image_is_not_stretched(tmp_path: Path) -> None:
    # a nearly black 16-bit image must stay nearly black: the scale is the type's range, not the max.
    path = _save(Image.fromarray(np.array([[0, 100, 200]], np.uint16)), tmp_path / "dark.png")
    np.testing.assert_array_equal(_std(path), [[0, 0, 1]])


def test_32_bit_int_mode_i(tmp_path: Path) -> None:
    small = np.array([[0, 100, 255]], np.int32)  # within 0..255: taken as is
    big = np.array([[0, 1000, 65535]], np.int32)  # beyond 255: treated as 16-bit
    for arr, want in ((small, [[0, 100, 255]]), (big, [[0, 4, 255]])):
        path = _save(Image.fromarray(arr), tmp_path / f"i{arr.max()}.tif")
        assert _opened(path).mode == "I"
        img = to_standard_mode(open_image(path))
        assert img.mode == "L"
        np.testing.assert_array_equal(np.asarray(img), want)


def test_float_mode_f_scaled_by_its_max(tmp_path: Path) -> None:
    cases = [([[0.0, 0.25, 1.0]], [[0, 64, 255]]),  # a 0..1 image
             ([[0.0, 1.0, 4.0]], [[0, 64, 255]]),  # scaled by its own maximum
             ([[0.0, 0.0, 0.0]], [[0, 0, 0]]),  # all zero: no division by zero
             ([[-1.0, 0.5, 1.0]], [[0, 128, 255]])]  # negatives clip to 0
    for k, (arr, want) in enumerate(cases):
        path = _save(Image.fromarray(np.array(arr, np.float32)), tmp_path / f"f{k}.tif")
        assert _opened(path).mode == "F"
        np.testing.assert_array_equal(_std(path), want)


def test_cmyk_jpeg_becomes_rgb(tmp_path: Path) -> None:
    img = Image.new("CMYK", (16, 8), (0, 0, 0, 0))  # no ink: white
    img.paste((0, 255, 255, 0), (8, 0, 16, 8))  # magenta + yellow: red
    path = _save(img, tmp_path / "cmyk.jpg", quality=95)
    assert _opened(path).mode == "CMYK"
    std = to_standard_mode(open_image(path))
    assert std.mode == "RGB"
    out = np.asarray(std).astype(int)
    np.testing.assert_allclose(out[:, :6], 255, atol=3)
    np.testing.assert_allclose(out[:, 11:], np.broadcast_to([255, 0, 0], (8, 5, 3)), atol=6)


@pytest.mark.parametrize(("mode", "gray"), [("L", True), ("LA", True), ("1", True), ("I;16", True),
                                            ("I", True), ("F", True), ("RGB", False), ("RGBA", False),
                                            ("P", False), ("CMYK", False)])
def test_is_grayscale_by_mode(mode: str, gray: bool) -> None:
    img = Image.new(mode, (2, 2))
    assert is_grayscale(img) is gray
    assert to_standard_mode(img).mode == ("L" if gray else "RGB")


# ---- decoding ------------------------------------------------------------------------------------------


def test_exif_orientation_6_rotates_clockwise(tmp_path: Path) -> None:
    stored = np.full((20, 40), 128, np.uint8)  # 40 wide, 20 high
    stored[:10, :20] = 255  # white block at the top-left as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    path = _save(Image.fromarray(stored, "L"), tmp_path / "rot.jpg", exif=exif, quality=95)
    img = open_image(path)
    assert img.size == (20, 40)  # now 20 wide, 40 high
    out = np.asarray(img).astype(float)
    # turned clockwise, the stored top-left lands top-right (counter-clockwise would put it bottom-left)
    assert out[2:18, 12:18].mean() > 245
    for region in (out[2:18, 2:8], out[22:38, 2:8], out[22:38, 12:18]):
        assert abs(region.mean() - 128) < 4
    # and the whole pipeline sees the upright image
    arr = image_to_array(img, 20, 1, "stretch")
    assert arr.shape == (1, 20, 20) and arr[0, :8, 12:].mean() > 245 and arr[0, :8, :8].mean() < 140


def test_animated_gif_uses_first_frame(tmp_path: Path) -> None:
    frames = [Image.new("RGB", (6, 6), c) for c in ((255, 0, 0), (0, 0, 255), (0, 255, 0))]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=50, loop=0)
    with Image.open(path) as gif:
        assert gif.n_frames == 3
    arr = image_to_array(open_image(path), 6, 3, "crop")
    np.testing.assert_array_equal(arr[:, 0, 0], [255, 0, 0])
    assert (arr == arr[:, :1, :1]).all()


def test_open_image_accepts_bytes_paths_and_pil(tmp_path: Path) -> None:
    img = Image.fromarray(np.arange(16, dtype=np.uint8).reshape(4, 4) * 16, "L")
    path = _save(img, tmp_path / "x.png")
    for source in (path, str(path), path.read_bytes(), bytearray(path.read_bytes()), img):
        np.testing.assert_array_equal(np.asarray(open_image(source)), np.asarray(img))
    with pytest.raises(TypeError, match="int"):
        open_image(3)


def test_open_image_refuses_unreadable_bytes() -> None:
    with pytest.raises(OSError):
        open_image(b"definitely not an image")


def test_decompression_bomb_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _save(Image.new("L", (40, 40)), tmp_path / "big.png")
    small = _save(Image.new("L", (10, 10)), tmp_path / "small.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 1600 > 1000: PIL would only warn
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the refusal must not depend on the caller's warning filters
        with pytest.raises(ValueError, match="decompression bomb"):
            open_image(path)
        assert open_image(small).size == (10, 10)


def test_open_image_leaves_warning_filters_alone() -> None:
    # open_image runs in decoder threads: it must not swap the process-wide warning filters.
    buf = io.BytesIO()
    Image.new("L", (4, 4)).save(buf, "PNG")
    data = buf.getvalue()
    before = list(warnings.filters)
    seen = []

    def worker() -> None:
        for _ in range(200):
            open_image(data)
            seen.append(len(warnings.filters))

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert warnings.filters == before
    assert set(seen) == {len(before)}


# ---- resizing -------------------------------------------------------------------------------------------


def _columns(w: int, h: int) -> Image.Image:
    """An L image whose pixel value is 10 * its column."""
    return Image.fromarray(np.tile(np.arange(w, dtype=np.uint8) * 10, (h, 1)), "L")


def test_crop_takes_the_centre_of_the_longer_side() -> None:
    out = np.asarray(resize_to(_columns(20, 10), 10, "crop"))
    assert out.shape == (10, 10)
    np.testing.assert_array_equal(out, np.tile(np.arange(5, 15, dtype=np.uint8) * 10, (10, 1)))
    tall = np.asarray(resize_to(_columns(20, 10).transpose(Image.Transpose.TRANSPOSE), 10, "crop"))
    np.testing.assert_array_equal(tall, np.tile(np.arange(5, 15, dtype=np.uint8)[:, None] * 10, (1, 10)))


def test_crop_scales_the_shorter_side_to_imgsz() -> None:
    img = Image.new("L", (80, 40), 0)
    img.paste(255, (20, 0, 60, 40))  # the central square is white, the sides black
    out = np.asarray(resize_to(img, 20, "crop"))
    assert out.shape == (20, 20)
    assert (out[:, 1:-1] == 255).all() and (out[:, [0, -1]] > 192).all()  # edges blend a little with black


def test_pad_fits_the_longer_side_and_pads_with_black() -> None:
    wide = np.asarray(resize_to(Image.new("L", (20, 10), 255), 10, "pad"))
    assert wide.shape == (10, 10)
    want = np.zeros((10, 10), np.uint8)
    want[2:7] = 255  # 10x5 pasted at y = (10 - 5) // 2
    np.testing.assert_array_equal(wide, want)
    tall = np.asarray(resize_to(Image.new("RGB", (10, 20), (255, 255, 255)), 10, "pad"))
    assert tall.shape == (10, 10, 3)
    np.testing.assert_array_equal(tall[:, 2:7], 255)
    np.testing.assert_array_equal(tall[:, :2], 0)
    np.testing.assert_array_equal(tall[:, 7:], 0)


def test_stretch_ignores_aspect() -> None:
    img = Image.new("L", (40, 10), 0)
    img.paste(255, (20, 0, 40, 10))  # left half black, right half white
    out = np.asarray(resize_to(img, 10, "stretch"))
    assert out.shape == (10, 10)
    assert (out[:, :4] == 0).all() and (out[:, 6:] == 255).all()  # both halves survive, squeezed
    cropped = np.asarray(resize_to(img, 10, "crop"))
    assert (cropped[:, :5] == 0).all() and (cropped[:, 5:] == 255).all()  # crop keeps only the middle 10


# -- a height x width box ------------------------------------------------------------------------------------------

def test_crop_to_a_wide_box_scales_to_cover_then_takes_the_centre_rows() -> None:
    img = Image.fromarray(np.repeat(np.arange(20, dtype=np.uint8)[:, None] * 10, 20, axis=1), "L")  # row r: 10r
    out = np.asarray(resize_to(img, (10, 20), "crop"))  # H=10, W=20: the width already fits, so scale 1
    assert out.shape == (10, 20)
    np.testing.assert_array_equal(out, np.repeat(np.arange(5, 15, dtype=np.uint8)[:, None] * 10, 20, axis=1))
    # A wide image into a tall box: the height sets the scale (cover), the sides are cut evenly
    wide = np.asarray(resize_to(_columns(20, 5), (20, 10), "crop"))  # 20x5 -> 80x20, columns 35..44 kept
    assert wide.shape == (20, 10)
    assert wide[:, 0].max() < wide[:, -1].min()  # still the left-to-right ramp, from its middle
    assert abs(int(wide[0, 5]) - 100) <= 10  # the centre column of the box is the source's centre (x = 10)


def test_pad_to_a_wide_box_fits_the_height_and_centres_horizontally() -> None:
    out = np.asarray(resize_to(Image.new("L", (20, 20), 255), (10, 30), "pad"))  # scale min(30/20, 10/20)
    assert out.shape == (10, 30)
    want = np.zeros((10, 30), np.uint8)
    want[:, 10:20] = 255  # 10x10 pasted at x = (30 - 10) // 2
    np.testing.assert_array_equal(out, want)
    tall = np.asarray(resize_to(Image.new("L", (12, 40), 255), (10, 30), "pad"))  # scale 1/4: 3x10 (w x h)
    assert tall.shape == (10, 30) and (tall[:, 13:16] == 255).all() and (tall[:, :13] == 0).all() \
        and (tall[:, 16:] == 0).all()  # pasted at x = (30 - 3) // 2


def test_stretch_to_a_box_is_its_exact_height_and_width() -> None:
    img = Image.new("L", (40, 10), 0)
    img.paste(255, (20, 0, 40, 10))
    out = np.asarray(resize_to(img, (12, 24), "stretch"))
    assert out.shape == (12, 24) and (out[:, :11] == 0).all() and (out[:, 13:] == 255).all()
    assert image_to_array(Image.new("RGB", (5, 9)), (12, 24), 3, "pad").shape == (3, 12, 24)


def test_preprocess_stores_a_box_as_height_width_and_a_square_as_an_int() -> None:
    spec = Preprocess(imgsz=[16, 32], channels=1)  # type: ignore[arg-type] - as JSON gives it
    assert spec.imgsz == (16, 32) and spec.hw == (16, 32) and spec.to_dict()["imgsz"] == [16, 32]
    assert Preprocess.from_dict(spec.to_dict()) == spec
    square = Preprocess(imgsz=(16, 16), channels=1)
    assert square.imgsz == 16 and square.to_dict()["imgsz"] == 16 and square.hw == (16, 16)


def test_resize_keeps_an_exact_size_image_and_refuses_empty() -> None:
    img = Image.new("L", (7, 7), 3)
    for mode in ("crop", "pad", "stretch"):
        assert resize_to(img, 7, mode) is img
    with pytest.raises(ValueError, match="no pixels"):
        resize_to(Image.new("L", (0, 5)), 4, "crop")


@pytest.mark.parametrize("mode", ["crop", "pad", "stretch"])
@pytest.mark.parametrize("size", [(1, 1), (3, 50), (50, 3), (17, 16), (64, 64)])
def test_every_resize_mode_gives_imgsz_square(mode: str, size: tuple[int, int]) -> None:
    for img_mode, channels in (("L", 1), ("RGB", 3)):
        img = Image.new(img_mode, size, 200 if img_mode == "L" else (200, 100, 0))
        arr = image_to_array(img, 12, channels, mode)
        assert arr.shape == (channels, 12, 12) and arr.dtype == np.uint8


def test_channels_one_vs_three() -> None:
    red = Image.new("RGB", (4, 4), (255, 0, 0))
    gray = image_to_array(red, 4, 1, "crop")
    assert gray.shape == (1, 4, 4) and (gray == 76).all()  # ITU-R 601-2 luma: 0.299 * 255
    rgb = image_to_array(red, 4, 3, "crop")
    assert rgb.shape == (3, 4, 4)
    np.testing.assert_array_equal(rgb[:, 0, 0], [255, 0, 0])
    from_l = image_to_array(Image.new("L", (4, 4), 100), 4, 3, "crop")
    assert from_l.shape == (3, 4, 4) and (from_l == 100).all()


# ---- arrays from users ----------------------------------------------------------------------------------


@pytest.fixture
def pattern() -> np.ndarray:
    return (np.arange(16 * 16 * 3, dtype=np.int64).reshape(16, 16, 3) % 251).astype(np.uint8)


def test_array_to_uint8_layouts(pattern: np.ndarray) -> None:
    rgb = Preprocess(imgsz=16, channels=3, mean=(0.5,) * 3, std=(0.5,) * 3)
    gray = Preprocess(imgsz=16, channels=1)
    chw = pattern.transpose(2, 0, 1)
    np.testing.assert_array_equal(array_to_uint8(pattern, rgb), chw)  # HWC
    np.testing.assert_array_equal(array_to_uint8(chw, rgb), chw)  # CHW
    np.testing.assert_array_equal(array_to_uint8(torch.from_numpy(chw), rgb), chw)  # a tensor
    hw = pattern[..., 0]
    np.testing.assert_array_equal(array_to_uint8(hw, gray), hw[None])  # HW
    np.testing.assert_array_equal(array_to_uint8(hw[..., None], gray), hw[None])  # HW1
    np.testing.assert_array_equal(array_to_uint8(hw[None], gray), hw[None])  # 1HW
    np.testing.assert_array_equal(array_to_uint8(hw, rgb), np.stack([hw] * 3))  # gray to 3 channels


def test_array_to_uint8_scales_floats_and_clips() -> None:
    spec = Preprocess(imgsz=2, channels=1)
    floats = np.array([[0.0, 0.25], [1.0, 2.0]], np.float32)
    np.testing.assert_array_equal(array_to_uint8(floats, spec), [[[0, 64], [255, 255]]])
    ints = np.array([[-5, 100], [255, 1000]], np.int32)
    np.testing.assert_array_equal(array_to_uint8(ints, spec), [[[0, 100], [255, 255]]])


def test_array_to_uint8_rgba_and_resize() -> None:
    rgba = np.zeros((8, 8, 4), np.uint8)  # transparent black -> white
    out = array_to_uint8(rgba, Preprocess(imgsz=4, channels=3, mean=(0.5,) * 3, std=(0.5,) * 3))
    assert out.shape == (3, 4, 4) and (out == 255).all()
    wide = array_to_uint8(np.full((10, 20), 255, np.uint8), Preprocess(imgsz=10, channels=1, resize="pad"))
    assert (wide[0, 2:7] == 255).all() and (wide[0, :2] == 0).all() and (wide[0, 7:] == 0).all()


@pytest.mark.parametrize(("arr", "match"), [
    (np.zeros(16, np.uint8), "not an image"),
    (np.zeros((2, 3, 8, 8), np.uint8), "not an image"),
    (np.zeros((8, 8, 2), np.uint8), "not an image"),
    (np.zeros((2, 8, 8), np.uint8), "not an image"),
    (np.zeros((0, 8), np.uint8), "not an image"),
    (np.zeros((8, 8), bool), "dtype bool"),
    (np.zeros((8, 8), np.complex64), "dtype complex64"),
    (np.full((8, 8), "a"), "dtype"),
    (np.full((8, 8), np.nan, np.float32), "NaN"),
    (np.full((8, 8), np.inf), "infinite"),
])
def test_array_to_uint8_refuses_non_images(arr: np.ndarray, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        array_to_uint8(arr, Preprocess(imgsz=8, channels=1))


# ---- the spec and normalize -----------------------------------------------------------------------------


def test_preprocess_round_trips_through_json() -> None:
    spec = Preprocess(imgsz=32, channels=3, resize="pad", mean=(0.1, 0.2, 0.3), std=(0.4, 0.5, 0.6))
    d = json.loads(json.dumps(spec.to_dict()))
    assert d == {"imgsz": 32, "channels": 3, "resize": "pad", "mean": [0.1, 0.2, 0.3], "std": [0.4, 0.5, 0.6]}
    assert Preprocess.from_dict(d) == spec
    assert Preprocess.from_dict(Preprocess(imgsz=8, channels=1).to_dict()) == Preprocess(imgsz=8, channels=1)


@pytest.mark.parametrize("kw", [{"channels": 2}, {"channels": 3}, {"channels": 1, "std": (0.5, 0.5)},
                                {"channels": 3, "mean": (0.5,) * 3, "std": (0.5,)}])
def test_preprocess_refuses_inconsistent_channels(kw: dict) -> None:
    with pytest.raises(ConfigError, match="channels"):
        Preprocess(imgsz=8, **kw)


def test_normalize_math() -> None:
    x = torch.tensor([[[[0, 255]], [[51, 102]]]], dtype=torch.uint8)  # [1, 2, 1, 2]
    before = x.clone()
    mean, std = torch.tensor([0.5, 0.2]), torch.tensor([0.5, 0.1])
    out = normalize(x, mean, std)
    assert out.dtype == torch.float32 and out.shape == (1, 2, 1, 2)
    want = torch.tensor([[[[-1.0, 1.0]], [[0.0, 2.0]]]])  # (0-.5)/.5, (1-.5)/.5, (.2-.2)/.1, (.4-.2)/.1
    torch.testing.assert_close(out, want)
    assert torch.equal(x, before)


def test_uint16_arrays_use_their_full_range_like_16_bit_png_files(tmp_path: Path) -> None:
    from pigeon.data.preprocess import Preprocess, array_to_uint8, image_to_array, open_image

    px = np.array([[0, 257, 32768, 65535]] * 4, np.uint16)
    spec = Preprocess(imgsz=4, channels=1, resize="stretch")
    from_array = array_to_uint8(px, spec)
    path = tmp_path / "sixteen.png"
    Image.fromarray(px).save(path)
    from_file = image_to_array(open_image(path), 4, 1, "stretch")
    assert from_array[0, 0].tolist() == [0, 1, 128, 255]
    assert np.array_equal(from_array, from_file)
