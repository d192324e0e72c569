"""The progressive codec (diffcodec.codec) end to end with tiny random models and an oracle."""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image
from scipy.stats import norm

import diffcodec.codec as codec
import diffcodec.final as final_step
from codec_fixtures import oracle_prior, other_model_path, other_prior, random_rgb, tiny_model_path, tiny_prior  # noqa: F401
from diffcodec.codec import DEFAULT_T_MIN, EncodeOptions, TileGrid, decode, encode, iter_previews
from diffcodec.container import FINAL, FINAL_PRED, LATENT, StepPayload, latent_payload, parse
from diffcodec.entropy import MAX_STD, MIN_STD
from diffcodec.errors import FormatError, ImageError

STEPS = 3


def _opts(**kw) -> EncodeOptions:
    kw.setdefault("steps", STEPS)
    kw.setdefault("seed", 7)
    kw.setdefault("pfr_budget", 0)  # the default method (auto) without PFR searches: fast; PFR has its own tests
    return EncodeOptions(**kw)


@pytest.fixture(scope="module")
def rgb_file(tiny_prior, tiny_images):
    img = tiny_images[0]  # 40 x 40
    res = encode(img, tiny_prior, _opts(steps=4))
    return res, img


# ----------------------------------------------------------------------------- lossless


def _images(tiny_images):
    gray = Image.fromarray(tiny_images[1]).convert("L")
    return {
        "rgb40x40": Image.fromarray(tiny_images[0]),
        "rgb48x32": Image.fromarray(tiny_images[1]),
        "rgb37x23": Image.fromarray(tiny_images[2]),
        "rgb1x1": Image.fromarray(random_rgb(1, 1, 1)),
        "rgb2x3": Image.fromarray(random_rgb(3, 2, 2)),
        "rgb8x8": Image.fromarray(random_rgb(8, 8, 3)),
        "flat": Image.new("RGB", (9, 5), (200, 10, 77)),
        "L": gray,
        "L1x1": Image.new("L", (1, 1), 128),
        "1": gray.convert("1"),
        "P": Image.fromarray(tiny_images[2]).quantize(16),
        "P256": Image.fromarray(tiny_images[0]).quantize(256),
    }


@pytest.mark.parametrize("name", ["rgb40x40", "rgb48x32", "rgb37x23", "rgb1x1", "rgb2x3", "rgb8x8", "flat", "L",
                                  "L1x1", "1", "P", "P256"])
def test_lossless_round_trip(name, tiny_prior, tiny_images):
    img = _images(tiny_images)[name]
    res = encode(img, tiny_prior, _opts())
    assert res.lossless and len(res.steps) == STEPS + 1
    out = decode(res.data, tiny_prior)
    assert out.lossless and not out.truncated and out.step == STEPS + 1 == out.total_steps
    assert out.image.mode == img.mode and out.image.size == img.size
    np.testing.assert_array_equal(np.asarray(out.image), np.asarray(img))
    if img.mode == "P":
        assert out.image.getpalette() == img.getpalette()
    assert (out.header.width, out.header.height) == img.size


def test_numpy_input_round_trip(tiny_prior, tiny_images):
    arr = tiny_images[2]
    out = decode(encode(arr, tiny_prior, _opts()).data, tiny_prior)
    np.testing.assert_array_equal(np.asarray(out.image), arr)
    grey = arr[:, :, 1].copy()
    out = decode(encode(grey, tiny_prior, _opts()).data, tiny_prior)
    assert out.image.mode == "L"
    np.testing.assert_array_equal(np.asarray(out.image), grey)


def test_encode_result_accounting(rgb_file):
    res, img = rgb_file
    parsed = parse(res.data)
    assert [s.kind for s in res.steps] == ["latent"] * 4 + ["final"]
    assert [c.kind for c in parsed.chunks] == [LATENT] * 4 + [FINAL]
    assert [s.bytes for s in res.steps] == [c.size for c in parsed.chunks]
    assert parsed.header_size + sum(s.bytes for s in res.steps) == len(res.data)
    ts = parsed.header.timesteps
    assert ts[-1] == 999 and ts[0] == DEFAULT_T_MIN and len(ts) == 5
    assert [s.timestep for s in res.steps] == [999, ts[3], ts[2], ts[1], ts[0]]
    for s in res.steps:
        assert math.isfinite(s.coded_bits) and s.coded_bits > 0 and s.coded_bits % 32 == 0
        assert math.isfinite(s.ideal_bits) and s.ideal_bits > 0
        assert s.coded_bits < 8 * s.bytes
    assert res.steps[-1].preview_rmse == 0.0
    assert all(math.isfinite(s.preview_rmse) for s in res.steps)


