"""The command line (diffcodec.cli) through click's CliRunner with a tiny checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from codec_fixtures import other_model_path, tiny_model_path  # noqa: F401  (fixtures)
from diffcodec.cli import main
from diffcodec.container import parse


def run(*args: str, ok: bool = True):
    result = CliRunner().invoke(main, [str(a) for a in args])
    if ok:
        assert result.exit_code == 0, (result.output, result.exception)
        assert "Traceback" not in result.output
    return result


def assert_clean_error(result, *needles: str) -> None:
    """Non-zero exit, one line on stderr that starts with 'error:', no traceback."""
    assert result.exit_code != 0
    assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit), \
        repr(result.exception)
    err = result.stderr.strip()
    assert "Traceback" not in result.output and "Traceback" not in err
    assert len(err.splitlines()) == 1, err
    assert err.startswith("error:"), err
    assert "internal error" not in err, err  # a known kind of bad input, reported as such
    for needle in needles:
        assert needle.lower() in err.lower(), err


@pytest.fixture(scope="module")
def work(tmp_path_factory, tiny_images):
    d = tmp_path_factory.mktemp("cli")
    Image.fromarray(tiny_images[2]).save(d / "a.png")  # 37 x 23
    Image.fromarray(tiny_images[1]).convert("L").save(d / "b.png")  # 48 x 32 grey
    Image.new("RGBA", (5, 5), (1, 2, 3, 4)).save(d / "rgba.png")
    (d / "text.txt").write_text("hello, I am not an image\n")
    (d / "text.png").write_text("hello, I am not an image either\n")
    (d / "text.dfc").write_text("not a dfc file at all\n")
    (d / "corrupt.pt").write_bytes(b"PK\x03\x04" + bytes(range(256)) * 4)
    return d


@pytest.fixture(scope="module")
def encoded(work, tiny_model_path):
    out = work / "a.dfc"
    r = run("encode", work / "a.png", "-o", out, "--model", tiny_model_path, "--steps", 3, "--t-min", 10, "--seed", 5,
            "-q")
    assert r.output == ""  # quiet means quiet
    return out


def test_encode_info_decode_round_trip(work, encoded, tiny_model_path):
    r = run("encode", work / "a.png", "-o", work / "a2.dfc", "--model", tiny_model_path, "--steps", 3,
            "--t-min", 10, "--seed", 5)
    size = (work / "a2.dfc").stat().st_size
    assert r.stdout.startswith(f"{work / 'a.png'} -> {work / 'a2.dfc'}: {size} bytes, {8 * size / (37 * 23):.3f} bpp")
    assert "(lossless, 3 latent steps, effort 5, symmetry 2 at t <= 60)" in r.stdout
    assert (work / "a2.dfc").read_bytes() == encoded.read_bytes()  # same seed, same bytes
    lines = run("info", encoded).output.splitlines()
    fields = {k.strip(): v.strip() for k, v in (ln.split(":", 1) for ln in lines if ":" in ln)}
    assert (fields["width"], fields["height"], fields["mode"], fields["lossless"]) == ("37", "23", "RGB", "True")
    table = lines[lines.index(next(ln for ln in lines if ln.split()[:2] == ["step", "coder"])) + 1:]
    parsed = parse(encoded.read_bytes())
    assert [ln.split()[1] for ln in table] == [c.kind.label for c in parsed.chunks]
    assert [int(ln.split()[3]) for ln in table] == [c.size for c in parsed.chunks]
    out = work / "a_dec.png"
    r = run("decode", encoded, "-o", out, "--model", tiny_model_path)
    assert "lossless" in r.output
    np.testing.assert_array_equal(np.asarray(Image.open(out)), np.asarray(Image.open(work / "a.png")))


def test_info_json(encoded):
    info = json.loads(run("info", encoded, "--json").output)
    parsed = parse(encoded.read_bytes())
    assert info["width"] == 37 and info["height"] == 23 and info["mode"] == "RGB"
    assert info["bytes"] == encoded.stat().st_size and info["lossless"] is True and info["truncated"] is False
    assert info["steps_in_file"] == info["steps_announced"] == 4
    assert len(info["steps"]) == len(parsed.chunks) == 4
    assert [s["step"] for s in info["steps"]] == [1, 2, 3, 4]
    assert [s["kind"] for s in info["steps"]][:3] == ["uq"] * 3 and info["steps"][3]["kind"].startswith("final")
    assert [s["to_timestep"] for s in info["steps"]] == [*reversed(parsed.header.timesteps[:-1]), -1]
    assert [s["ideal_bits"] for s in info["steps"]] == pytest.approx([c.ideal_bits for c in parsed.chunks])
    assert [s["bytes"] for s in info["steps"]] == [c.size for c in parsed.chunks]
    assert info["steps"][-1]["cumulative_bpp"] == pytest.approx(8 * info["bytes"] / (37 * 23))
    assert info["coded_timesteps"] == list(parsed.header.timesteps)
    assert info["seed"] == 5 and info["header_bytes"] == parsed.header_size


def test_info_of_truncated_file(work, encoded):
    data = encoded.read_bytes()
    cut = work / "cut.dfc"
    cut.write_bytes(data[:parse(data).header_size + parse(data).chunks[0].size + 3])
    info = json.loads(run("info", cut, "--json").output)
    assert info["truncated"] is True and info["steps_in_file"] == 1 and len(info["steps"]) == 1


def test_decode_step_previews_strip(work, encoded, tiny_model_path):
    from diffcodec.checkpoint import load_prior
    from diffcodec.codec import decode

    out = work / "step1.png"
    r = run("decode", encoded, "-o", out, "--step", 1, "--model", tiny_model_path)
    assert "preview after 1 coded step(s) (mean)" in r.output
    img = Image.open(out)
    assert img.size == (37, 23) and img.mode == "RGB"
    library = decode(encoded.read_bytes(), load_prior(tiny_model_path), step=1).image
    np.testing.assert_array_equal(np.asarray(img), np.asarray(library))  # the CLI writes the library's preview

    prev = work / "previews"
    strip = work / "strip.png"
    run("decode", encoded, "-o", work / "full.png", "--previews", prev, "--strip", strip, "--model",
        tiny_model_path, "-q")
    files = sorted(prev.glob("*.png"))
    assert len(files) == 3 + 2  # num_steps (3 latent + final) + 1 for x_T alone
    for f in files:
        assert Image.open(f).size == (37, 23)
    s = Image.open(strip)
    assert s.size == (37 * 5, 23)
    np.testing.assert_array_equal(np.asarray(Image.open(files[-1])), np.asarray(Image.open(work / "a.png")))
    np.testing.assert_array_equal(np.asarray(Image.open(work / "full.png")), np.asarray(Image.open(work / "a.png")))


def test_decode_truncated_file_warns(work, encoded, tiny_model_path):
    data = encoded.read_bytes()
    p = parse(data)
    cut = work / "cut2.dfc"
    cut.write_bytes(data[:p.header_size + p.chunks[0].size + p.chunks[1].size])
    r = run("decode", cut, "-o", work / "cut2.png", "--model", tiny_model_path, "-q")
    assert "truncated after 2 of 4" in r.stderr
    assert Image.open(work / "cut2.png").size == (37, 23)


def test_batch_encode_out_dir(work, tiny_model_path):
    out = work / "batch"
    r = run("encode", work / "a.png", work / "b.png", "--out-dir", out, "--model", tiny_model_path, "--steps", 2,
            "--seed", 1, "--method", "uq")
    assert r.output.count("lossless") == 2
    assert sorted(p.name for p in out.iterdir()) == ["a.dfc", "b.dfc"]
    assert parse((out / "b.dfc").read_bytes()).header.mode == "L"
    run("decode", out / "b.dfc", "-o", work / "b_dec.png", "--model", tiny_model_path, "-q")
    dec = Image.open(work / "b_dec.png")
    assert dec.mode == "L"
    np.testing.assert_array_equal(np.asarray(dec), np.asarray(Image.open(work / "b.png")))


def test_lossy_encode_options(work, tiny_model_path):
    out = work / "lossy.dfc"
    r = run("encode", work / "a.png", "-o", out, "--model", tiny_model_path, "--steps", 3, "--stop-after", 1,
            "--method", "uq")
    assert "lossy, 1 of 4 steps" in r.output
    assert len(parse(out.read_bytes()).chunks) == 1
    r = run("encode", work / "a.png", "-o", out, "--model", tiny_model_path, "--steps", 3, "--max-bpp", 2.5)
    assert 8 * out.stat().st_size / (37 * 23) <= 2.5 and "lossy" in r.output


def test_symmetry_option(work, tiny_model_path):
    """--symmetry reaches the header (info shows it) and the decoder gets the image back; nll
    takes the same option and gives another bound (another model: the self-ensemble)."""
    out, back = work / "sym.dfc", work / "sym.png"
    r = run("encode", work / "a.png", "-o", out, "--model", tiny_model_path, "--steps", 3, "--symmetry", 2)
    assert "symmetry 2" in r.output and parse(out.read_bytes()).header.symmetry == 2
    assert json.loads(run("info", out, "--json").output)["symmetry"] == 2
    run("decode", out, "-o", back, "--model", tiny_model_path, "-q")
    np.testing.assert_array_equal(np.asarray(Image.open(back)), np.asarray(Image.open(work / "a.png")))
    bounds = [json.loads(run("nll", work / "a.png", "--steps", 5, "--model", tiny_model_path, "-q", "--json",
                             "--symmetry", n).output)[0]["bits_per_dim"] for n in (1, 8)]
    assert all(np.isfinite(bounds)) and bounds[0] != bounds[1]
    r = run("encode", work / "a.png", "-o", out, "--model", tiny_model_path, "--symmetry", 3, ok=False)
    assert r.exit_code != 0 and "symmetry" in r.output
    # only the calls at t <= 400: the header and info say so, and the file decodes
    r = run("encode", work / "a.png", "-o", out, "--model", tiny_model_path, "--steps", 3, "--symmetry", 4,
            "--symmetry-max-t", 400)
    assert "symmetry 4 at t <= 400" in r.output
    assert json.loads(run("info", out, "--json").output)["symmetry_max_t"] == 400
    run("decode", out, "-o", back, "--model", tiny_model_path, "-q")
    np.testing.assert_array_equal(np.asarray(Image.open(back)), np.asarray(Image.open(work / "a.png")))
    r = run("encode", work / "a.png", "-o", out, "--model", tiny_model_path, "--symmetry-max-t", -1, ok=False)
    assert r.exit_code == 2 and "--symmetry-max-t" in r.output  # click's usage error


def test_option_errors_are_one_line(work, tiny_model_path):
    r = run("encode", work / "a.png", "-o", work / "x.dfc", "--model", tiny_model_path, "--t-min", 999, ok=False)
    assert_clean_error(r, "cannot fit")
    r = run("encode", work / "a.png", "-o", work / "x.dfc", "--model", tiny_model_path, "--effort", 10, ok=False)
    assert r.exit_code == 2 and "--effort" in r.output


def test_decode_refuses_images_above_the_pixel_limit(work, encoded, tiny_model_path):
    r = run("decode", encoded, "-o", work / "limit.png", "--model", tiny_model_path, "--max-pixels", 800, ok=False)
    assert_clean_error(r, "above the limit", "--max-pixels")
    assert not (work / "limit.png").exists()
    run("decode", encoded, "-o", work / "limit.png", "--model", tiny_model_path, "--max-pixels", 851, "-q")


def test_errtable_command_writes_a_model_with_its_table(work, image_folder, tiny_model_path):
    from diffcodec.checkpoint import load_prior

    out = work / "with_table.pt"
    r = run("errtable", "--data", image_folder, "-o", out, "--model", tiny_model_path, "--crops", 2, "--crop", 16,
            "-q")
    assert r.output == ""
    prior = load_prior(out)
    base = load_prior(tiny_model_path)
    assert prior.xstart_mse.shape == (1000, 3) and (np.diff(prior.xstart_mse, axis=0) >= 0).all()
    assert prior.fingerprint != base.fingerprint  # the table is part of what a file's fingerprint names
    assert prior.meta["xstart_mse_of"] == base.fingerprint


def test_linear_command_writes_a_model_with_its_linear_estimate(work, image_folder, tiny_model_path):
    """A model whose error table (made up here) is the network's: the linear estimate replaces it
    from the first timestep on which it stays better, and its rows of the table are the linear
    estimate's; a model without a table, or with a linear prior already, is refused in one line."""
    from skimage import data

    from diffcodec.checkpoint import attach_xstart_mse, load_prior

    photos = work / "photos160"
    photos.mkdir()
    for name in ("astronaut", "coffee"):
        Image.fromarray(getattr(data, name)()).resize((160, 160), Image.Resampling.LANCZOS).save(photos / f"{name}.png")
    table = np.geomspace(1e-6, 0.3, 1000)[:, None] * np.ones((1, 3))  # a network that errs 0.3 at T - 1
    base = work / "tiny_table.pt"
    attach_xstart_mse(tiny_model_path, base, table)
    out = work / "with_linear.pt"
    run("linear", "--train", photos, "--data", image_folder, "-o", out, "--model", base, "--fit-crops", 4,
        "--crops", 2, "--crop", 16, "-q")
    prior = load_prior(out)
    t0 = prior.linear.from_t
    assert 0 < t0 < 1000 and prior.fingerprint != load_prior(base).fingerprint
    np.testing.assert_array_equal(prior.xstart_mse[:t0], table[:t0])
    assert (prior.xstart_mse[t0:].mean(1) < table[t0:].mean(1)).all()
    assert_clean_error(run("linear", "--train", photos, "--data", image_folder, "-o", work / "x.pt",
                           "--model", tiny_model_path, ok=False), "error table")
    assert_clean_error(run("linear", "--train", photos, "--data", image_folder, "-o", work / "x.pt",
                           "--model", out, ok=False), "already has")


