from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from pigeon.data.augment import (
    Augment,
    erase,
    erase_params,
    flip_lr,
    flip_params,
    resized_crop,
    resized_crop_params,
    translate,
    translate_params,
)
from pigeon.errors import ConfigError

Params = tuple[Tensor, ...]
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@functools.lru_cache(maxsize=1)
def _digits() -> Tensor:
    from sklearn.datasets import load_digits

    # The digits hold 0..16; spread them over the full uint8 range.
    pixels = load_digits().images * (255 / 16)
    return torch.from_numpy(pixels).round().to(torch.uint8)[:, None]


def images(n: int, c: int, h: int, w: int, dtype: torch.dtype, device: str = "cpu") -> Tensor:
    """Real handwritten digits resized to h x w; with 3 channels each channel differs, to catch mix-ups."""
    x = F.interpolate(_digits()[:n].float(), size=(h, w), mode="bilinear", align_corners=False)
    if c == 3:
        x = torch.cat([x, 255 - x, x.roll(shifts=1, dims=-1)], dim=1)
    x = x.round().clamp(0, 255).to(torch.uint8)
    x = x if dtype == torch.uint8 else x.to(dtype) / 255
    return x.to(device)


def slice_params(params: Params, i: int) -> Params:
    return tuple(p[i : i + 1] for p in params)


def check_kernel(
    kernel: Callable[..., Tensor],
    x: Tensor,
    params_for_batch: Callable[[int], Params],
    slice_params: Callable[[Params, int], Params],
) -> None:
    """The contract every augmentation kernel honours."""
    params = params_for_batch(x.shape[0])
    before = x.clone()
    out = kernel(x, *params)
    assert torch.equal(x, before), "kernel modified its input in place"
    assert out.untyped_storage().data_ptr() != x.untyped_storage().data_ptr(), "output aliases the input"
    assert out.dtype == x.dtype and out.device == x.device and out.shape == x.shape
    for i in range(x.shape[0]):
        sample = x[i : i + 1]
        alone = kernel(sample, *slice_params(params, i))
        assert torch.equal(out[i : i + 1], alone), f"sample {i} differs when processed alone"
        # A sample the op leaves as is (not flipped, not erased) must still come back as a new tensor.
        assert alone.untyped_storage().data_ptr() != sample.untyped_storage().data_ptr()
    empty = kernel(x[:0], *params_for_batch(0))
    assert empty.shape == (0, *x.shape[1:]) and empty.dtype == x.dtype and empty.device == x.device


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# Each op as (kernel, params_for_batch) given the image size and device. Params are drawn with settings that
# make every branch happen in a small batch: most samples flipped/erased, shifts and crops both ways.
OPS: dict[str, Callable[[int, int, str], tuple[Callable[..., Tensor], Callable[[int], Params]]]] = {
    "flip": lambda h, w, d: (flip_lr, lambda n: (flip_params(n, 0.5, _gen(1), d),)),
    "translate": lambda h, w, d: (translate, lambda n: (translate_params(n, 3, _gen(2), d),)),
    "resized_crop": lambda h, w, d: (
        resized_crop,
        lambda n: (resized_crop_params(n, (0.1, 1.0), generator=_gen(3), device=d),),
    ),
    "erase": lambda h, w, d: (
        functools.partial(erase, value=7),
        lambda n: (erase_params(n, 0.7, h=h, w=w, generator=_gen(4), device=d),),
    ),
}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("size", [(8, 8), (28, 28), (16, 24)], ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32], ids=["uint8", "float32"])
@pytest.mark.parametrize("op", list(OPS))
def test_kernel_contract(op: str, dtype: torch.dtype, channels: int, size: tuple[int, int], device: str):
    h, w = size
    kernel, params_for_batch = OPS[op](h, w, device)
    check_kernel(kernel, images(6, channels, h, w, dtype, device), params_for_batch, slice_params)


# --- flip ---------------------------------------------------------------------------------------------


def test_flip_matches_torch_flip_on_masked_samples():
    x = images(10, 3, 16, 24, torch.uint8)
    mask = flip_params(10, 0.5, _gen(5), "cpu")
    assert 0 < int(mask.sum()) < 10
    out = flip_lr(x, mask)
    for i in range(10):
        expected = torch.flip(x[i], dims=[2]) if mask[i] else x[i]
        assert torch.equal(out[i], expected)


def test_flip_probability():
    for p in (0.0, 0.3, 1.0):
        rate = flip_params(20_000, p, _gen(6), "cpu").float().mean().item()
        assert abs(rate - p) < 0.02