# ----------------------------------------------------------------------------- progressive decoding


def test_decode_every_step(rgb_file, tiny_prior):
    res, img = rgb_file
    n = len(res.steps)
    previous = None
    for k in range(n + 1):
        out = decode(res.data, tiny_prior, step=k)
        assert out.step == k and out.total_steps == n
        assert out.image.size == (40, 40) and out.image.mode == "RGB"
        assert out.lossless == (k == n)
        assert not out.truncated
        if previous is not None:
            assert not np.array_equal(np.asarray(out.image), previous)  # each step changes the preview
        previous = np.asarray(out.image)
    np.testing.assert_array_equal(previous, img)
    assert decode(res.data, tiny_prior, step=n + 5).step == n  # asking beyond the end is the end
    with pytest.raises(ValueError):
        decode(res.data, tiny_prior, step=-1)


def test_iter_previews(rgb_file, tiny_prior):
    res, img = rgb_file
    parsed = parse(res.data)
    previews = list(iter_previews(res.data, tiny_prior))
    k = parsed.header.num_latent_steps
    assert len(previews) == k + 2
    assert [p.step for p in previews] == list(range(k + 2))
    assert [p.timestep for p in previews] == [*reversed(parsed.header.timesteps), -1]
    sizes = [p.bytes for p in previews]
    assert sizes == sorted(sizes) and sizes[0] == parsed.header_size and sizes[-1] == len(res.data)
    assert [p.lossless for p in previews] == [False] * (k + 1) + [True]
    for p in previews:
        assert p.image.shape == (40, 40, 3) and p.image.dtype == np.uint8
    np.testing.assert_array_equal(previews[-1].image, img)
    # every=False yields only the last preview, identical to the one of the full iteration
    last = list(iter_previews(res.data, tiny_prior, max_step=2, every=False))
    assert len(last) == 1 and last[0].step == 2
    np.testing.assert_array_equal(last[0].image, previews[2].image)
    with pytest.raises(ValueError):
        list(iter_previews(res.data, tiny_prior, reconstruct="magic"))


@pytest.mark.parametrize("how", ["sample", "flow"])
def test_other_reconstructions(rgb_file, tiny_prior, how):
    res, img = rgb_file
    a = decode(res.data, tiny_prior, step=1, reconstruct=how)
    b = decode(res.data, tiny_prior, step=1, reconstruct=how)
    m = decode(res.data, tiny_prior, step=1, reconstruct="mean")
    assert a.image.size == (40, 40) and not a.lossless
    np.testing.assert_array_equal(np.asarray(a.image), np.asarray(b.image))  # deterministic
    assert not np.array_equal(np.asarray(a.image), np.asarray(m.image))
    full = decode(res.data, tiny_prior, reconstruct=how)
    assert full.lossless
    np.testing.assert_array_equal(np.asarray(full.image), img)


# ----------------------------------------------------------------------------- truncation


def test_truncation_at_chunk_boundaries(rgb_file, tiny_prior):
    res, img = rgb_file
    parsed = parse(res.data)
    n = len(parsed.chunks)
    ends = np.cumsum([parsed.header_size] + [c.size for c in parsed.chunks])
    full_previews = list(iter_previews(res.data, tiny_prior))
    for i, end in enumerate(ends):
        for cut in {int(end), int(end) + 1, int(end) + 11} if i < n else {int(end)}:
            out = decode(res.data[:cut], tiny_prior)
            assert out.step == i, (i, cut)
            assert out.truncated == (i < n)
            assert out.lossless == (i == n)
            # a truncated file shows exactly the preview the full file shows at that step
            np.testing.assert_array_equal(np.asarray(out.image.convert("RGB")), full_previews[i].image)


