"""Shared fixtures: small generated/skimage images and tiny models; nothing from ../shared."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

# Small models on small images gain nothing from a second thread, and an oversubscribed core
# makes OpenMP spin (100x slower): tests run single-threaded.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_images() -> list[np.ndarray]:
    """A few small natural images (uint8 HxWx3) from scikit-image, downscaled."""
    from skimage import data

    out = []
    for name, size in (("astronaut", (40, 40)), ("coffee", (48, 32)), ("chelsea", (37, 23))):
        img = Image.fromarray(getattr(data, name)()).resize(size, Image.Resampling.LANCZOS)
        out.append(np.asarray(img.convert("RGB")))
    return out


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory, tiny_images) -> str:
    folder = tmp_path_factory.mktemp("imgs")
    from skimage import data

    for name in ("astronaut", "coffee", "chelsea", "rocket"):
        im = Image.fromarray(getattr(data, name)())
        im.resize((im.width // 6, im.height // 6), Image.Resampling.LANCZOS).save(folder / f"{name}.png")
    return str(folder)