# --- translate -----------------------------------------------------------------------------------------


def _translate_reference(x: Tensor, shifts: Tensor) -> Tensor:
    """Pad by the largest shift, then slice each image's window out of the padding: slow and obvious."""
    h, w = x.shape[-2:]
    pad = int(shifts.abs().max())
    padded = F.pad(x, (pad, pad, pad, pad))
    out = []
    for img, (dy, dx) in zip(padded, shifts.tolist(), strict=True):
        out.append(img[:, pad - dy : pad - dy + h, pad - dx : pad - dx + w])
    return torch.stack(out)


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_translate_matches_pad_and_slice(dtype: torch.dtype):
    x = images(40, 3, 16, 24, dtype)
    # Shifts of 20 exceed the height, so some images move out of view entirely.
    shifts = translate_params(40, 20, _gen(7), "cpu")
    assert torch.equal(translate(x, shifts), _translate_reference(x, shifts))


def test_translate_params_cover_the_range():
    shifts = translate_params(5000, 2, _gen(8), "cpu")
    assert shifts.dtype == torch.int64 and shifts.shape == (5000, 2)
    assert set(shifts.unique().tolist()) == {-2, -1, 0, 1, 2}


def test_translate_by_zero_is_identity():
    x = images(3, 1, 8, 8, torch.uint8)
    assert torch.equal(translate(x, torch.zeros(3, 2, dtype=torch.long)), x)


# --- resized crop --------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [(8, 8), (16, 24)])
def test_resized_crop_full_box_is_identity(size: tuple[int, int]):
    full = torch.tensor([[0.5, 0.5, 1.0, 1.0]]).repeat(5, 1)
    x8 = images(5, 3, *size, torch.uint8)
    assert torch.equal(resized_crop(x8, full), x8)
    xf = images(5, 3, *size, torch.float32)
    torch.testing.assert_close(resized_crop(xf, full), xf, rtol=0, atol=1e-6)


def _bilinear_reference(img: np.ndarray, box: np.ndarray) -> np.ndarray:
    """Per-pixel bilinear resampling of one [C, H, W] image, edges repeated; written from the definition."""
    c, h, w = img.shape
    cy, cx, bh, bw = box
    out = np.zeros_like(img, dtype=np.float64)
    for i in range(h):
        for j in range(w):
            # Pixel centre of the output, as a fraction of the box, placed inside the source image.
            y = ((cy - bh / 2) + bh * (i + 0.5) / h) * h - 0.5
            x = ((cx - bw / 2) + bw * (j + 0.5) / w) * w - 0.5
            y, x = min(max(y, 0.0), h - 1), min(max(x, 0.0), w - 1)
            y0, x0 = int(np.floor(y)), int(np.floor(x))
            y1, x1 = min(y0 + 1, h - 1), min(x0 + 1, w - 1)
            fy, fx = y - y0, x - x0
            top = img[:, y0, x0] * (1 - fx) + img[:, y0, x1] * fx
            bottom = img[:, y1, x0] * (1 - fx) + img[:, y1, x1] * fx
            out[:, i, j] = top * (1 - fy) + bottom * fy
    return out


def test_resized_crop_matches_slow_bilinear():
    x = images(9, 3, 16, 24, torch.float32)
    # Boxes in the corners and at the edges sample up to half a pixel outside the image.
    edges = torch.tensor([[0.25, 0.25, 0.5, 0.5], [0.75, 0.8, 0.5, 0.4], [0.5, 0.1, 1.0, 0.2]])
    boxes = torch.cat([edges, resized_crop_params(6, (0.1, 1.0), generator=_gen(9), device="cpu")])
    out = resized_crop(x, boxes)
    for i in range(9):
        expected = _bilinear_reference(x[i].double().numpy(), boxes[i].double().numpy())
        np.testing.assert_allclose(out[i].numpy(), expected, atol=1e-5)
    # uint8 is the float result rounded, up to a float32 tie at .5.
    x8 = images(9, 3, 16, 24, torch.uint8)
    diff = resized_crop(x8, boxes).int() - resized_crop(x8.float(), boxes).round().int()
    assert diff.abs().max() <= 1


