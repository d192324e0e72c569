"""Smoke tests of the classical-codec benchmark (benchmarks.baselines), the plots
(benchmarks.plots) and the shared helpers (benchmarks.common)."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from benchmarks import baselines, plots
from benchmarks.common import (
    BASELINES, bits_per_dim, bits_per_pixel, center_crop, interpolate_psnr_at_bpp, lossless_bars_figsize, ms_ssim,
    psnr, rmse, table4_markdown,
)

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
        assert doc["settings"]["values"] == list(baselines.lossy_codecs()[key].smoke_settings)
        (per,) = doc["per_image"].values()  # one image: the means are its numbers
        assert per["bpp"] == res["bpp"] and per["psnr-rgb"] == res["psnr-rgb"]
    jpeg = json.loads(smoke_run["jpeg"].read_text())["results"]
    assert jpeg["psnr-rgb"][1] > jpeg["psnr-rgb"][0]
    assert jpeg["bpp"][1] > jpeg["bpp"][0]


def test_lossless_json(smoke_run: dict[str, Path]) -> None:
    doc = json.loads(smoke_run["lossless"].read_text())
    res = doc["results"]
    assert "PNG" in res["codec"]
    assert res["codec"] == list(doc["per_image"]) == list(doc["codecs"])
    for name, bpd, bpp in zip(res["codec"], res["bits_per_dim"], res["bpp"]):
        assert 0 < bpd < 8, name
        assert bpp == pytest.approx(3 * bpd)
        (per,) = doc["per_image"][name].values()
        assert per["bits_per_dim"] == pytest.approx(bpd) and per["bits_per_dim"] == pytest.approx(
            8 * per["bytes"] / (96 * 64 * 3))
    png = baselines.lossless_codecs()["png"]
    x = (np.arange(40 * 30 * 3) % 253).astype(np.uint8).reshape(30, 40, 3)
    per = baselines.run_lossless(png, {"x": x})  # asserts the bit-exact round trip itself
    assert per["x"]["bpp"] == pytest.approx(3 * per["x"]["bits_per_dim"])


def test_baseline_names_are_the_lossy_codecs() -> None:
    assert tuple(baselines.lossy_codecs()) == BASELINES


def test_main_writes_the_jsons(tmp_path: Path, smoke_run: dict[str, Path], capsys) -> None:
    img_dir = smoke_run["jpeg"].parents[1] / "images"
    assert baselines.main(["--images", str(img_dir), "--out", str(tmp_path), "--codecs", "jpeg", "--smoke",
                           "--skip-lossless"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["jpeg.json"]
    doc = json.loads((tmp_path / "jpeg.json").read_text())
    assert doc["command"] == f"python -m benchmarks.baselines --images {img_dir} --out {tmp_path} --codecs jpeg " \
                             "--smoke --skip-lossless"
    assert doc["results"] == json.loads(smoke_run["jpeg"].read_text())["results"] | {
        k: doc["results"][k] for k in ("encoding_time", "decoding_time")}  # same bytes, other timings
    assert "| JPEG |" in capsys.readouterr().out  # the summary table


def test_interpolation() -> None:
    doc = {"results": {"bpp": [1.0, 0.5, 2.0, None], "psnr-rgb": [30.0, 28.0, 34.0, 40.0]}}
    assert interpolate_psnr_at_bpp(doc, 0.75) == pytest.approx(29.0)
    assert interpolate_psnr_at_bpp(doc, 2.0) == pytest.approx(34.0)
    assert math.isnan(interpolate_psnr_at_bpp(doc, 3.0))
    assert math.isnan(interpolate_psnr_at_bpp(doc, 0.25))


def test_center_crop() -> None:
    img = np.arange(5 * 8 * 3, dtype=np.uint8).reshape(5, 8, 3)
    assert center_crop(img, 0) is img and center_crop(img, None) is img
    c = center_crop(img, 4)
    assert c.shape == (4, 4, 3) and c.flags["C_CONTIGUOUS"]
    assert np.array_equal(c, img[0:4, 2:6])
    assert np.array_equal(center_crop(img, 100), img)  # clipped to the image


def test_table4_markdown() -> None:
    ps = {"step": [0, 1, 2], "timestep": [999, 10, -1], "bits_per_dim": [0.1, 1.25, 3.5],
          "ideal_bits_per_dim": [0.0, 1.0, 3.0], "bpp": [0.3, 3.75, 10.5], "rmse": [70.0, 3.0, 0.0],
          "psnr": [11.2, 38.6, None]}
    old = table4_markdown(ps).splitlines()  # JSONs written before codec v2 have no coder column
    assert len(old) == 2 + 3 and old[0].startswith("| step | from t |")
    assert old[2] == "| 0 | 999 | 0.1000 | 0.0000 | 0.3000 | 70.000 | 11.20 |"
    assert old[4] == "| 2 | x_0 | 3.5000 | 3.0000 | 10.5000 | 0.000 | inf |"
    new = table4_markdown(ps | {"kind": [None, "uq", "final"]}).splitlines()
    assert new[0].startswith("| step | coder | from t |") and new[1].count("|") == old[1].count("|") + 1
    assert new[2].startswith("| 0 | – | 999 |") and new[3].startswith("| 1 | uq | 10 |")
    assert new[4].startswith("| 2 | final | x_0 | 3.5000 |")


def _png_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as im:
        assert im.format == "PNG"
        return im.size


def test_plots(smoke_run: dict[str, Path], tmp_path: Path) -> None:
    lossy = [p for k, p in smoke_run.items() if k != "lossless"]
    rd = plots.plot_rd(lossy, tmp_path / "rd.png", xlim=(0.0, 8.0))
    bars = plots.plot_lossless_bars(smoke_run["lossless"], {"ours": 3.0}, tmp_path / "ll.png")
    assert rd == tmp_path / "rd.png" and bars == tmp_path / "ll.png"
    assert _png_size(rd) == (900, 660)  # 7.5 x 5.5 in at 120 dpi
    n = len(json.loads(smoke_run["lossless"].read_text())["results"]["codec"]) + 1
    w, h = lossless_bars_figsize(n)
    assert _png_size(bars) == (round(120 * w), round(120 * h))
    assert lossless_bars_figsize(1) == (6.0, 4.8) and lossless_bars_figsize(10) == pytest.approx((13.0, 4.8))


def test_plots_cli(smoke_run: dict[str, Path], tmp_path: Path, capsys) -> None:
    lossy = [str(p) for k, p in smoke_run.items() if k != "lossless"]
    assert plots.main(["rd", str(tmp_path / "rd.png"), *lossy, "--metric", "psnr-rgb", "--xmax", "8"]) == 0
    assert plots.main(["lossless", str(tmp_path / "ll.png"), str(smoke_run["lossless"]),
                       "--extra", "ours (bound)=2.5", "a=b=3"]) == 0
    printed = capsys.readouterr().out.split()
    assert printed == [str(tmp_path / "rd.png"), str(tmp_path / "ll.png")]
    assert _png_size(tmp_path / "rd.png") == (900, 660)
    n = len(json.loads(smoke_run["lossless"].read_text())["results"]["codec"]) + 2
    assert _png_size(tmp_path / "ll.png") == tuple(round(120 * v) for v in lossless_bars_figsize(n))
    assert plots.parse_extra(["ours (bound)=2.5", "a=b=3"]) == {"ours (bound)": 2.5, "a=b": 3.0}
    with pytest.raises(Exception):
        plots.parse_extra(["no value"])
