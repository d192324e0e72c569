"""Images in the codec: which modes are kept losslessly, and how they go to and from RGB.

The chain always codes three channels on [-1, 1].  RGB images go as they are; grey (L) and
bilevel (1) images are replicated into three identical channels (the final step codes one);
palette (P) images go as their RGB colours and are mapped back to indices exactly (so a
palette with duplicate colours is refused).  Alpha, 16-bit, float and CMYK images are refused.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np
from PIL import Image

from . import container as fmt
from .errors import ImageError


@dataclass
class SourceImage:
    """An input image as the codec codes it: float RGB on [-1, 1] plus how to restore it."""

    pixels: np.ndarray  # uint8 H x W x 3 (grey replicated) — what the chain codes
    mode: str  # 'L', 'RGB', 'P' or '1'
    palette: bytes = b""
    native: np.ndarray | None = None  # mode-native array (indices for P, grey for L/1)

    @property
    def coded_channels(self) -> int:
        return 1 if self.mode in ("L", "1") else 3

    def checksum(self) -> int:
        return zlib.crc32(np.ascontiguousarray(self.native).tobytes())


def prepare_image(image: Image.Image | np.ndarray) -> SourceImage:
    """Validate an input image: RGB, grey, bilevel and palette images are coded losslessly;
    alpha, 16-bit, float and CMYK images are refused."""
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (1, 3)):
            raise ImageError("arrays must be uint8 H x W (grey) or H x W x 3 (RGB)")
        image = Image.fromarray(image[:, :, 0] if image.ndim == 3 and image.shape[2] == 1 else image)
    mode = image.mode
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in image.info):
        raise ImageError(f"images with an alpha channel ({mode}) are not supported: flatten them first")
    if mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        raise ImageError(f"{mode} images (16-bit or float) are not supported: convert to 8-bit first")
    if mode not in fmt.MODES:
        raise ImageError(f"{mode} images are not supported (use RGB, L, P or 1)")
    w, h = image.size
    if not (1 <= w <= fmt.MAX_SIDE and 1 <= h <= fmt.MAX_SIDE) or w * h > fmt.MAX_PIXELS:
        raise ImageError(f"image size {w}x{h} is out of range (at most {fmt.MAX_SIDE} px a side)")
    if mode == "P":
        palette = bytes(image.getpalette() or [])[:768]
        native = np.asarray(image, dtype=np.uint8)
        pal = np.frombuffer(palette, dtype=np.uint8).reshape(-1, 3)
        if native.max() >= len(pal):
            raise ImageError("palette image uses indices beyond its palette")
        rgb = pal[native]
        if not np.array_equal(_palette_indices(rgb, palette), native):
            raise ImageError("palette image has duplicate colours: convert it to RGB to code it losslessly")
        return SourceImage(rgb, "P", palette, native)
    if mode in ("L", "1"):
        native = np.asarray(image.convert("L"), dtype=np.uint8)
        return SourceImage(np.repeat(native[:, :, None], 3, axis=2), mode, b"", native)
    rgb = np.asarray(image, dtype=np.uint8)
    return SourceImage(rgb, "RGB", b"", rgb)


def _palette_indices(rgb: np.ndarray, palette: bytes) -> np.ndarray:
    """Map RGB pixels back to palette indices (first index of each colour)."""
    pal = np.frombuffer(palette, dtype=np.uint8).reshape(-1, 3).astype(np.int64)
    keys = (pal[:, 0] << 16) | (pal[:, 1] << 8) | pal[:, 2]
    lut = {}
    for i, key in enumerate(keys.tolist()):
        lut.setdefault(key, i)
    flat = (rgb[..., 0].astype(np.int64) << 16) | (rgb[..., 1].astype(np.int64) << 8) | rgb[..., 2]
    uniq, inv = np.unique(flat, return_inverse=True)
    idx = np.array([lut.get(k, 0) for k in uniq.tolist()], dtype=np.uint8)
    return idx[inv].reshape(flat.shape)


def restore_image(rgb: np.ndarray, header: fmt.Header, lossless: bool) -> Image.Image:
    """The decoded RGB array as a Pillow image in the original mode (lossless) or a preview."""
    if header.mode in ("L", "1"):
        grey = rgb[:, :, 0] if lossless else np.round(rgb.astype(np.float64).mean(axis=2)).astype(np.uint8)
        img = Image.fromarray(grey, "L")
        return img.convert("1") if header.mode == "1" and lossless else img
    if header.mode == "P" and lossless:
        img = Image.fromarray(_palette_indices(rgb, header.palette), "P")
        img.putpalette(header.palette)
        return img
    return Image.fromarray(rgb, "RGB")


def native_array(img: Image.Image, mode: str) -> np.ndarray:
    return np.asarray(img.convert("L") if mode == "1" else img, dtype=np.uint8)