def test_usage_errors(work, tiny_model_path):
    r = run("encode", work / "a.png", "--model", tiny_model_path, ok=False)
    assert r.exit_code == 2 and "Traceback" not in r.output  # neither -o nor --out-dir
    r = run("encode", work / "a.png", work / "b.png", "-o", work / "x.dfc", "--model", tiny_model_path, ok=False)
    assert r.exit_code == 2
    r = run("decode", work / "missing.dfc", "-o", work / "x.png", ok=False)
    assert r.exit_code == 2


def test_nll(work, tiny_model_path):
    r = run("nll", work / "a.png", "--steps", 5, "--model", tiny_model_path, "-q")
    assert "bits/dim" in r.output
    value = float(r.output.split(":")[1].split("bits/dim")[0])
    assert np.isfinite(value) and value > 0
    r = run("nll", work / "a.png", "--steps", 5, "--model", tiny_model_path, "-q", "--json")
    rows = json.loads(r.output)
    assert len(rows) == 1 and rows[0]["bits_per_dim"] == pytest.approx(value, abs=1e-4)
    assert rows[0]["steps"] == 5
    assert rows[0]["bits_per_dim"] == pytest.approx(rows[0]["prior_L_T"] + rows[0]["latent_sum"] + rows[0]["decoder_L_0"],
                                                    rel=1e-6)


