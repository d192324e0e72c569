"""The spectral PFR layout (diffcodec.coders.spectral): an orthonormal basis, KL-optimal gains, a
layout that follows the per-dimension rates, exact round trips, a rate below the plain layout's
on a coloured residual, and the codec's files (every prefix decodes, damage is a FormatError)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from codec_fixtures import analytic_prior, decode_outcome, toy_linear_prior, with_chunk, with_linear
from diffcodec import philox
from diffcodec.codec import EncodeOptions, decode, encode, iter_previews
from diffcodec.coders import pfr, spectral
from diffcodec.coders.pfr import PfrPayload
from diffcodec.container import parse
from diffcodec.errors import FormatError
from diffcodec.kinds import ChunkKind, LatentMethod
from diffcodec.sideinfo import GAIN, TileGrid


def _basis(h=37, w=50, tile=16) -> spectral.SpectralBasis:
    return spectral.SpectralBasis(toy_linear_prior(), TileGrid(3, h, w, tile))


def test_basis_is_orthonormal_with_edge_tiles():
    """Colour rotation and per-tile DCT (edge tiles 5 and 2 px): norms kept, inverse exact to
    rounding, and a coefficient's energy stays inside its own tile."""
    b = _basis()
    x = np.random.default_rng(0).normal(size=(3, 37, 50))
    u = b.forward(x)
    assert u.shape == x.shape and np.sum(u * u) == pytest.approx(np.sum(x * x), rel=1e-12)
    np.testing.assert_allclose(b.inverse(u), x, atol=1e-12)
    one = np.zeros_like(x)
    one[1, 35, 49] = 1.0  # the corner tile (5 x 2 px)
    spread = b.forward(one)
    assert np.abs(spread[:, :32, :]).max() == 0 and np.abs(spread[:, :, :48]).max() == 0
    assert np.sum(spread**2) == pytest.approx(1.0)


def test_shape_is_the_wiener_error():
    """T = scale S nu / (S + nu): nu at high noise leaves S, a small nu leaves nu (per coefficient)."""
    b = _basis(32, 32, 0)
    s = toy_linear_prior().power(32, 32)
    np.testing.assert_allclose(b.shape(1e9, 2.0), 2.0 * s, rtol=1e-6)
    np.testing.assert_allclose(b.shape(1e-9, 1.0), 1e-9, rtol=1e-3)
    np.testing.assert_allclose(b.shape(0.01, 1.0), s * 0.01 / (s + 0.01))


def test_fit_gains_matches_the_exhaustive_minimum():
    """Per group, the fitted code's exact KL is within 0.1 % of the best of all 256 codes."""
    b = _basis(32, 48, 16)
    grid = b.grid
    shape = b.shape(0.05, 30.0)
    rng = np.random.default_rng(3)
    gains = 2.0 ** rng.uniform(-10, 2, grid.size)
    u2 = (rng.normal(size=shape.shape) ** 2) * grid.expand(gains) * shape
    codes = np.frombuffer(spectral.fit_gains(u2, shape, grid), np.uint8)
    gid = grid.group_ids()
    for g in range(grid.size):
        m = gid == g
        kl = [spectral.kl_bits(u2[m], 1 + GAIN.value(c) * shape[m]).sum() for c in range(256)]
        assert kl[codes[g]] <= min(kl) * 1.001 + 1e-9
        if gains[g] > 0.25:  # where g T is not small against 1, the data pin the gain that drew them
            assert abs(math.log2(GAIN.value(codes[g]) / gains[g])) < 1.0


