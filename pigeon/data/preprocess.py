"""The one preprocessing contract shared by the cache, training, validation and prediction.

decode -> EXIF orientation -> colour mode (L or RGB) -> resize to H x W (imgsz: a square or (H, W)) -> uint8 [C, H, W];
then, on the device, normalize(x) = (x / 255 - mean) / std.  Every checkpoint records these settings.
"""

from __future__ import annotations

import io
import os
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from pigeon.config import Size, as_size, size_hw
from pigeon.errors import ConfigError, ImageError

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif"})  # PIL's
FILE_EXTENSIONS = IMAGE_EXTENSIONS | {".npy", ".dcm"}  # what folders and predict take: rasters too
PIXEL_TOP = {"uint8": 255.0, "uint16": 65535.0}  # what a stored pixel of each dtype is divided by
# Transparent pixels are composited onto white: the colour a transparent PNG shows on a page.
BACKGROUND = 255


@dataclass(frozen=True)
class Preprocess:
    imgsz: Size  # an int is a square; else (height, width)
    channels: int
    resize: str = "crop"  # crop: scale to cover, centre crop; pad: scale to fit, pad; stretch
    mean: tuple[float, ...] = (0.5,)
    std: tuple[float, ...] = (0.5,)
    dtype: str = "uint8"  # how pixels are stored until normalize: uint8, or uint16 for 16-bit rasters

    def __post_init__(self) -> None:
        object.__setattr__(self, "imgsz", as_size(self.imgsz))  # JSON's [h, w] -> (h, w); a square: the int
        if not 1 <= self.channels <= 64 or len(self.mean) != self.channels or len(self.std) != self.channels:
            raise ConfigError(f"preprocess needs 1 to 64 channels with one mean/std each, got {self}")
        if self.dtype not in PIXEL_TOP:
            raise ConfigError(f"preprocess dtype {self.dtype!r} is not one of {', '.join(PIXEL_TOP)}")

    @property
    def raster(self) -> bool:
        """Whether images take the band-by-band path (pigeon.data.rasters) rather than PIL's L/RGB one."""
        return self.dtype != "uint8" or self.channels not in (1, 3)

    @property
    def hw(self) -> tuple[int, int]:
        return size_hw(self.imgsz)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        if isinstance(self.imgsz, tuple):
            d["imgsz"] = list(self.imgsz)  # [height, width]; a square stays the plain int it always was
        if self.dtype == "uint8":
            del d["dtype"]  # the default, left out so 8-bit checkpoints and contracts read as they always did
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Preprocess:
        return cls(imgsz=as_size(d["imgsz"]), channels=int(d["channels"]), resize=str(d["resize"]),
                   mean=tuple(float(v) for v in d["mean"]), std=tuple(float(v) for v in d["std"]),
                   dtype=str(d.get("dtype", "uint8")))


def open_image(source: Any) -> Any:
    """Decode a path, bytes or PIL image fully; raise OSError (cannot read the file) or ImageError (not an
    image pigeon can use) on anything unreadable."""
    from PIL import Image, ImageOps

    if isinstance(source, Image.Image):
        return ImageOps.exif_transpose(source)
    if isinstance(source, (bytes, bytearray)):
        source = io.BytesIO(source)
    elif not isinstance(source, (str, os.PathLike)):
        raise TypeError(f"cannot read an image from {type(source).__name__}")
    try:
        return ImageOps.exif_transpose(_decode(source))
    except (OSError, ImageError):
        raise
    except Exception as err:  # noqa: BLE001 - PIL's decoders also raise SyntaxError, bomb errors, ...
        raise ImageError(f"{type(err).__name__}: {err}") from None


def _decode(source: Any) -> Any:
    from PIL import Image

    with Image.open(source) as opened:
        # An image declaring a huge size is a decompression bomb: refuse it, not just warn. Checked here
        # rather than with warnings.catch_warnings(), which swaps process-global state and so races
        # in the decoder threads.
        w, h = opened.size
        if Image.MAX_IMAGE_PIXELS and w * h > Image.MAX_IMAGE_PIXELS:
            raise ImageError(f"image is {w}x{h} = {w * h} pixels, over PIL.Image.MAX_IMAGE_PIXELS "
                             f"({Image.MAX_IMAGE_PIXELS}): a possible decompression bomb")
        opened.seek(0)  # animated images: the first frame
        opened.load()
        return opened.copy() if opened.mode != "P" else opened.convert("RGBA")


