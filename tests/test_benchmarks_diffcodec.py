"""Smoke tests of the codec's own benchmark scripts (benchmarks.rd_diffcodec, bound, sweep_steps,
pfr_speed, make_results) so they cannot rot: tiny images, tiny random models, a few steps.  Each
asserts what the script's output must satisfy, not only that it exists."""

from __future__ import annotations

import ast
import importlib
import json
import math
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from benchmarks import baselines, bound, make_results, pfr_speed, rd_diffcodec, sweep_steps
from benchmarks.common import (
    BASELINES, center_crop, interpolate_psnr_at_bpp, lossless_bars_figsize, table4_markdown,
)
from codec_fixtures import tiny_model_path  # noqa: F401  (fixture)
from diffcodec.checkpoint import attach_xstart_mse, load_prior
from diffcodec.likelihood import bits_per_dim
from diffcodec.trajectory import EFFORTS

SCRIPTS = ("rd_diffcodec", "baselines", "bound", "sweep_steps", "pfr_speed", "make_results", "plots", "symmetry",
           "rd_merge", "layouts", "xstart_error", "calibrate")
COMPRESSAI_KEYS = {"bpp", "psnr-rgb", "ms-ssim-rgb", "encoding_time", "decoding_time"}
K = 3  # latent steps of the smoke runs
SIZES = {"astronaut.png": (32, 32), "coffee.png": (24, 20)}  # name: (width, height)


def _strict(path: Path) -> dict:
    """A JSON file that must be strict JSON (no NaN / Infinity tokens)."""
    def bad(token):
        raise AssertionError(f"{path.name} holds {token}")

    return json.loads(path.read_text(), parse_constant=bad)


def _png_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as im:
        assert im.format == "PNG"
        return im.size


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def images_dir(tmp_path_factory) -> Path:
    from skimage import data

    folder = tmp_path_factory.mktemp("bench_images")
    for name, size in SIZES.items():
        src = getattr(data, name.split(".")[0])()
        Image.fromarray(src).resize(size, Image.Resampling.LANCZOS).save(folder / name)
    return folder


@pytest.fixture(scope="module")
def table_model_path(tiny_model_path, tmp_path_factory) -> Path:  # noqa: F811
    """The tiny model with a synthetic x_0 error table: the planner optimises its chain and
    predicts its size."""
    table = np.linspace(1e-4, 0.3, 1000)[:, None] * np.array([[1.0, 0.9, 1.1]])
    path = tmp_path_factory.mktemp("models_table") / "tiny_table.pt"
    attach_xstart_mse(tiny_model_path, path, table)
    return path