def test_sample_grid_and_strip(work, tiny_model_path):
    from PIL import Image

    grid, strip = work / "grid.png", work / "strip.png"
    run("sample", "-o", grid, "-n", 3, "--size", 16, "--steps", 6, "--strip", strip, "--model", tiny_model_path, "-q")
    assert Image.open(grid).size == (3 * 16, 16)
    # one column per kept step (6 steps here, at most 10), one row per sample
    assert Image.open(strip).size == (6 * 16, 3 * 16)


def test_train_command_writes_a_resumable_checkpoint(work, image_folder):
    out = work / "cli_train.pt"
    args = ("train", "--data", image_folder, "--out", out, "--model", "tiny", "--crop", 16, "--batch-size", 2,
            "--num-timesteps", 50, "--device", "cpu")
    def summary(output: str) -> dict:  # the JSON line after the progress bar's output
        return json.loads(output[output.rindex('{"steps"'):].splitlines()[0])

    r = run(*args, "--steps", 2)
    assert summary(r.output)["steps"] == 2
    r = run(*args, "--steps", 3)  # resumes from step 2
    assert summary(r.output)["steps"] == 3
    r = run(*args[:-6], "--model", "small", "--steps", 4, "--num-timesteps", 50, "--device", "cpu", ok=False)
    assert r.exit_code == 1 and r.output.startswith("error:") and "another model" in r.output