def test_rate_plan_cuts_chunks_of_equal_expected_bits():
    """The rate layout partitions every (tile, channel) group into chunks that expect about
    chunk_bits each however unevenly the rates are spread (a dimension expecting more is alone),
    in exact units, at most MAX_CHUNK_DIMS dimensions a chunk; it is seeded and deterministic."""
    grid = TileGrid(3, 20, 28, 8)
    rng = np.random.default_rng(2)
    rsq = 1.0 + grid.expand(2.0 ** rng.uniform(-4, 1, grid.size)) * 2.0 ** rng.uniform(-12, 4, (3, 20, 28))
    plan = pfr.make_rate_plan(rsq, grid, (1, 2), 8)
    units = np.round(0.5 * np.log2(rsq.reshape(-1)[plan.order]) * pfr.EXPECTED_UNITS)
    assert sorted(plan.order.tolist()) == list(range(rsq.size)) and (np.diff(plan.chunk) >= 0).all()
    np.testing.assert_array_equal(plan.expected_bits * pfr.EXPECTED_UNITS, np.bincount(plan.chunk, units))
    gid = grid.group_ids().reshape(-1)[plan.order]
    biggest = np.zeros(plan.num_chunks)
    np.maximum.at(biggest, plan.chunk, units / pfr.EXPECTED_UNITS)
    for c in range(plan.num_chunks):
        g = gid[plan.starts[c]:plan.starts[c + 1]]
        assert (g == g[0]).all()
        assert plan.expected_bits[c] <= 8 + biggest[c] or plan.sizes[c] == 1
    last = np.r_[gid[plan.starts[1:-1]] != gid[plan.starts[:-2]], True]  # a group's last chunk may be short
    inner = plan.expected_bits[~last]
    assert len(inner) > 20 and np.abs(inner - 8).max() < 8 and abs(np.median(inner) - 8) < 1.5
    again = pfr.make_rate_plan(rsq, grid, (1, 2), 8, pfr.group_order(grid, (1, 2)))
    assert np.array_equal(again.chunk, plan.chunk) and np.array_equal(again.order, plan.order)
    flat = pfr.make_rate_plan(np.full((3, 200, 100), 1.0 + 1e-6), TileGrid(3, 200, 100, 0), (1, 2), 8)
    assert plan.num_chunks > 0 and flat.sizes.max() == pfr.MAX_CHUNK_DIMS and flat.sizes.sum() == 60_000


def _coloured_step(h=48, w=64, tile=32, seed=5):
    """delta drawn from the spectral model itself (a gain per tile and component)."""
    b = _basis(h, w, tile)
    shape = b.shape(0.02, 400.0)
    rng = np.random.default_rng(seed)
    g = b.grid.expand(2.0 ** rng.uniform(-3, 0, b.grid.size))
    u = rng.normal(size=shape.shape) * np.sqrt(g * shape)
    return b, shape, b.inverse(u), torch.from_numpy(rng.normal(size=(3, h, w)))


def test_spectral_step_round_trips_and_codes_below_the_plain_layout():
    """On a residual whose spectrum the model's shape describes, the spectral layout's KL is far
    below the plain one's, its index bits are KL plus PFR's per-chunk overhead, and the decoder
    rebuilds the encoder's sample bit for bit."""
    b, shape, delta, mu_p = _coloured_step()
    sigma_q, key = 0.05, philox.seed_key(7)
    step = spectral.encode_step(delta, mu_p, sigma_q, shape, b, key, 1, 6, 4)
    plain = pfr.encode_step(mu_p + sigma_q * torch.from_numpy(delta), mu_p, sigma_q, b.grid, key, 1, 6, 4)
    s = step.stats
    assert s["kl_prior_bits"] < 0.8 * plain.stats["kl_prior_bits"], (s, plain.stats)
    assert s["kl_prior_bits"] - 3 * s["chunks"] <= s["index_bits"] <= s["kl_prior_bits"] + 5 * s["chunks"] + 32
    assert s["index_bits"] < plain.stats["index_bits"]
    payload = PfrPayload(6, 4, step.offset_code, step.std_code, step.codes, step.stream, step.raw)
    again = PfrPayload.from_bytes(payload.to_bytes(), b.grid.size)
    x = spectral.decode_step(again, mu_p, sigma_q, shape, b, key, 1)
    assert torch.equal(x, step.x)
    # the sample is q's: its standardised residual is white with unit variance
    resid = b.forward((step.x - mu_p).numpy() / sigma_q - delta)
    assert abs(resid.mean()) < 0.05 and abs(resid.var() - 1.0) < 0.1