@pytest.fixture(scope="module")
def baseline_dir(images_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bench_baselines")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a codec missing from the build is allowed
        written = baselines.run_baselines(images_dir, out, codecs=["jpeg", "webp"], smoke=True)
    assert {"jpeg", "lossless"} <= set(written)
    return out


@pytest.fixture(scope="module")
def rd_run(images_dir, baseline_dir, tiny_model_path, tmp_path_factory):  # noqa: F811
    """rd_diffcodec on two images (UQ, 3 steps) with the bound and the baselines' plots."""
    out = tmp_path_factory.mktemp("bench_rd")
    assert rd_diffcodec.main(["--images", str(images_dir), "--out", str(out), "--model", str(tiny_model_path),
                              "--steps", str(K), "--method", "uq", "--bound-steps", "4",
                              "--baselines", str(baseline_dir)]) == 0
    return out, _strict(out / "diffcodec.json")


# --------------------------------------------------------------------------- every script


@pytest.mark.parametrize("name", SCRIPTS)
def test_every_script_has_a_working_help(name, capsys):
    module = importlib.import_module(f"benchmarks.{name}")
    with pytest.raises(SystemExit) as e:
        module.main(["--help"])
    assert e.value.code == 0
    assert f"python -m benchmarks.{name}" in capsys.readouterr().out


def test_scripts_run_as_modules_from_the_repository_root():
    root = Path(__file__).resolve().parents[1]
    r = subprocess.run([sys.executable, "-m", "benchmarks.rd_diffcodec", "--help"], cwd=root, capture_output=True,
                       text=True, timeout=120, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert r.returncode == 0, r.stderr
    for option in ("--effort", "--method", "--steps", "--t-min", "--bound-steps"):
        assert option in r.stdout
    assert "--pfr-budget" not in r.stdout


def test_benchmarks_do_not_import_each_other_or_private_names():
    """Issue #14: the scripts import the public library and benchmarks.common only."""
    root = Path(__file__).resolve().parents[1] / "benchmarks"
    assert (root / "__init__.py").exists() and not (root / "pfr_vs_uq.py").exists()
    for path in root.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):  # no edits of the import path
                assert (node.value.id, node.attr) != ("sys", "path"), path.name
            if isinstance(node, ast.Import):
                modules = [(a.name, a.name) for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                assert node.level == 0, (path.name, "relative import")
                modules = [(node.module, f"{node.module}.{a.name}") for a in node.names]
            else:
                continue
            for module, full in modules:
                top = module.split(".")[0]
                if top in ("diffcodec", "benchmarks"):
                    assert not any(part.startswith("_") for part in full.split(".")), (path.name, full)
                if top == "benchmarks":
                    assert full.startswith("benchmarks.common"), (path.name, full)
                assert top not in ("common", *SCRIPTS), (path.name, full)  # no top-level sibling imports


# --------------------------------------------------------------------------- rd_diffcodec


def test_rd_json_per_step(rd_run, images_dir):
    out, doc = rd_run
    assert COMPRESSAI_KEYS <= set(doc["results"])
    assert doc["command"].startswith("python -m benchmarks.rd_diffcodec ")
    assert doc["options"]["effort"] == 5 and doc["options"]["method"] == "uq" and doc["options"]["steps"] == K
    ps = doc["per_step"]
    n = K + 2  # x_T only, K latent steps, the final step
    assert all(len(v) == n for v in ps.values()), {k: len(v) for k, v in ps.items()}
    assert ps["step"] == list(range(n))
    assert ps["kind"][0] is None and ps["kind"][1:-1] == ["uq"] * K and ps["kind"][-1] in ("final", "final+chan")
    assert ps["timestep"][0] == 999 and ps["timestep"][-1] == -1 and np.all(np.diff(ps["timestep"]) < 0)
    assert np.all(np.diff(ps["bpp"]) > 0)  # every step adds bytes
    np.testing.assert_allclose(ps["bpp"], 3 * np.asarray(ps["bits_per_dim"]))
    assert np.all(np.diff(ps["ideal_bits_per_dim"]) > 0) and ps["ideal_bits_per_dim"][0] == 0
    assert ps["rmse"][-1] == 0.0 and ps["psnr"][-1] is None  # lossless: RMSE 0, PSNR inf (null)
    assert all(r > 0 for r in ps["rmse"][:-1]) and all(math.isfinite(p) for p in ps["psnr"][:-1])
    np.testing.assert_allclose(ps["encoder_rmse"], ps["rmse"], rtol=1e-12)  # the decode replays the encode
    assert all(v is None for v in ps["expected_bits_per_dim"])  # the tiny model has no error table
    lossy = list(range(n - 1))
    assert doc["results"]["bpp"] == [ps["bpp"][i] for i in lossy]
    assert doc["results"]["psnr-rgb"] == [ps["psnr"][i] for i in lossy]
    table = (out / "diffcodec_table4.md").read_text()
    assert table == table4_markdown(ps) + "\n"
    rows = table.splitlines()[2:]
    assert len(rows) == n
    for i, row in enumerate(rows):
        assert row.startswith(f"| {i} | {ps['kind'][i] or '–'} | ")
        assert f"| {ps['bits_per_dim'][i]:.4f} |" in row and f"| {ps['bpp'][i]:.4f} |" in row


def test_rd_json_per_image_and_summary(rd_run, images_dir, tiny_model_path):  # noqa: F811
    _, doc = rd_run
    prior = load_prior(tiny_model_path)
    per_image, summary = doc["per_image"], doc["summary"]
    assert set(per_image) == set(SIZES)
    for name, r in per_image.items():
        (w, h), dims = SIZES[name], 3 * SIZES[name][0] * SIZES[name][1]
        assert (r["width"], r["height"]) == (w, h) and r["lossless"]
        steps = r["steps"]
        assert r["plan"]["timesteps"][::-1] == [s["timestep"] for s in steps[:-1]]  # plan: ascending
        assert r["plan"]["coders"] == r["latent_coders"] == ["uq"] * K
        assert r["plan"]["expected_bits_per_dim"] is None
        sizes = [s["bytes"] for s in steps]
        assert steps[0]["step_bytes"] == sizes[0] == r["header_bytes"] and sizes[-1] == r["bytes"]
        assert np.diff(sizes).tolist() == [s["step_bytes"] for s in steps[1:]]
        assert r["latent_bits_per_dim"] == pytest.approx(8 * sum(s["step_bytes"] for s in steps[1:-1]) / dims)
        assert r["header_bits_per_dim"] + r["latent_bits_per_dim"] + r["final_bits_per_dim"] == \
            pytest.approx(steps[-1]["bits_per_dim"])
        assert r["ideal_latent_bits_per_dim"] + r["ideal_final_bits_per_dim"] == \
            pytest.approx(steps[-1]["ideal_bits_per_dim"])
        assert 0 < r["coded_latent_bits_per_dim"] <= r["latent_bits_per_dim"]
        # one network call per coded step, in the encoder and in the decoder
        assert r["encode_network_calls"] == r["decode_network_calls"] == K + 1
        calls = [s["decode_network_calls"] for s in steps]
        assert np.all(np.diff(calls) >= 0) and calls[-1] == K + 1
        assert 0 < r["encode_network_seconds"] <= r["encode_seconds"]
        assert 0 < r["decode_network_seconds"] <= r["decode_seconds"]
        assert r["bound_steps"] == 4 and r["bound_variance"] == "model"
        img = np.asarray(Image.open(images_dir / name).convert("RGB"))
        assert r["bound_bits_per_dim"] == pytest.approx(bits_per_dim(img, prior, 4).total)
        assert r["gap_to_bound"] == pytest.approx(steps[-1]["bits_per_dim"] - r["bound_bits_per_dim"])
    ps = doc["per_step"]
    # the summary is the per-step table's last value and the mean over images
    assert summary["lossless_bits_per_dim"] == pytest.approx(ps["bits_per_dim"][-1])
    assert summary["ideal_bits_per_dim"] == pytest.approx(ps["ideal_bits_per_dim"][-1])
    for key in ("latent_bits_per_dim", "final_bits_per_dim", "encode_network_calls", "bound_bits_per_dim"):
        assert summary[key] == pytest.approx(np.mean([r[key] for r in per_image.values()])), key
    assert summary["lossless_bits_per_dim"] == pytest.approx(
        np.mean([r["steps"][-1]["bits_per_dim"] for r in per_image.values()]))
    assert summary["gap_to_bound"] == pytest.approx(summary["lossless_bits_per_dim"] - summary["bound_bits_per_dim"])
    assert summary["expected_bits_per_dim"] is None


def test_rd_plots(rd_run, baseline_dir):
    out, doc = rd_run
    assert _png_size(out / "diffcodec_rate_distortion_vs_step.png") == (1200, 480)
    first = next(iter(doc["per_image"].values()))  # the strip shows the first image's previews
    frames = min(8, K + 2)
    assert _png_size(out / "diffcodec_progression.png") == (frames * first["width"], first["height"])
    assert _png_size(out / "rd_psnr.png") == (900, 660)
    codecs = _strict(baseline_dir / "lossless.json")["results"]["codec"]
    w, h = lossless_bars_figsize(len(codecs) + 3)  # + file, ideal, bound
    assert _png_size(out / "lossless_bars.png") == (round(w * 120), round(h * 120))


@pytest.mark.parametrize("method,symmetry", [("uq", None), ("pfr", 2)])
def test_rd_smoke_method(method, symmetry, tmp_path, tiny_model_path):  # noqa: F811
    out = tmp_path / "rd"
    extra = [] if symmetry is None else ["--symmetry", str(symmetry)]
    assert rd_diffcodec.main(["--smoke", "--out", str(out), "--model", str(tiny_model_path), "--steps", str(K),
                              "--method", method, *extra]) == 0
    doc = _strict(out / "diffcodec.json")
    (r,) = doc["per_image"].values()
    assert r["symmetry"] == doc["options"]["symmetry"] == (symmetry or EFFORTS[5].symmetry)
    assert r["latent_coders"] == r["plan"]["coders"] == [method] * K
    assert (r["plan"]["chunk_bits"], r["plan"]["margin_bits"]) == (EFFORTS[5].chunk_bits, EFFORTS[5].margin_bits)
    assert "bound_bits_per_dim" not in doc["summary"] and "gap_to_bound" not in doc["summary"]
    assert doc["per_step"]["rmse"][-1] == 0.0
    assert f"method {method}" in doc["description"]


def test_rd_merge_of_parts_equals_the_whole_run(images_dir, tmp_path, tiny_model_path):  # noqa: F811
    """Two runs on halves of a set merge to the run on the whole set: the same per-step means, so
    the same PSNR at each rate as common.interpolate_psnr_at_bpp gives for the whole run."""
    from benchmarks import rd_merge
    from benchmarks.common import interpolate_psnr_at_bpp

    halves = [tmp_path / "a", tmp_path / "b"]
    for folder, name in zip(halves, SIZES):
        folder.mkdir()
        Image.open(images_dir / name).resize((24, 20)).save(folder / name)
    whole_dir = tmp_path / "whole"
    whole_dir.mkdir()
    for folder in halves:
        for f in folder.iterdir():
            (whole_dir / f.name).write_bytes(f.read_bytes())
    common = ["--model", str(tiny_model_path), "--steps", str(K), "--seed", "3"]
    for folder in [*halves, whole_dir]:
        assert rd_diffcodec.main(["--images", str(folder), "--out", str(folder / "rd"), *common]) == 0
    out = tmp_path / "merged.json"
    assert rd_merge.main([str(h / "rd" / "diffcodec.json") for h in halves] + ["--out", str(out)]) == 0
    merged, whole = _strict(out), _strict(whole_dir / "rd" / "diffcodec.json")
    assert merged["images"] == sorted(whole["per_image"])
    np.testing.assert_allclose(merged["per_step_mean"]["bpp"], whole["per_step"]["bpp"])
    bpp = whole["per_step"]["bpp"]  # rates inside the measured range (a 24 x 20 header alone is ~2 bpp)
    rates = [(bpp[1] + bpp[2]) / 2, (bpp[2] + bpp[3]) / 2]
    parts = [json.loads((h / "rd" / "diffcodec.json").read_text()) for h in halves]
    again = rd_merge.merge(parts, rates)
    for rate in rates:
        expected = interpolate_psnr_at_bpp(whole, rate)
        assert np.isfinite(expected) and again["psnr_at_bpp_mean_curve"][str(rate)] == pytest.approx(expected)
    with pytest.raises(ValueError, match="more than one run"):
        rd_merge.merge([whole, whole])


def test_rd_auto_follows_the_plan_of_a_model_with_an_error_table(tmp_path, table_model_path):
    out = tmp_path / "rd"
    assert rd_diffcodec.main(["--smoke", "--out", str(out), "--model", str(table_model_path), "--steps", str(K)]) == 0
    doc = _strict(out / "diffcodec.json")
    assert doc["options"]["method"] == "auto"
    (r,) = doc["per_image"].values()
    plan = r["plan"]
    # the coders as planned; a UQ step's layout (uq, uq+pred, uq+ctx) is the encoder's choice
    assert [c.split("+")[0] for c in r["latent_coders"]] == plan["coders"] and len(plan["coders"]) == K
    assert set(plan["coders"]) == {"uq", "pfr"}  # this table makes the planner mix both coders
    steps = plan["expected_steps_bits_per_dim"]  # per latent step, the last with the final step
    assert len(steps) == K and all(e > 0 for e in steps)
    assert plan["expected_bits_per_dim"] == pytest.approx(sum(steps))
    expected = doc["per_step"]["expected_bits_per_dim"]
    np.testing.assert_allclose(expected[:K], np.cumsum([0.0, *steps[:-1]]))
    assert expected[K] is None  # the last latent step alone: the plan does not say
    assert expected[-1] == pytest.approx(plan["expected_bits_per_dim"])
    assert doc["summary"]["expected_bits_per_dim"] == pytest.approx(plan["expected_bits_per_dim"])


def test_rd_bound_with_the_models_variances_on_a_model_with_an_error_table(tmp_path, table_model_path):
    out = tmp_path / "rd"
    assert rd_diffcodec.main(["--smoke", "--out", str(out), "--model", str(table_model_path), "--steps", "2",
                              "--method", "uq", "--bound-steps", "3", "--bound-variance", "model"]) == 0
    doc = _strict(out / "diffcodec.json")
    (r,) = doc["per_image"].values()
    assert r["bound_variance"] == doc["options"]["bound_variance"] == "model" and r["bound_steps"] == 3
    assert r["bound_bits_per_dim"] == pytest.approx(
        bits_per_dim(rd_diffcodec.smoke_image(), load_prior(table_model_path), 3).total)
    assert doc["summary"]["gap_to_bound"] == pytest.approx(r["steps"][-1]["bits_per_dim"] - r["bound_bits_per_dim"])


def test_rd_needs_images_or_smoke(tmp_path, tiny_model_path):  # noqa: F811
    with pytest.raises(SystemExit) as e:
        rd_diffcodec.main(["--out", str(tmp_path), "--model", str(tiny_model_path)])  # neither --images nor --smoke
    assert e.value.code == 2


# --------------------------------------------------------------------------- bound


def test_bound(images_dir, tmp_path, tiny_model_path):  # noqa: F811
    out = tmp_path / "bound.json"
    assert bound.main(["--images", str(images_dir), "--out", str(out), "--model", str(tiny_model_path),
                       "--steps", "4", "--crop", "16"]) == 0
    doc = _strict(out)
    assert doc["steps"] == 4 and doc["variance"] == "model" and doc["crop"] == 16
    assert set(doc["per_image"]) == set(SIZES)
    prior = load_prior(tiny_model_path)
    for name, terms in doc["per_image"].items():
        assert terms["total"] == pytest.approx(terms["prior"] + terms["latent"] + terms["decoder"])
        img = center_crop(np.asarray(Image.open(images_dir / name).convert("RGB")), 16)
        assert terms["total"] == pytest.approx(bits_per_dim(img, prior, 4).total)
    for key in ("total", "prior", "latent", "decoder"):
        assert doc["mean"][key] == pytest.approx(np.mean([t[key] for t in doc["per_image"].values()]))
    assert doc["results"]["bits_per_dim"] == [doc["mean"]["total"]]
    assert "4-step chain, model variances" in doc["description"]


def test_bound_analytic_needs_an_error_table(images_dir, tmp_path, tiny_model_path):  # noqa: F811
    with pytest.raises(SystemExit) as e:
        bound.main(["--images", str(images_dir), "--out", str(tmp_path / "b.json"), "--model", str(tiny_model_path),
                    "--steps", "4", "--variance", "analytic"])
    assert e.value.code == 2
    assert not (tmp_path / "b.json").exists()


# --------------------------------------------------------------------------- sweep_steps


def test_sweep_steps(images_dir, tmp_path, table_model_path):
    out = tmp_path / "sweep.json"
    assert sweep_steps.main(["--images", str(images_dir), "--crop", "16", "--limit", "2", "--model",
                             str(table_model_path), "--effort", "1,2", "--steps", "plan,2", "--out", str(out)]) == 0
    doc = _strict(out)
    rows = doc["rows"]
    assert [(r["effort"], r["steps"]) for r in rows] == [(1, None), (1, 2), (2, None), (2, 2)]
    for row in rows:
        assert set(row["per_image"]) == set(SIZES)
        for m in row["per_image"].values():
            k = len(m["timesteps"]) - 1
            assert (k == row["steps"]) if row["steps"] else (1 <= k <= EFFORTS[row["effort"]].max_steps)
            assert m["timesteps"][-1] == 999 and np.all(np.diff(m["timesteps"]) > 0)
            assert len(m["coders"]) == k + 1 and m["coders"][-1] in ("final", "final+chan")
            assert m["network_calls"] == k + 1
            assert 0 < m["latent_bits_per_dim"] + m["final_bits_per_dim"] < m["file_bits_per_dim"]  # + header
            assert math.isfinite(m["expected_bits_per_dim"]) and m["expected_bits_per_dim"] > 0
            # every chunk's bits (the file's header and framing besides), the cost model's per latent step
            assert len(m["step_bits"]) == k + 1 and 0 < sum(m["step_bits"]) < m["file_bits_per_dim"] * m["dims"]
            assert sum(m["step_bits"]) / m["dims"] == pytest.approx(m["latent_bits_per_dim"] + m["final_bits_per_dim"])
            assert len(m["step_expected_bits_per_dim"]) == k
            assert sum(m["step_expected_bits_per_dim"]) == pytest.approx(m["expected_bits_per_dim"])
            assert m["encode_seconds"] > 0
        for key in sweep_steps.ROW_MEANS:
            assert row[key] == pytest.approx(np.mean([m[key] for m in row["per_image"].values()])), key
    assert doc["command"].startswith("python -m benchmarks.sweep_steps ")


def _synthetic_files(model, mse, rng, n=40, images=4):
    """Coded files whose every step costs exactly what ``model`` says, plus their image's offset
    (its difficulty; the offsets average 0)."""
    from diffcodec.trajectory import final_bits

    files = []
    offsets = rng.normal(0, 0.3, images)
    offsets -= offsets.mean()
    for i in range(n):
        k_steps = int(rng.integers(2, 6))
        pfr = [bool(rng.random() < 0.5) for _ in range(k_steps)]
        kl = [float(x) for x in rng.uniform(0.01, 1.5, k_steps)]
        chunk, dims, t_min = int(rng.choice([4, 6, 10])), 3 * 128 * 128, int(rng.integers(0, 20))
        pixels = dims / 3
        bits = []
        for j, (p, k) in enumerate(zip(pfr, kl)):
            cost = float(model.pfr(np.array(k), chunk)) if p else float(model.uq(np.array(k)))
            if j == k_steps - 1 and not p:
                cost -= float(model.given_back(np.array(k)))
            bits.append(cost * dims + model.fixed_bits(p, pixels))
        bits.append((float(final_bits(mse, model)[t_min]) + offsets[i % images]) * dims
                    + model.fixed_bits(False, pixels))
        obs = {"image": f"{i % images}.png", "effort": 5, "chunk": chunk, "dims": dims, "pixels": pixels,
               "pairs": [(0, 0)] * k_steps, "pfr": pfr, "bits": bits, "kl": kl, "t_min": t_min,
               "file": sum(bits) / dims}
        files.append(obs)
    return files


def test_calibration_recovers_the_cost_model():
    """Files made to cost what a cost model says, plus an offset per image, give that model back;
    its predictions are then exact once the image's offset is added; a coder without files keeps
    the base model's constants."""
    from dataclasses import replace as _replace

    from benchmarks import calibrate
    from diffcodec.trajectory import DEFAULT_COSTS

    true = _replace(DEFAULT_COSTS, uq_kl_factor=0.7, uq_recovered=0.3, pfr_kl_factor=1.1, pfr_chunk_overhead=1.7,
                    final_offset=-0.2, final_recovered=0.6)
    mse = np.linspace(1e-4, 0.3, 1000)[:, None] * np.array([[1.0, 0.9, 1.1]])
    files = _synthetic_files(true, mse, np.random.default_rng(0))
    got = calibrate.fit(files, mse)
    for name in ("uq_kl_factor", "uq_recovered", "pfr_kl_factor", "pfr_chunk_overhead", "final_offset",
                 "final_recovered"):
        assert getattr(got, name) == pytest.approx(getattr(true, name), abs=1e-9), name
    rows = calibrate.chain_errors(files, {"old": DEFAULT_COSTS, "new": got}, mse)
    assert all(abs(r["new_rank_error"]) < 1e-9 for r in rows)
    assert max(abs(r["old_rank_error"]) for r in rows) > 0.01
    uq_only = [o for o in files if not any(o["pfr"])]
    kept = calibrate.fit(uq_only, mse)
    assert (kept.pfr_kl_factor, kept.pfr_chunk_overhead) == (DEFAULT_COSTS.pfr_kl_factor, DEFAULT_COSTS.pfr_chunk_overhead)
    assert kept.uq_kl_factor == pytest.approx(0.7, abs=1e-9)


def test_calibrate_reads_sweeps(images_dir, tmp_path, table_model_path):
    """End to end on a sweep of the tiny model: the fit is written with the chains' real and
    predicted sizes; a sweep of another model is refused."""
    from benchmarks import calibrate

    sweep = tmp_path / "sweep.json"
    assert sweep_steps.main(["--images", str(images_dir), "--crop", "16", "--limit", "2", "--model",
                             str(table_model_path), "--effort", "2", "--steps", "plan,2,3", "--out", str(sweep)]) == 0
    out = tmp_path / "cal.json"
    assert calibrate.main([str(sweep), "--model", str(table_model_path), "--out", str(out)]) == 0
    doc = _strict(out)
    files = sum(r["files"] for r in doc["chains"])
    assert files == 6 and doc["rank_error_rms"]["new"] <= doc["rank_error_rms"]["old"] + 1e-9
    assert doc["command"].startswith("python -m benchmarks.calibrate ")
    with pytest.raises(SystemExit, match="not"):
        calibrate.main([str(sweep), "--out", str(out)])  # the shipped model did not encode it


def test_symmetry_benchmark(images_dir, tmp_path, tiny_model_path):
    """The self-ensemble's x_0 error relative to the plain call: the plain call is its own
    reference (ratio exactly 1), every symmetry's MSE is measured on the same noisy images."""
    from benchmarks import symmetry

    out = tmp_path / "sym.json"
    assert symmetry.main(["--images", str(images_dir), "--crop", "16", "--limit", "2", "--model",
                          str(tiny_model_path), "--timesteps", "5,300", "--out", str(out)]) == 0
    doc = _strict(out)
    assert [r["t"] for r in doc["rows"]] == [5, 300]
    for r in doc["rows"]:
        assert r["ratio"]["1"] == 1.0 and set(r["mse"]) == {"1", "2", "4", "8"}
        assert all(v > 0 and r["ratio"][n] == pytest.approx(v / r["mse"]["1"]) for n, v in r["mse"].items())
        assert len(set(r["mse"].values())) > 1  # a random network is not equivariant: the means differ


def test_xstart_error_benchmark(images_dir, tmp_path, tiny_model_path, table_model_path):
    """Models' x_0 errors on the same noisy images: a network against itself (with or without an
    error table) is level, as the same draw reaches both; another network ('default', the shipped
    one) differs."""
    from benchmarks import xstart_error

    out = tmp_path / "x0.json"
    models = f"{tiny_model_path},{table_model_path},default"
    assert xstart_error.main(["--models", models, "--images", str(images_dir), "--crop", "16", "--limit", "2",
                              "--timesteps", "0,5,300", "--out", str(out)]) == 0
    doc = _strict(out)
    assert [r["t"] for r in doc["rows"]] == [0, 5, 300] and len(doc["fingerprints"]) == 3
    for r in doc["rows"]:
        a, b, c = r["mse"]
        assert a == b and a != c and all(0 < v <= 4.0 for v in r["mse"])


def test_layouts_benchmark(images_dir, tmp_path, table_model_path):
    """Per UQ and final step the four layouts' estimates; the step coded the smallest (its side
    information aside), and its coded bits within 1 % + a few words of that estimate."""
    from benchmarks import layouts

    out = tmp_path / "layouts.json"
    assert layouts.main(["--images", str(images_dir), "--crop", "0", "--model", str(table_model_path),
                         "--effort", "2", "--out", str(out)]) == 0
    doc = _strict(out)
    assert doc["steps"] and {r["image"] for r in doc["steps"]} == set(SIZES)
    labels = {"uq": "plain", "uq+chan": "predicted", "uq+ctx": "context", "uq+tex": "texture",
              "final": "plain", "final+chan": "predicted", "final+ctx": "context", "final+tex": "texture"}
    for r in doc["steps"]:
        chosen = r[labels[r["kind"]]]
        w, h = SIZES[r["image"]]
        dims = 3 * w * h
        # what a layout sends besides its symbols on one tile: at most 3 predictor codes, the
        # spatial and texture blocks, lengths and flushed words (diffcodec.coders.uq's comparison)
        assert chosen <= min(r[k] for k in layouts.LAYOUTS) + (8 * (3 + 4 + 6 + 24 + 24) + 5 * 32) / dims
        assert abs(r["coded"] - chosen) <= 0.01 * chosen + 6 * 32 / dims
    assert doc["summary"]["coded"] <= doc["summary"]["file_bits_per_dim"]


def test_sweep_steps_symmetry(images_dir, tmp_path, table_model_path):
    """The symmetry axis: the effort's own (plan) or forced; every file records its own."""
    out = tmp_path / "sweep.json"
    assert sweep_steps.main(["--images", str(images_dir), "--crop", "16", "--limit", "1", "--model",
                             str(table_model_path), "--effort", "1,6", "--symmetry", "plan,4", "--out", str(out)]) == 0
    rows = _strict(out)["rows"]
    assert [(r["effort"], r["symmetry"]) for r in rows] == [(1, 1), (1, 4), (6, 8), (6, 4)]
    assert all(m["symmetry"] == r["symmetry"] for r in rows for m in r["per_image"].values())


def test_sweep_steps_symmetry_max_t(images_dir, tmp_path, table_model_path):
    """The symmetrised timesteps' axis: every call (65535) counts symmetry evaluations a call, a
    threshold below the chain's timesteps none beyond the plain calls."""
    out = tmp_path / "sweep.json"
    assert sweep_steps.main(["--images", str(images_dir), "--crop", "16", "--limit", "1", "--model",
                             str(table_model_path), "--effort", "1", "--t-min", "5", "--symmetry", "4",
                             "--symmetry-max-t", "65535,4,5", "--out", str(out)]) == 0
    rows = _strict(out)["rows"]
    assert [r["symmetry_max_t"] for r in rows] == [65535, 4, 5]
    calls = [r["network_calls"] for r in rows]
    assert calls[0] == calls[1] == calls[2]
    # every call; none (the lowest call is at t_min = 5); only the final step's call at t = 5
    assert [r["network_evaluations"] for r in rows] == [4 * calls[0], calls[0], calls[0] + 3]


def test_sweep_steps_pfr_chunk_and_margin(images_dir, tmp_path, table_model_path):
    out = tmp_path / "sweep.json"
    assert sweep_steps.main(["--images", str(images_dir), "--crop", "16", "--limit", "1", "--model",
                             str(table_model_path), "--effort", "5", "--method", "pfr", "--pfr", "4+2,6+1",
                             "--out", str(out)]) == 0
    rows = _strict(out)["rows"]
    assert [(r["pfr_chunk_bits"], r["pfr_margin_bits"]) for r in rows] == [(4, 2), (6, 1)]
    for r in rows:
        (m,) = r["per_image"].values()
        assert m["pfr_bits"] == [r["pfr_chunk_bits"], r["pfr_margin_bits"]]
        assert set(m["coders"][:-1]) == {"pfr"}
    with pytest.raises(SystemExit):
        sweep_steps.main(["--images", str(images_dir), "--pfr", "5-3"])


def test_sweep_steps_skips_impossible_chains(images_dir, tmp_path, tiny_model_path):  # noqa: F811
    out = tmp_path / "sweep.json"
    assert sweep_steps.main(["--images", str(images_dir), "--crop", "16", "--limit", "1", "--model",
                             str(tiny_model_path), "--steps", "2,5000", "--t-min", "plan,5", "--out", str(out)]) == 0
    rows = _strict(out)["rows"]
    assert [(r["steps"], r["t_min"]) for r in rows] == [(2, None), (2, 5)]
    for r in rows:
        (m,) = r["per_image"].values()
        assert r["expected_bits_per_dim"] is None  # no error table: no cost model
        assert m["timesteps"][0] == (10 if r["t_min"] is None else 5)  # the unplanned chain ends at t = 10


# --------------------------------------------------------------------------- pfr_speed


def test_pfr_speed(tmp_path):
    out = tmp_path / "speed.json"
    assert pfr_speed.main(["--size", "8", "--kl", "0.05,0.5", "--out", str(out)]) == 0
    doc = _strict(out)
    lo, hi = doc["rows"]
    for row in (lo, hi):
        assert (row["chunk_bits"], row["margin"]) == (EFFORTS[5].chunk_bits, EFFORTS[5].margin_bits)
        assert row["chunks"] >= 1 and row["candidate_pairs"] > 0 and row["pairs_per_second"] > 0
        assert row["payload_bytes"] * 8 >= row["coded_bits"] > 0
        assert row["coded_over_kl"] == pytest.approx(row["coded_bits"] / row["kl_prior_bits"])
    assert 0.5 < hi["coded_over_kl"] < 4  # about the KL plus a few bits per chunk
    assert hi["chunks"] > lo["chunks"] and hi["kl_prior_bits"] > lo["kl_prior_bits"]
    assert pfr_speed.main(["--size", "8", "--kl", "0.5", "--chunk-bits", "6", "--margin", "2", "--out", str(out)]) == 0
    (row,) = _strict(out)["rows"]
    assert (row["chunk_bits"], row["margin"]) == (6, 2)


# --------------------------------------------------------------------------- make_results


def test_make_results(rd_run, baseline_dir, images_dir, tmp_path, tiny_model_path):  # noqa: F811
    rd_out, dc = rd_run
    assert bound.main(["--images", str(images_dir), "--out", str(rd_out / "bound.json"), "--model",
                       str(tiny_model_path), "--steps", "4"]) == 0
    md = tmp_path / "RESULTS.md"
    assert make_results.main([str(baseline_dir), "--title", "smoke", "--diffcodec-dir", str(rd_out),
                              "--out", str(md), "--note", "A smoke run."]) == 0
    text = md.read_text()
    assert text.startswith("# Results: smoke\n\nA smoke run.\n")
    lossless = _strict(baseline_dir / "lossless.json")["results"]
    for name, bpd, bpp in zip(lossless["codec"], lossless["bits_per_dim"], lossless["bpp"]):
        assert f"| {name} | {bpd:.3f} | {bpp:.3f} |" in text
    s = dc["summary"]
    assert f"| diffcodec file (real bytes) | {s['lossless_bits_per_dim']:.3f} |" in text
    assert f"| diffcodec ideal (sum of its steps' KLs) | {s['ideal_bits_per_dim']:.3f} |" in text
    b = _strict(rd_out / "bound.json")
    assert f"| diffcodec model bound (4-step chain, first {len(SIZES)} images) | {b['mean']['total']:.3f} |" in text
    lossy = [_strict(baseline_dir / f"{c}.json") for c in BASELINES if (baseline_dir / f"{c}.json").exists()]
    for doc in [*lossy, dc]:
        cells = [interpolate_psnr_at_bpp(doc, r) for r in make_results.RATES]
        assert f"| {doc['name']} | " + " | ".join("–" if v != v else f"{v:.2f}" for v in cells) + " |" in text
    assert table4_markdown(dc["per_step"]) in text
    assert f"gap_to_bound {s['gap_to_bound']:.4g}" in text and "expected_bits_per_dim –" in text
    assert dc["description"] in text and b["description"] in text
    pngs = sorted(rd_out.glob("*.png"))
    assert {p.name for p in pngs} == {"rd_psnr.png", "lossless_bars.png", "diffcodec_progression.png",
                                      "diffcodec_rate_distortion_vs_step.png"}
    for png in pngs:  # linked relative to the markdown file
        assert f"![{png.stem}]({Path(os.path.relpath(png.resolve(), md.parent.resolve())).as_posix()})" in text


def test_speed_smoke(tmp_path, tiny_model_path):  # noqa: F811
    """The speed benchmark times encode, decode and a preview in child processes and records
    their peak memory; the decode is checked lossless inside."""
    import json as _json

    from benchmarks import speed

    out = tmp_path / "speed.json"
    assert speed.main(["--smoke", "--out", str(out), "--model", str(tiny_model_path), "--effort", "2",
                       "--step", "1", "--threads", "1"]) == 0
    doc = _json.loads(out.read_text())
    (row,) = doc["images"]
    enc, dec, prev = row["encode"], row["decode"], row["preview"]
    assert enc["net_calls"] == len(enc["steps"]) and dec["net_calls"] == len(enc["steps"])  # one per coded step
    assert prev["step"] == 1 and prev["net_calls"] == 2  # the step's call and its preview's
    assert all(s["net_seconds"] <= s["seconds"] for s in enc["steps"])
    assert dec["lossless"] and enc["bytes"] > 0 and row["bits_per_dim"] == 8 * enc["bytes"] / (24 * 32 * 3)
    assert all(op["peak_rss_mb"] > 50 for op in (enc, dec, prev))  # each child's own peak: a Python with torch
    table = speed.markdown_table([doc])
    rows = [line for line in table.splitlines() if line.startswith("| ") and "smoke" in line]
    assert len(rows) == 1 and f"{enc['seconds']:.1f} ({enc['seconds'] / row['megapixels']:.1f})" in rows[0]
    assert f"{row['bits_per_dim']:.3f}" in rows[0] and doc["command"] in table


def test_tiled_image_mirrors_the_photos():
    import numpy as _np

    from benchmarks.speed import tiled_image

    a = _np.arange(2 * 3 * 3, dtype=_np.uint8).reshape(2, 3, 3)
    big = tiled_image([a], 7, 5)
    assert big.shape == (5, 7, 3)
    _np.testing.assert_array_equal(big[:2, :3], a)
    _np.testing.assert_array_equal(big[:2, 3:6], a[:, ::-1])


def test_network_cost_smoke(tmp_path):
    """The network benchmark counts parameters and FLOPs, times calls and measures a tiled call's
    memory in a child process."""
    import json as _json

    from benchmarks import network

    out = tmp_path / "net.json"
    assert network.main(["--configs", "tiny,local16", "--size", "64x48", "--tiled", "96x80", "--threads", "1",
                         "--out", str(out)]) == 0
    rows = {r["config"]: r for r in _json.loads(out.read_text())["rows"]}
    assert rows["local16"]["tile_exact"] and rows["local16"]["receptive_radius"] == 145
    assert not rows["tiny"]["tile_exact"]
    assert 200e3 < rows["local16"]["flops_per_pixel"] < 250e3  # the target: <= 250 kFLOP/px
    assert rows["local16"]["tiled_96x80"]["peak_rss_mb"] >= rows["local16"]["tiled_96x80"]["rss_before_mb"] > 50
    assert all(r["seconds_64x48_1_threads"] > 0 for r in rows.values())


def test_training_curve_plot(tmp_path):
    """The training plot reads the held-out history a shipped model carries in its meta."""
    from PIL import Image as _Image

    from benchmarks import plots
    from benchmarks.common import training_history
    from diffcodec.checkpoint import default_model_path

    history = training_history(default_model_path())
    assert len(history) >= 10 and history[-1]["step"] == 8500 and abs(history[-1]["heldout_bpd"] - 3.647) < 1e-3
    out = tmp_path / "train.png"
    assert plots.main(["training", str(out), f"shipped={default_model_path()}"]) == 0
    assert _Image.open(out).size == (640, 400)
    by_time = tmp_path / "train_minutes.png"
    assert plots.main(["training", str(by_time), "--x", "minutes", f"shipped={default_model_path()}"]) == 0
    assert _Image.open(by_time).size == (640, 400) and by_time.read_bytes() != out.read_bytes()
    from benchmarks.common import plot_training
    with pytest.raises(ValueError, match="no wall time in the history of a"):
        plot_training({"a": [{"step": 1, "heldout_bpd": 4.0}]}, tmp_path / "x.png", x="minutes")


def test_training_plot_offsets_a_run_started_from_weights(tmp_path):
    """--offset LABEL=STEPS moves one curve's steps (a run from --init-from counts from 0), leaves
    the others and the rest of each point alone, and names an unknown label."""
    from PIL import Image as _Image

    from benchmarks import plots
    from diffcodec.checkpoint import default_model_path

    curves = {"a": [{"step": 0, "heldout_bpd": 3.0, "seconds": 1.0}, {"step": 4000, "heldout_bpd": 2.9}],
              "b": [{"step": 5, "heldout_bpd": 2.8}]}
    moved = plots.offset_steps(curves, {"a": 64926})
    assert moved == {"a": [{"step": 64926, "heldout_bpd": 3.0, "seconds": 1.0}, {"step": 68926, "heldout_bpd": 2.9}],
                     "b": [{"step": 5, "heldout_bpd": 2.8}]}
    assert curves["a"][0]["step"] == 0  # the input is not changed
    with pytest.raises(ValueError, match="--offset names no curve: c"):
        plots.offset_steps(curves, {"c": 1})
    out = tmp_path / "offset.png"
    assert plots.main(["training", str(out), f"shipped={default_model_path()}", "--offset", "shipped=100000"]) == 0
    plain = tmp_path / "plain.png"
    assert plots.main(["training", str(plain), f"shipped={default_model_path()}"]) == 0
    assert _Image.open(out).size == (640, 400) and out.read_bytes() != plain.read_bytes()
    for bad in ("other=1", "shipped=1.5", "shipped"):
        with pytest.raises(SystemExit):
            plots.main(["training", str(out), f"shipped={default_model_path()}", "--offset", bad])


def test_sweep_steps_forced_timesteps(images_dir, tmp_path, table_model_path):
    """The chain axis: the planner's (plan) or a forced one, whose timesteps every file codes."""
    out = tmp_path / "sweep.json"
    assert sweep_steps.main(["--images", str(images_dir), "--crop", "16", "--limit", "1", "--model",
                             str(table_model_path), "--effort", "3", "--timesteps", "plan;1,14,49,999;2,999",
                             "--out", str(out)]) == 0
    rows = _strict(out)["rows"]
    assert [r["timesteps"] for r in rows] == [None, [1, 14, 49, 999], [2, 999]]
    for row in rows[1:]:
        for m in row["per_image"].values():
            assert m["timesteps"] == row["timesteps"] and m["network_calls"] == len(row["timesteps"])
    with pytest.raises(SystemExit):
        sweep_steps.main(["--images", str(images_dir), "--timesteps", "1,x,999"])