def test_truncation_at_random_offsets(rgb_file, tiny_prior):
    res, _ = rgb_file
    parsed = parse(res.data)
    ends = np.cumsum([parsed.header_size] + [c.size for c in parsed.chunks])
    rng = np.random.default_rng(3)
    cuts = list(rng.integers(0, parsed.header_size, 10)) + list(rng.integers(parsed.header_size, len(res.data), 12))
    for cut in map(int, cuts):
        if cut < parsed.header_size:
            with pytest.raises(FormatError):
                decode(res.data[:cut], tiny_prior)
        else:
            out = decode(res.data[:cut], tiny_prior)
            assert out.truncated and out.step == int(np.searchsorted(ends, cut, side="right")) - 1


# ----------------------------------------------------------------------------- refusals


def test_wrong_model_refused(rgb_file, tiny_prior, other_prior):
    res, _ = rgb_file
    assert other_prior.fingerprint != tiny_prior.fingerprint
    with pytest.raises(FormatError, match="another model") as e:
        decode(res.data, other_prior)
    assert other_prior.fingerprint[:12] in str(e.value) and tiny_prior.fingerprint[:12] in str(e.value)
    with pytest.raises(FormatError, match="another model"):
        list(iter_previews(res.data, other_prior))


def test_schedule_mismatch_refused(rgb_file, tiny_prior):
    import dataclasses

    from diffcodec.diffusion import DiffusionConfig

    res, _ = rgb_file
    fake = dataclasses.replace(tiny_prior, diffusion=DiffusionConfig("linear", 1000, "learned_range"))
    with pytest.raises(FormatError, match="schedule"):
        decode(res.data, fake)


def _dup_palette_image() -> Image.Image:
    img = Image.fromarray(np.array([[0, 1], [2, 1]], dtype=np.uint8), "P")
    img.putpalette([10, 20, 30, 10, 20, 30, 200, 100, 0])  # index 1 duplicates index 0
    return img


@pytest.mark.parametrize("make", [
    lambda: Image.new("RGBA", (4, 4), (1, 2, 3, 4)),
    lambda: Image.new("LA", (4, 4), (1, 2)),
    lambda: Image.new("I;16", (4, 4), 1000),
    lambda: Image.new("I", (4, 4), 1000),
    lambda: Image.new("F", (4, 4), 0.5),
    lambda: Image.new("CMYK", (4, 4), (1, 2, 3, 4)),
    lambda: Image.new("RGB", (4, 4)).convert("PA"),
    _dup_palette_image,
    lambda: np.zeros((4, 4, 3), dtype=np.uint16),
    lambda: np.zeros((4, 4, 4), dtype=np.uint8),
    lambda: np.zeros((4,), dtype=np.uint8),
    lambda: np.zeros((4, 4, 3), dtype=np.float32),
])
def test_unsupported_images_refused(make, tiny_prior):
    with pytest.raises(ImageError):
        encode(make(), tiny_prior, _opts())


def test_palette_with_transparency_refused(tiny_prior, tiny_images):
    img = Image.fromarray(tiny_images[2]).quantize(8)
    img.info["transparency"] = 0
    with pytest.raises(ImageError):
        encode(img, tiny_prior, _opts())


def test_palette_with_unused_duplicate_is_fine(tiny_prior):
    img = Image.fromarray(np.array([[0, 2], [2, 0]], dtype=np.uint8), "P")
    img.putpalette([10, 20, 30, 10, 20, 30, 200, 100, 0])  # duplicate colour, but index 1 is unused
    out = decode(encode(img, tiny_prior, _opts()).data, tiny_prior)
    np.testing.assert_array_equal(np.asarray(out.image), np.asarray(img))


# ----------------------------------------------------------------------------- lossy


def test_stop_after(tiny_prior, tiny_images):
    img = tiny_images[1]
    res = encode(img, tiny_prior, _opts(stop_after=2))
    parsed = parse(res.data)
    assert len(parsed.chunks) == 2 == parsed.header.num_chunks and not parsed.truncated
    assert not res.lossless and [s.kind for s in res.steps] == ["latent", "latent"]
    out = decode(res.data, tiny_prior)
    assert out.step == 2 and not out.lossless and not out.truncated
    assert out.image.size == (48, 32)
    assert not np.array_equal(np.asarray(out.image), img)
    zero = encode(img, tiny_prior, _opts(stop_after=0))
    assert len(parse(zero.data).chunks) == 0 and decode(zero.data, tiny_prior).step == 0


