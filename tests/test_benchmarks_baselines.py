"""Smoke test for the classical-codec benchmark (benchmarks/baselines.py, benchmarks/plots.py)."""

from __future__ import annotations

import json
import math
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import baselines, plots  # noqa: E402
from benchmarks.common import bits_per_dim, bits_per_pixel, ms_ssim, psnr, rmse  # noqa: E402

COMPRESSAI_KEYS = ("bpp", "psnr-rgb", "ms-ssim-rgb", "encoding_time", "decoding_time")


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from skimage import data

    root = tmp_path_factory.mktemp("bench")
    img_dir = root / "images"
    img_dir.mkdir()
    img = Image.fromarray(data.astronaut()).resize((96, 64), Image.Resampling.BICUBIC)
    img.save(img_dir / "astronaut.png")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a codec missing from the build is allowed
        return baselines.run_baselines(img_dir, root / "out", smoke=True)


def test_metrics_basics() -> None:
    a = np.zeros((4, 4, 3), np.uint8)
    b = a.copy()
    assert psnr(a, b) == math.inf and rmse(a, b) == 0.0
    b[0, 0, 0] = 255
    assert math.isclose(psnr(a, b), 10 * math.log10(48))
    assert math.isnan(ms_ssim(a, b))  # too small for 5-scale MS-SSIM
    assert bits_per_pixel(3, 2, 4) == 3.0 and bits_per_dim(3, 2, 4, 3) == 1.0


def test_lossy_jsons(smoke_run: dict[str, Path]) -> None:
    assert "jpeg" in smoke_run  # Pillow JPEG is always available
    for key, path in smoke_run.items():
        if key == "lossless":
            continue
        doc = json.loads(path.read_text())
        assert path.name == f"{key}.json"
        assert {"name", "description", "results", "per_image", "machine"} <= set(doc)
        res = doc["results"]
        assert set(COMPRESSAI_KEYS) <= set(res)
        assert len(res["bpp"]) == 2 and all(len(res[k]) == 2 for k in COMPRESSAI_KEYS)
        assert all(b > 0 for b in res["bpp"])
        assert all(p is not None and math.isfinite(p) for p in res["psnr-rgb"])
    jpeg = json.loads(smoke_run["jpeg"].read_text())["results"]
    assert jpeg["psnr-rgb"][1] > jpeg["psnr-rgb"][0]
    assert jpeg["bpp"][1] > jpeg["bpp"][0]


def test_lossless_json(smoke_run: dict[str, Path]) -> None:
    doc = json.loads(smoke_run["lossless"].read_text())
    res = doc["results"]
    assert "PNG" in res["codec"]
    for name, bpd in zip(res["codec"], res["bits_per_dim"]):
        assert 0 < bpd < 8, name
    png = baselines.lossless_codecs()["png"]
    x = (np.arange(40 * 30 * 3) % 253).astype(np.uint8).reshape(30, 40, 3)
    per = baselines.run_lossless(png, {"x": x})  # asserts the bit-exact round trip itself
    assert per["x"]["bpp"] == pytest.approx(3 * per["x"]["bits_per_dim"])


def test_interpolation() -> None:
    doc = {"results": {"bpp": [1.0, 0.5, 2.0], "psnr-rgb": [30.0, 28.0, 34.0]}}
    assert baselines.interpolate_psnr_at_bpp(doc, 0.75) == pytest.approx(29.0)
    assert math.isnan(baselines.interpolate_psnr_at_bpp(doc, 3.0))


def test_plots(smoke_run: dict[str, Path], tmp_path: Path) -> None:
    lossy = [p for k, p in smoke_run.items() if k != "lossless"]
    rd = plots.plot_rd(lossy, tmp_path / "rd.png", xlim=(0.0, 8.0))
    bars = plots.plot_lossless_bars(smoke_run["lossless"], {"ours": 3.0}, tmp_path / "ll.png")
    for p in (rd, bars):
        assert p.stat().st_size > 1000
        with Image.open(p) as im:
            assert im.format == "PNG"
