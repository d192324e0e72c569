"""Smoke test of the codec's own RD benchmark (benchmarks/rd_diffcodec.py) so it cannot rot."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from codec_fixtures import tiny_model_path  # noqa: F401  (fixture)

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import rd_diffcodec  # noqa: E402


def test_rd_benchmark_smoke(tmp_path, tiny_model_path):  # noqa: F811
    out = tmp_path / "rd"
    assert rd_diffcodec.main(["--smoke", "--out", str(out), "--model", str(tiny_model_path), "--steps", "3",
                              "--pfr-budget", "0"]) == 0
    doc = json.loads((out / "diffcodec.json").read_text())
    assert set(doc["results"]) >= {"bpp", "psnr-rgb", "ms-ssim-rgb", "encoding_time", "decoding_time"}
    ps = doc["per_step"]
    assert len(ps["step"]) == 3 + 2  # x_T only, 3 latent steps, the final step
    assert np.all(np.diff(ps["bpp"]) > 0)  # every step adds bytes
    assert ps["rmse"][-1] == 0.0  # the last step is lossless
    summary = doc["summary"]
    np.testing.assert_allclose(summary["lossless_bits_per_dim"], ps["bits_per_dim"][-1])
    assert summary["latent_bits_per_dim"] + summary["final_bits_per_dim"] < summary["lossless_bits_per_dim"]
    assert len(doc["results"]["bpp"]) == 4  # the lossy points
    assert doc["per_image"]["astronaut_32"]["latent_coders"] == ["uq"] * 3  # a zero PFR budget: UQ only
    table = (out / "diffcodec_table4.md").read_text()
    assert table.count("\n") == 2 + 5
    for png in ("diffcodec_rate_distortion_vs_step.png", "diffcodec_progression.png"):
        assert (out / png).stat().st_size > 1000


def test_pfr_speed_smoke(tmp_path):
    import pfr_speed

    out = tmp_path / "speed.json"
    assert pfr_speed.main(["--size", "8", "--kl", "0.5", "--chunk-bits", "6", "--margin", "3", "--out", str(out)]) == 0
    (row,) = json.loads(out.read_text())["rows"]
    assert row["chunks"] >= 1 and row["candidate_pairs"] > 0 and row["pairs_per_second"] > 0
    assert 0.5 < row["coded_over_kl"] < 4  # about the KL plus a few bits per chunk