def test_max_bpp_budget(tiny_prior, tiny_images):
    img = tiny_images[2]
    h, w = img.shape[:2]
    full = encode(img, tiny_prior, _opts())
    parsed = parse(full.data)
    ends = np.cumsum([parsed.header_size] + [c.size for c in parsed.chunks])
    for i, end in enumerate(ends):
        for slack in (0.5, float(parsed.chunks[i].size) - 0.5 if i < len(parsed.chunks) else 0.5):
            max_bpp = 8 * (end + slack) / (w * h)
            res = encode(img, tiny_prior, _opts(max_bpp=max_bpp))
            got = parse(res.data)
            assert len(got.chunks) == i, (i, slack)
            assert 8 * len(res.data) / (w * h) <= max_bpp
            assert [c.payload for c in got.chunks] == [c.payload for c in parsed.chunks[:i]]
            assert res.lossless == (i == len(parsed.chunks))
    # a budget below the header: nothing but the header
    tiny = encode(img, tiny_prior, _opts(max_bpp=0.01))
    assert len(parse(tiny.data).chunks) == 0 and len(tiny.data) == parsed.header_size


# ----------------------------------------------------------------------------- determinism


def test_determinism_and_seeds(tiny_prior, tiny_images):
    img = tiny_images[2]
    a = encode(img, tiny_prior, _opts(seed=1)).data
    b = encode(img, tiny_prior, _opts(seed=1)).data
    c = encode(img, tiny_prior, _opts(seed=2)).data
    assert a == b
    assert a != c
    assert parse(a).header.seed == 1 and parse(c).header.seed == 2
    for data in (a, c):
        np.testing.assert_array_equal(np.asarray(decode(data, tiny_prior).image), img)
    r1, r2 = encode(img, tiny_prior, _opts(seed=None)), encode(img, tiny_prior, _opts(seed=None))
    assert r1.header.seed != r2.header.seed  # a random seed when none is given


# ----------------------------------------------------------------------------- cheating prior


def test_oracle_prior_latents_cost_nothing(tiny_prior, tiny_images):
    """With a network that knows x_0 (NeuralCompression's bits-back test), the latent steps carry
    no information: their entropy-coded streams must cost ~0 bits, and the file is still lossless."""
    img = tiny_images[0]
    dims = img.size
    prior = oracle_prior(img)
    res = encode(img, prior, _opts(steps=4))
    latent = [s for s in res.steps if s.kind == "latent"]
    assert len(latent) == 4
    stream_bits = sum(s.coded_bits for s in latent)
    side_bits = sum(8 * s.bytes - s.coded_bits for s in latent)  # chunk framing, ranges, scale codes
    assert stream_bits / dims < 0.01, (stream_bits, side_bits)
    # fixed overhead only: chunk framing, the step's coder tag (auto), UQ's fields, 3 scale codes (one tile)
    assert side_bits == 4 * 8 * (11 + 1 + 16 + 3)
    assert latent[0].preview_rmse < 1.0  # the oracle's x_0 estimate is exact after one step
    grey = np.sqrt(np.mean((img.astype(np.float64) - 128.0) ** 2))  # x_T: the flat mid-grey preview
    assert res.prior_rmse == pytest.approx(grey)
    out = decode(res.data, prior)
    assert out.lossless
    np.testing.assert_array_equal(np.asarray(out.image), img)
    # contrast: the random tiny model's latents cost a lot
    random_latent = sum(s.coded_bits for s in encode(img, tiny_prior, _opts(steps=4)).steps if s.kind == "latent")
    assert random_latent / dims > 1.0
    assert random_latent > 100 * max(stream_bits, 32)


def test_oracle_prior_final_step_is_cheap(tiny_images):
    img = tiny_images[2]
    prior = oracle_prior(img)
    res = encode(img, prior, _opts())
    final = res.steps[-1]
    assert final.kind == "final" and final.coded_bits / img.size < 0.05


# ----------------------------------------------------------------------------- rate vs ideal