# ----------------------------------------------------------------------------- the codec


def _opts(**kw) -> EncodeOptions:
    return EncodeOptions(**{"steps": 4, "t_min": 4, "seed": 11, "method": LatentMethod.PFR, "pfr_chunk_bits": 6,
                            "pfr_margin_bits": 4, "tile": 16, **kw})


def _smooth(h=24, w=40) -> np.ndarray:
    """A photo, downscaled: its x_0 error under the analytic prior (which shrinks x_t towards 0)
    has the photo's falling spectrum, which the spectral layout's shape follows."""
    from skimage import data

    return np.asarray(Image.fromarray(data.astronaut()).resize((w, h), Image.Resampling.LANCZOS))


@pytest.fixture(scope="module")
def spec_file():
    prior = with_linear(analytic_prior())
    img = _smooth()
    return encode(img, prior, _opts()), img, prior


def test_files_take_the_spectral_layout_and_round_trip(spec_file):
    """The encoder takes the spectral layout where its KL is the smaller (the three noisiest steps
    here, not the last one), the file decodes losslessly; without the layout, or with a model
    lacking a linear prior, the file has plain PFR steps only."""
    res, img, prior = spec_file
    kinds = [c.kind for c in parse(res.data).chunks]
    assert kinds == [ChunkKind.PFR_SPEC] * 3 + [ChunkKind.PFR, ChunkKind.FINAL] and res.data[8] == 8, kinds
    for s in res.steps:
        if s.kind == ChunkKind.PFR_SPEC:  # taken where it has the smaller KL
            assert s.extra["kl_prior_bits"] < s.extra["plain_kl_bits"]
    out = decode(res.data, prior)
    assert out.lossless
    np.testing.assert_array_equal(np.asarray(out.image), img)
    plain = encode(img, prior, _opts(spectral_pfr=False))
    assert ChunkKind.PFR_SPEC not in [c.kind for c in parse(plain.data).chunks]
    assert len(plain.data) > len(res.data)
    assert ChunkKind.PFR_SPEC not in [c.kind for c in parse(encode(img, analytic_prior(), _opts()).data).chunks]
    with pytest.raises(FormatError, match="linear prior"):
        decode(res.data, analytic_prior())  # the same fingerprint, but no linear prior to read the step with


def test_every_prefix_decodes(spec_file):
    res, _, prior = spec_file
    parsed = parse(res.data)
    full = list(iter_previews(res.data, prior))
    end = parsed.header_size
    for i, c in enumerate(parsed.chunks):
        out = decode(res.data[:end + 3], prior)
        assert out.truncated and out.step == i
        np.testing.assert_array_equal(np.asarray(out.image.convert("RGB")), full[i].image)
        end += c.size


def test_corrupt_spectral_payloads_raise_only_format_errors(spec_file):
    res, img, prior = spec_file
    parsed = parse(res.data)
    spec = [i for i, c in enumerate(parsed.chunks) if c.kind == ChunkKind.PFR_SPEC]
    rng = np.random.default_rng(9)
    outcomes = {"ok": 0, "error": 0}
    for i in range(40):
        c = spec[i % len(spec)]
        payload = bytearray(parsed.chunks[c].payload)
        if i % 3 == 0:  # coding parameters and the gain codes
            payload[int(rng.integers(0, 8))] = int(rng.choice([0, 1, 21, 255, int(rng.integers(256))]))
        elif i % 3 == 1:
            payload = payload[:len(payload) - int(rng.integers(1, 6))]
        else:
            for pos in rng.integers(4, len(payload), int(rng.integers(1, 4))):
                payload[pos] ^= int(rng.integers(1, 256))
        outcomes[decode_outcome(with_chunk(res.data, c, ChunkKind.PFR_SPEC, bytes(payload)), prior, img)] += 1
    assert outcomes["error"] > 10, outcomes