# ----------------------------------------------------------------------------- bad input


def test_error_missing_model(work):
    r = run("encode", work / "a.png", "-o", work / "x.dfc", "--model", work / "nope.pt", "-q", ok=False)
    assert_clean_error(r, "not found")
    assert not (work / "x.dfc").exists()


def test_error_corrupt_model(work, encoded):
    r = run("encode", work / "a.png", "-o", work / "x.dfc", "--model", work / "corrupt.pt", "-q", ok=False)
    assert_clean_error(r, "checkpoint")
    r = run("decode", encoded, "-o", work / "x.png", "--model", work / "text.txt", "-q", ok=False)
    assert_clean_error(r, "checkpoint")


def test_error_text_as_image(work, tiny_model_path):
    for name in ("text.txt", "text.png"):
        r = run("encode", work / name, "-o", work / "x.dfc", "--model", tiny_model_path, "-q", ok=False)
        assert_clean_error(r, "cannot read image")


def test_error_text_as_dfc(work, tiny_model_path):
    for name in ("text.dfc", "a.png"):
        r = run("decode", work / name, "-o", work / "x.png", "--model", tiny_model_path, "-q", ok=False)
        assert_clean_error(r, "not a .dfc")
        r = run("info", work / name, ok=False)
        assert_clean_error(r, "not a .dfc")