def _ideal_bits(data, n, means, stds, lo, hi, sym):
    means = np.broadcast_to(np.asarray(means, dtype=np.float64).ravel(), (n,))
    stds = np.clip(np.broadcast_to(np.asarray(stds, dtype=np.float64).ravel(), (n,)), MIN_STD, MAX_STD)
    sym = np.asarray(sym).ravel().astype(np.float64)
    upper = np.where(sym == hi, np.inf, sym + 0.5)
    lower = np.where(sym == lo, -np.inf, sym - 0.5)
    p = np.where(sym > means, norm.sf(lower, means, stds) - norm.sf(upper, means, stds),
                 norm.cdf(upper, means, stds) - norm.cdf(lower, means, stds))
    return float(-np.log2(np.maximum(p, 2.0**-24)).sum())  # the coder's floor: 24-bit probabilities


def test_coded_rate_close_to_decoder_probabilities(rgb_file, tiny_prior, monkeypatch):
    """Record every range-decoder call of a real decode and check the stream lengths against an
    independent -sum log2 p (scipy) of the discretized Gaussians the decoder used."""
    res, _ = rgb_file
    calls = []
    real = codec.decode_gaussian

    def spy(data, n, means, stds, lo, hi):
        out = real(data, n, means, stds, lo, hi)
        calls.append((data, n, np.array(means, dtype=np.float64), np.array(stds, dtype=np.float64), lo, hi, out))
        return out

    monkeypatch.setattr(codec, "decode_gaussian", spy)
    monkeypatch.setattr(final_step, "decode_gaussian", spy)
    assert decode(res.data, tiny_prior).lossless
    final_calls = 3 if res.steps[-1].extra["channel_prediction"] else 1  # one stream per channel if predicted
    assert len(calls) == len(res.steps) - 1 + final_calls
    for i, (data, n, means, stds, lo, hi, sym) in enumerate(calls):
        coded = 8 * len(data)
        if i < len(res.steps) - 1:
            assert coded == res.steps[i].coded_bits
        ideal = _ideal_bits(data, n, means, stds, lo, hi, sym)
        assert math.isfinite(ideal) and ideal > 0
        assert coded <= 1.05 * ideal + 64, (i, coded, ideal)
        assert coded >= 0.95 * ideal - 64, (i, coded, ideal)
    assert sum(8 * len(c[0]) for c in calls[len(res.steps) - 1:]) == res.steps[-1].coded_bits
    # the final step's symbols are the pixels, coded under the model's mean
    assert calls[-1][4:6] == (0, 255)


# ----------------------------------------------------------------------------- side information


def test_tile_grid_expand_and_sums():
    g = TileGrid(3, 37, 23, 16)
    assert (g.gh, g.gw) == (3, 2) and g.size == 18
    codes = bytes(range(100, 118))
    s = g.expand(codes)
    assert s.shape == (3, 37, 23)
    assert s[0, 0, 0] == 2.0 ** ((100 - 160) / 8) and s[2, 36, 22] == 2.0 ** ((117 - 160) / 8)
    np.testing.assert_array_equal(g.tile_sums(np.ones((3, 37, 23))),
                                  np.broadcast_to([[16 * 16, 16 * 7], [16 * 16, 16 * 7], [5 * 16, 5 * 7]], (3, 3, 2)))
    assert TileGrid(3, 10, 10, 64).tile == 0 and TileGrid(3, 10, 10, 64).size == 3


def _fit_cost(grid: TileGrid, residual: np.ndarray, codes: bytes) -> float:
    s = grid.expand(codes)
    r = np.abs(residual)
    p = norm.cdf((0.5 - r) / s) - norm.cdf((-0.5 - r) / s)
    return float(-np.log2(np.maximum(p, 1e-300)).sum())


@pytest.mark.parametrize("sd", [0.5, 1.0, 4.0, 30.0])
def test_tile_grid_fit_is_near_optimal(sd):
    """For residuals of moderate spread the fitted scale is as good as the best of all 256."""
    rng = np.random.default_rng(0)
    grid = TileGrid(3, 32, 32, 0)
    res = np.rint(rng.normal(0, sd, (3, 32, 32)))
    fitted = _fit_cost(grid, res, grid.fit(res))
    best = min(_fit_cost(grid, res, bytes([c] * 3)) for c in range(256))
    assert fitted <= 1.01 * best + 1