@pytest.mark.parametrize("scale", [(0.35, 1.0), (0.9, 1.0), (0.05, 0.1)])
def test_resized_crop_params_fit_the_image(scale: tuple[float, float]):
    # With a large area, a drawn aspect ratio may not fit; the area must still be honoured.
    boxes = resized_crop_params(5000, scale, generator=_gen(10), device="cpu")
    assert boxes.shape == (5000, 4) and boxes.dtype == torch.float32
    cy, cx, h, w = boxes.unbind(1)
    eps = 1e-6
    assert bool(((cy - h / 2 >= -eps) & (cy + h / 2 <= 1 + eps)).all())
    assert bool(((cx - w / 2 >= -eps) & (cx + w / 2 <= 1 + eps)).all())
    area = h * w
    assert bool(((area >= scale[0] - eps) & (area <= scale[1] + eps)).all())
    ratio = w / h
    assert bool(((ratio >= 3 / 4 - eps) & (ratio <= 4 / 3 + eps)).all())


# --- erase ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_erase_region_is_exactly_the_box(dtype: torch.dtype):
    h, w = 16, 24
    x = images(30, 3, h, w, dtype)
    boxes = erase_params(30, 0.8, h=h, w=w, generator=_gen(11), device="cpu")
    out = erase(x, boxes, value=3)
    expected = x.clone()
    for img, (y0, x0, y1, x1) in zip(expected, boxes.tolist(), strict=True):
        img[:, y0:y1, x0:x1] = 3
    assert torch.equal(out, expected)


def test_erase_params_boxes():
    h, w, n = 16, 24, 20_000
    boxes = erase_params(n, 0.4, h=h, w=w, generator=_gen(12), device="cpu")
    assert boxes.dtype == torch.int64 and boxes.shape == (n, 4)
    y0, x0, y1, x1 = boxes.unbind(1)
    assert bool(((0 <= y0) & (y0 <= y1) & (y1 <= h) & (0 <= x0) & (x0 <= x1) & (x1 <= w)).all())
    erased = (y1 > y0) & (x1 > x0)
    assert torch.equal(erased, (y1 > y0) | (x1 > x0)), "a box is empty in one direction only"
    assert abs(erased.float().mean().item() - 0.4) < 0.02
    # Rounding and clipping move the area a little outside the drawn range, never far.
    area = ((y1 - y0) * (x1 - x0))[erased].float() / (h * w)
    assert area.min() > 0.005 and area.max() < 0.4


# --- Augment -------------------------------------------------------------------------------------------

EVERYTHING = Augment(flip=0.5, translate=3, resized_crop=True, crop_scale=(0.3, 1.0), erase=0.5)


def test_augment_is_reproducible_by_seed():
    x = images(16, 3, 28, 28, torch.uint8)
    a = EVERYTHING(x, _gen(13))
    assert torch.equal(a, EVERYTHING(x, _gen(13)))
    assert not torch.equal(a, EVERYTHING(x, _gen(14)))
    assert a.dtype == x.dtype and a.shape == x.shape


def test_augment_applies_ops_in_order():
    x = images(16, 3, 28, 28, torch.uint8)
    g = _gen(15)
    boxes = resized_crop_params(16, (0.3, 1.0), generator=g, device="cpu")
    shifts = translate_params(16, 3, g, "cpu")
    mask = flip_params(16, 0.5, g, "cpu")
    holes = erase_params(16, 0.5, h=28, w=28, generator=g, device="cpu")
    expected = erase(flip_lr(translate(resized_crop(x, boxes), shifts), mask), holes)
    assert torch.equal(EVERYTHING(x, _gen(15)), expected)


def test_augment_everything_off_returns_input():
    x = images(4, 1, 8, 8, torch.uint8)
    assert Augment(flip=0.0, translate=0, resized_crop=False, erase=0.0)(x, _gen()) is x


def test_augment_flip_only_and_empty_batch():
    x = images(4, 3, 8, 8, torch.float32)
    assert torch.equal(Augment(flip=1.0, translate=0)(x, _gen()), x.flip(-1))
    assert EVERYTHING(x[:0], _gen()).shape == (0, 3, 8, 8)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"flip": 1.5}, "flip"),
        ({"flip": -0.1}, "flip"),
        ({"erase": 2.0}, "erase"),
        ({"translate": -1}, "translate"),
        ({"translate": 1.5}, "translate"),
        ({"crop_scale": (0.0, 1.0)}, "crop_scale"),
        ({"crop_scale": (0.8, 0.5)}, "crop_scale"),
        ({"crop_scale": (0.5, 1.2)}, "crop_scale"),
    ],
)
def test_augment_refuses_invalid_fields(kwargs: dict, field: str):
    with pytest.raises(ConfigError, match=rf"augment\.{field}=.*use"):
        Augment(**kwargs)


def test_augment_accepts_a_list_for_crop_scale():
    assert Augment(crop_scale=[0.5, 1.0]).crop_scale == (0.5, 1.0)  # type: ignore[arg-type]