def test_error_other_model(work, encoded, other_model_path):
    r = run("decode", encoded, "-o", work / "x.png", "--model", other_model_path, "-q", ok=False)
    assert_clean_error(r, "another model")
    assert not (work / "x.png").exists()


def test_error_rgba(work, tiny_model_path):
    r = run("encode", work / "rgba.png", "-o", work / "x.dfc", "--model", tiny_model_path, "-q", ok=False)
    assert_clean_error(r, "alpha")


def test_error_truncated_header(work, encoded, tiny_model_path):
    data = encoded.read_bytes()
    for n in (0, 5, 20, parse(data).header_size - 1):
        bad = work / f"head{n}.dfc"
        bad.write_bytes(data[:n])
        r = run("decode", bad, "-o", work / "x.png", "--model", tiny_model_path, "-q", ok=False)
        assert_clean_error(r)
        r = run("info", bad, ok=False)
        assert_clean_error(r)


def test_error_corrupt_chunk(work, encoded, tiny_model_path):
    data = bytearray(encoded.read_bytes())
    data[parse(bytes(data)).header_size + 20] ^= 0xFF
    bad = work / "badchunk.dfc"
    bad.write_bytes(bytes(data))
    r = run("decode", bad, "-o", work / "x.png", "--model", tiny_model_path, "-q", ok=False)
    assert_clean_error(r, "corrupt")


def test_train_refuses_unknown_names_in_one_line(work, image_folder):
    for opt, value in (("--model", "huge"), ("--schedule", "quadratic")):
        r = run("train", "--data", image_folder, "--out", work / "never.pt", opt, value, "--steps", 1, ok=False)
        assert_clean_error(r, value)
    assert not (work / "never.pt").exists()


def test_info_bound_gives_each_step_its_share_of_the_full_chain(work, encoded, tiny_model_path):
    """--bound: the model's 1,000-step bound, and per step the terms of the full chain on the
    same range of timesteps (latent step t -> s: terms s + 1 .. t; final step: 0 .. t_min)."""
    from diffcodec.checkpoint import load_prior
    from diffcodec.data import load_rgb
    from diffcodec.likelihood import bits_per_dim

    info = json.loads(run("info", encoded, "--json", "--bound", work / "a.png", "--model", tiny_model_path).output)
    assert (info["symmetry"], info["symmetry_max_t"]) == (2, 60)  # the default effort's, as the bound's network
    terms = bits_per_dim(load_rgb(work / "a.png"), load_prior(tiny_model_path), symmetry=2, symmetry_max_t=60)
    dims = 3 * 37 * 23
    assert info["model_bound_bits_per_dim"] == pytest.approx(terms.total, rel=1e-12)
    ts = info["coded_timesteps"]  # ascending: t_min .. T - 1
    spans = [(ts[j], ts[j - 1] + 1) for j in range(len(ts) - 1, 0, -1)] + [(ts[0], 0)]
    assert [(s["from_timestep"], s["to_timestep"] + 1) for s in info["steps"]] == spans
    for s, (hi, lo) in zip(info["steps"], spans):
        assert s["fine_bits"] == pytest.approx(terms.per_step[lo:hi + 1].sum() * dims, rel=1e-9)
        assert s["coded_over_fine"] == pytest.approx(8 * s["bytes"] / s["fine_bits"])
    # the steps partition the bound: all of it but x_T's prior term, which no step codes
    assert sum(s["fine_bits"] for s in info["steps"]) / dims == pytest.approx(terms.total - terms.prior, rel=1e-9)
    text = run("info", encoded, "--bound", work / "a.png", "--model", tiny_model_path).output
    assert "coded/fine" in text and "model_bound_bits_per_dim" in text
    assert_clean_error(run("info", encoded, "--bound", work / "b.png", "--model", tiny_model_path, ok=False),
                       "--bound image is 48x32")