def test_tile_grid_fit_weak_signal_latent():
    """A latent step whose signal is far below the quantization step: k = round(d - u) with
    |d| << 1, coded with mean -u.  The best scale makes it cost ~0.03 bit/dim."""
    rng = np.random.default_rng(0)
    grid = TileGrid(3, 32, 32, 0)
    d = rng.normal(0, 0.01, (3, 32, 32))
    u = rng.uniform(-0.5, 0.5, d.shape)
    res = np.rint(d - u) + u
    fitted = _fit_cost(grid, res, grid.fit(res))
    best = min(_fit_cost(grid, res, bytes([c] * 3)) for c in range(256))
    assert fitted <= 2 * best + 32


# ----------------------------------------------------------------------------- options and robustness


@pytest.mark.parametrize("tile", [8, 16, 0])
def test_tiled_side_information(tile, tiny_prior, tiny_images):
    img = tiny_images[2]  # 37 x 23: partial tiles on both edges
    res = encode(img, tiny_prior, _opts(tile=tile))
    parsed = parse(res.data)
    assert parsed.header.tile == tile
    grid = TileGrid(3, 23, 37, tile)
    n_tiles = (-(-23 // tile)) * (-(-37 // tile)) if tile else 1
    for c in parsed.chunks:
        payload = latent_payload(c.payload, parsed.header.method)[1] if c.kind == LATENT else c.payload
        assert len(StepPayload.from_bytes(payload).scale_codes) == 3 * n_tiles == grid.size
    out = decode(res.data, tiny_prior)
    np.testing.assert_array_equal(np.asarray(out.image), img)


def test_t_min(tiny_prior, tiny_images):
    img = tiny_images[1]
    res = encode(img, tiny_prior, _opts(t_min=100))
    assert parse(res.data).header.timesteps[0] == 100 and res.steps[-1].timestep == 100
    np.testing.assert_array_equal(np.asarray(decode(res.data, tiny_prior).image), img)
    with pytest.raises(ValueError):
        encode(img, tiny_prior, _opts(t_min=999))
    with pytest.raises(ValueError):
        encode(img, tiny_prior, _opts(steps=1000))


def test_bilevel_and_grey_previews_are_grey(tiny_prior, tiny_images):
    for mode in ("1", "L"):
        img = Image.fromarray(tiny_images[0]).convert(mode)
        res = encode(img, tiny_prior, _opts())
        prev = decode(res.data, tiny_prior, step=1)
        assert prev.image.mode == "L" and not prev.lossless
        full = decode(res.data, tiny_prior)
        assert full.image.mode == mode


def test_latent_decoding_does_not_depend_on_network_bits(rgb_file, tiny_prior, other_prior, monkeypatch):
    """The latent steps' symbols are decoded under probabilities that depend only on the dither
    and the side information: a decoder whose network differs (here: entirely) still recovers
    the same latent symbols; only the final step (whose mean is the network's) notices, through
    the checksum, and refuses instead of returning a wrong image."""
    import dataclasses

    res, _ = rgb_file
    records = {}
    real = codec.decode_gaussian

    def spy(tag):
        def f(data, n, means, stds, lo, hi):
            out = real(data, n, means, stds, lo, hi)
            records.setdefault(tag, []).append(out)
            return out
        return f

    for module in (codec, final_step):
        monkeypatch.setattr(module, "decode_gaussian", spy("true"))
    decode(res.data, tiny_prior)
    impostor = dataclasses.replace(other_prior, fingerprint=tiny_prior.fingerprint)
    for module in (codec, final_step):
        monkeypatch.setattr(module, "decode_gaussian", spy("impostor"))
    with pytest.raises(FormatError, match="checksum|corrupt"):
        decode(res.data, impostor)
    latent = len(res.steps) - 1
    assert len(records["true"]) > latent and len(records["impostor"]) >= latent
    for a, b in zip(records["true"][:latent], records["impostor"][:latent]):
        np.testing.assert_array_equal(a, b)


def test_shipped_model_round_trip(tiny_images):
    """The default model inside the package loads with no arguments and codes a photo losslessly;
    on a photo its final step takes the channel-predicted layout (diffcodec.final)."""
    from diffcodec.checkpoint import load_prior

    prior = load_prior()
    img = tiny_images[0]
    res = encode(img, prior, _opts())
    assert res.lossless and res.steps[-1].extra["channel_prediction"]
    assert parse(res.data).chunks[-1].kind == FINAL_PRED
    out = decode(res.data, prior)
    assert out.lossless
    np.testing.assert_array_equal(np.asarray(out.image), img)