def to_standard_mode(img: Any) -> Any:
    """Map every PIL mode to 'L' (grayscale) or 'RGB', the same way every time."""
    from PIL import Image

    mode = img.mode
    if mode in ("L", "RGB"):
        return img
    if mode == "1":
        return img.convert("L")
    if mode.startswith("I") or mode == "F":
        arr = np.asarray(img).astype(np.float64)
        # 16-bit sources use the full 0..65535 range; 32-bit and float images are scaled by their range.
        top = 65535.0 if mode.startswith("I;16") or arr.max(initial=0) > 255 else 255.0
        if mode == "F":
            top = max(float(arr.max(initial=0)), 1.0)
        return Image.fromarray(np.clip(arr * (255.0 / top), 0, 255).round().astype(np.uint8), "L")
    if mode == "P":
        img = img.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        rgba = img.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (BACKGROUND,) * 4)
        canvas.alpha_composite(rgba)
        return canvas.convert("L" if mode in ("LA", "La") else "RGB")
    return img.convert("RGB")  # CMYK, YCbCr, LAB, HSV, ...


def is_grayscale(img: Any) -> bool:
    return to_standard_mode(img).mode == "L"


def resize_to(img: Any, imgsz: Size, mode: str) -> Any:
    """Resize to the box imgsz (a square or (H, W)): crop scales to cover the box and centre-crops, pad scales
    to fit inside it and pads with black, stretch ignores the aspect ratio."""
    from PIL import Image

    th, tw = size_hw(imgsz)
    w, h = img.size
    if w < 1 or h < 1:
        raise ImageError(f"image has no pixels ({w}x{h})")
    if (w, h) == (tw, th):
        return img
    if mode == "stretch":
        return img.resize((tw, th), Image.BILINEAR)
    # For a square box these are imgsz / shorter side and imgsz / longer side, the same floats as always.
    scale = max(tw / w, th / h) if mode == "crop" else min(tw / w, th / h)
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    img = img.resize((nw, nh), Image.BILINEAR)
    if mode == "crop":
        left, top = (nw - tw) // 2, (nh - th) // 2
        return img.crop((left, top, left + tw, top + th))
    canvas = Image.new(img.mode, (tw, th), 0)
    canvas.paste(img, ((tw - nw) // 2, (th - nh) // 2))
    return canvas


def image_to_array(img: Any, imgsz: Size, channels: int, resize: str) -> np.ndarray:
    """A decoded PIL image -> uint8 array [channels, H, W]."""
    img = to_standard_mode(img)
    img = img.convert("L" if channels == 1 else "RGB")
    arr = np.asarray(resize_to(img, imgsz, resize), dtype=np.uint8)
    return arr[None] if channels == 1 else arr.transpose(2, 0, 1)


def array_to_uint8(arr: np.ndarray | torch.Tensor, spec: Preprocess) -> np.ndarray:
    """A user's array (HW, HWC or CHW; uint8 0..255, uint16 0..65535 or float 0..1) -> uint8 [C, H, W]."""
    from PIL import Image

    a = arr.detach().cpu().numpy() if isinstance(arr, torch.Tensor) else np.asarray(arr)
    if a.ndim == 3 and a.shape[0] in (1, 3, 4) and a.shape[-1] not in (1, 3, 4):
        a = a.transpose(1, 2, 0)  # CHW -> HWC
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[-1] not in (3, 4)) or a.size == 0:
        raise ImageError(f"array of shape {tuple(a.shape)} is not an image; "
                         "give HxW, HxWx1/3/4 or 1/3/4xHxW")
    if a.dtype == np.bool_ or not (np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating)):
        raise ImageError(f"array dtype {a.dtype} is not an image; give uint8 0..255 or float 0..1")
    if np.issubdtype(a.dtype, np.floating):
        if not np.isfinite(a).all():
            raise ImageError("array holds NaN or infinite values")
        a = np.clip(a, 0.0, 1.0) * 255.0
    elif a.dtype == np.uint16:  # a 16-bit image (X-ray, microscope): its full range, as for a 16-bit PNG file
        a = a * (255.0 / 65535.0)
    a = np.clip(a, 0, 255).round().astype(np.uint8)
    mode = "L" if a.ndim == 2 else ("RGB" if a.shape[-1] == 3 else "RGBA")
    return image_to_array(Image.fromarray(a, mode), spec.imgsz, spec.channels, spec.resize)


def normalize(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 (or 16-bit uint16) [N, C, H, W] -> float, on whatever device x lives; mean/std are [C] tensors there.
    16-bit pixels reach here whole: this division is the first place they lose precision (to float32's)."""
    top = 65535.0 if x.dtype == torch.uint16 else 255.0
    return (x.to(torch.float32) / top - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)
