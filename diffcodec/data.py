"""Images in and out: reading, tensors on [-1, 1], and random training crops."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .errors import ImageError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".gif"}


def load_rgb(path: str | Path) -> np.ndarray:
    """An image as uint8 H x W x 3 (any Pillow-readable file; grey and palette are expanded)."""
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"), dtype=np.uint8)
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise ImageError(f"cannot read image {path}: {e}") from None


def open_image(path: str | Path) -> Image.Image:
    """A Pillow image, fully loaded, in its own mode (a clear ImageError if unreadable)."""
    try:
        im = Image.open(path)
        im.load()
        return im
    except (OSError, ValueError, Image.DecompressionBombError, SyntaxError) as e:
        raise ImageError(f"cannot read image {path}: {e}") from None


def list_images(folder: str | Path) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise ImageError(f"not a folder of images: {folder}")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise ImageError(f"no images found in {folder}")
    return files


def to_tensor(img: np.ndarray) -> torch.Tensor:
    """uint8 H x W x C -> float32 [C, H, W] on [-1, 1] (level k maps to k/127.5 - 1)."""
    if img.ndim == 2:
        img = img[:, :, None]
    return torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))).float() / 127.5 - 1.0


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """float [C, H, W] on [-1, 1] -> uint8 H x W x C (rounded to the nearest level, clipped)."""
    arr = ((x.detach().double().cpu() + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8)
    return arr.permute(1, 2, 0).numpy()


class ImageCrops:
    """All images of a folder in memory, sampled as random crops with flips (and rescaling)."""

    def __init__(self, folder: str | Path, crop: int, rescale: tuple[float, float] = (1.0, 1.0)) -> None:
        self.crop = crop
        self.rescale = rescale
        self.images = []
        for path in list_images(folder):
            img = load_rgb(path)
            if min(img.shape[:2]) >= crop:
                self.images.append(img)
        if not self.images:
            raise ImageError(f"no image in {folder} is at least {crop} px on its short side")

    def __len__(self) -> int:
        return len(self.images)

    def batch(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """n random crops as a float [n, 3, crop, crop] batch on [-1, 1]."""
        out = torch.empty(n, 3, self.crop, self.crop)
        for i in range(n):
            img = self.images[int(torch.randint(len(self.images), (1,), generator=generator))]
            lo, hi = self.rescale
            scale = lo + (hi - lo) * float(torch.rand((), generator=generator))
            if scale != 1.0:
                h, w = img.shape[:2]
                size = (max(self.crop, round(w * scale)), max(self.crop, round(h * scale)))
                img = np.asarray(Image.fromarray(img).resize(size, Image.Resampling.LANCZOS))
            h, w = img.shape[:2]
            y = int(torch.randint(h - self.crop + 1, (1,), generator=generator))
            x = int(torch.randint(w - self.crop + 1, (1,), generator=generator))
            crop = to_tensor(img[y:y + self.crop, x:x + self.crop])
            if torch.rand((), generator=generator) < 0.5:
                crop = crop.flip(-1)
            out[i] = crop
        return out

    def fixed_crops(self, n: int, seed: int = 0) -> torch.Tensor:
        """A deterministic set of n crops (for held-out evaluation)."""
        g = torch.Generator().manual_seed(seed)
        saved, self.rescale = self.rescale, (1.0, 1.0)
        try:
            return self.batch(n, g)
        finally:
            self.rescale = saved
