"""The PFR channel simulator (diffcodec.coders.pfr) and its integration: exact search, samples that
follow q, rate against UQ, layouts, lossless round trips, truncation and hostile payloads."""

from __future__ import annotations

import json
import math
import struct
import zlib

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from scipy import stats

from codec_fixtures import decode_outcome, random_rgb, tiny_model_path, tiny_prior, with_chunk  # noqa: F401
from diffcodec import philox
from diffcodec.cli import main
from diffcodec.codec import EncodeOptions, decode, encode, iter_previews
from diffcodec.coders import pfr
from diffcodec.coders.pfr import PfrPayload
from diffcodec.container import Chunk, parse
from diffcodec.entropy import encode_gaussian, pack_bits, unpack_bits
from diffcodec.errors import FormatError
from diffcodec.kinds import ChunkKind, LatentMethod
from diffcodec.sideinfo import TileGrid
from diffcodec.trajectory import EFFORTS


def _opts(**kw) -> EncodeOptions:
    kw = {"steps": 3, "t_min": 10, "seed": 11, "method": LatentMethod.PFR, "pfr_chunk_bits": 6,
          "pfr_margin_bits": 4, **kw}
    return EncodeOptions(**kw)


# ----------------------------------------------------------------------------- raw bits


def test_pack_bits_round_trip_and_refusals():
    rng = np.random.default_rng(1)
    widths = rng.integers(0, 30, 500)
    values = rng.integers(0, 2**40, 500) & ((1 << widths) - 1)
    data = pack_bits(values, widths)
    assert len(data) == -(-int(widths.sum()) // 8)
    np.testing.assert_array_equal(unpack_bits(data, widths), values)
    assert pack_bits(np.array([5, 1]), np.array([3, 1])) == bytes([0b10110000])
    assert pack_bits(np.zeros(3), np.zeros(3)) == b"" and unpack_bits(b"", np.zeros(3)).tolist() == [0, 0, 0]
    with pytest.raises(FormatError):
        unpack_bits(data + b"\0", widths)
    with pytest.raises(FormatError):
        unpack_bits(bytes([0b10110001]), np.array([3, 1]))  # non-zero padding


# ----------------------------------------------------------------------------- the search


def _synthetic(mean: np.ndarray, r: float, chunks: int) -> tuple[pfr.Plan, np.ndarray, np.ndarray, float]:
    """q = N(mean, 1) per dim, p' = N(0, r^2): chunks of len(mean) dims; KL in bits."""
    d = len(mean)
    plan = pfr.plan_from_sizes(np.full(chunks, d), np.full(chunks, math.log2(r)))
    kl = sum(math.log2(r) + ((1 + m * m) / (r * r) - 1) / (2 * math.log(2)) for m in mean)
    return plan, np.tile(mean / r, chunks), np.full(d * chunks, r * r), kl


def _brute_force(key, step, plan, a, rsq, caps) -> np.ndarray:
    """argmin_n ln T_n - ln w_n with the full log densities, one chunk and candidate at a time."""
    out = []
    for c in range(plan.num_chunks):
        pos = np.arange(plan.starts[c], plan.starts[c + 1])
        n = torch.arange(1 << int(caps[c]))[:, None]
        local = pos - pos[0]
        # position p of the chunk: octet p // 8, lane p % 8 = 16-bit half (p % 8) % 2 of word (p % 8) // 2
        words = philox.philox4x32(torch.from_numpy(local // 8)[None], n, c, (pfr.TAG_NORMAL << 16) | step, key)
        w = torch.stack(words, dim=-1)[..., torch.from_numpy((local % 8) // 2)].diagonal(dim1=1, dim2=2)
        half = (w >> torch.from_numpy(16 * (local % 2))[None]) & 0xFFFF
        from scipy.special import ndtri

        z = ndtri((half.numpy() + 0.5) / 65536).astype(np.float32).astype(np.float64)
        r = np.sqrt(rsq[pos])
        x, mu_q = r * z, a[pos] * r  # sigma_q = 1, mu_p = 0
        log_w = (-0.5 * (x - mu_q) ** 2 + 0.5 * (x / r) ** 2 + np.log(r)).sum(axis=1)
        e, _ = philox.exponentials(key, n[:, 0], c, 0, (pfr.TAG_ARRIVAL << 16) | step)
        out.append(int(np.argmin(np.log(np.cumsum(e.numpy())) - log_w)))
    return np.array(out)


def test_search_is_the_exact_capped_argmin():
    rng = np.random.default_rng(0)
    sizes = np.array([1, 2, 3, 5, 8, 13, 4, 1])
    plan = pfr.plan_from_sizes(sizes, rng.uniform(0.3, 2.0, len(sizes)))
    r = plan.ratio[plan.chunk]
    a = rng.normal(0, 1, sizes.sum()) * np.sqrt(r * r - 1) / r
    caps = np.array([6, 7, 8, 9, 10, 10, 9, 4])
    ref = _brute_force((5, 6), 3, plan, a, r * r, caps)
    for elements in (64, 1024, 2**18):  # block sizes and early stopping do not change the result
        found = pfr.search((5, 6), 3, plan, a, r * r, caps, max_elements=elements, compiled=False)
        np.testing.assert_array_equal(found.nstar, ref)
    assert found.certified.any() and (found.nstar < (1 << caps)).all()
    if pfr._kernel() is not None:  # the compiled search (built by pip where a C compiler is found)
        fast = pfr.search((5, 6), 3, plan, a, r * r, caps, compiled=True)
        assert fast.compiled
        np.testing.assert_array_equal(fast.nstar, ref)
        np.testing.assert_array_equal(fast.certified, found.certified)
    z = pfr.regenerate((5, 6), 3, plan, found.nstar)
    assert z.shape == (sizes.sum(),) and torch.isfinite(z).all()


def test_candidate_normals_are_the_quantile_table():
    """Eight normals per Philox call, one per 16-bit half, from the 65536 quantiles of N(0, 1)."""
    table = pfr.normal_table()
    assert table.shape == (65536,) and torch.all(table[1:] > table[:-1]) and abs(float(table.mean())) < 1e-6
    assert float(table[-1]) == pytest.approx(4.3249, abs=1e-4) and float(table[0]) == -float(table[-1])
    z = pfr.candidate_normals((1, 2), torch.arange(4000), 7, 3, 9)
    assert z.shape == (4000, 8)
    words = philox.philox4x32(torch.arange(4000), 7, 3, (pfr.TAG_NORMAL << 16) | 9, (1, 2))
    np.testing.assert_array_equal(z[:, 3].numpy(), table[(words[1] >> 16)].numpy())  # lane 3: word 1, high half
    assert abs(float(z.mean())) < 0.02 and abs(float(z.std()) - 1) < 0.02
    assert stats.kstest(z.reshape(-1).numpy(), "norm").pvalue > 1e-3


@pytest.mark.parametrize("mean,r", [(np.array([1.5, -1.0, 2.0]), 2.0), (np.array([12.0]), 16.0)])
def test_samples_follow_q(mean, r):
    """Thousands of independent chunks (independent counters) with KL ~2.7 / 3.7 bits < chunk_bits:
    the decoded samples are distributed as q, and clearly not as the prior p'."""
    chunks = 3000
    plan, a, rsq, kl = _synthetic(mean, r, chunks)
    assert 2 < kl < 4
    cap = np.full(chunks, math.ceil(kl) + 6)
    found = pfr.search((123, 456), 0, plan, a, rsq, cap)
    x = r * pfr.regenerate((123, 456), 0, plan, found.nstar).numpy().reshape(chunks, len(mean))
    np.testing.assert_allclose(x.mean(axis=0), mean, atol=4.5 / math.sqrt(chunks))
    np.testing.assert_allclose(x.var(axis=0), 1.0, atol=0.12)
    proj = (x - mean).sum(axis=1) / math.sqrt(len(mean))
    assert stats.kstest(proj, "norm").pvalue > 1e-3
    prior = r * pfr.regenerate((123, 456), 0, plan, np.zeros(chunks, dtype=np.int64)).numpy()
    assert stats.kstest((prior.reshape(chunks, -1) - mean).sum(axis=1) / math.sqrt(len(mean)), "norm").pvalue < 1e-6
    assert found.certified.mean() > 0.5  # the sup bound proves most of these searches exact
    b = np.floor(np.log2(found.nstar + 1))
    assert kl - 2 < b.mean() < kl + 1


# ----------------------------------------------------------------------------- rate


@pytest.mark.parametrize("kl_per_dim", [0.05, 0.3])
def test_rate_is_kl_plus_chunk_overhead_and_beats_uq_at_low_kl(kl_per_dim):
    from diffcodec.trajectory import uq_overhead

    grid = TileGrid(3, 16, 32, 0)
    rng = np.random.default_rng(7)
    delta = rng.normal(0, math.sqrt(2 ** (2 * kl_per_dim) - 1), (3, 16, 32))
    sigma_q = 0.1
    mu_p = torch.from_numpy(rng.normal(0, 1, (3, 16, 32)))
    key = philox.seed_key(99)
    step = pfr.encode_step(mu_p + sigma_q * torch.from_numpy(delta), mu_p, sigma_q, grid, key, 2, 6, 4)
    s = step.stats
    kl = s["kl_prior_bits"]
    assert abs(kl / delta.size - kl_per_dim) < 0.2 * kl_per_dim
    assert kl - 3 * s["chunks"] <= s["index_bits"] <= kl + 5 * s["chunks"] + 32, s
    payload = PfrPayload(6, 4, step.offset_code, step.std_code, step.codes, step.stream, step.raw)
    uq = delta.size * (kl_per_dim + float(uq_overhead(kl_per_dim)))  # UQ's entropy on the same step
    uq_side = 8 * (4 + grid.size)  # UQ's payload besides its stream: the widths' count and codes
    if kl_per_dim < 0.1:  # UQ pays ~0.2 bits/dim here (../shared/notes/coding-overhead.md)
        assert s["index_bits"] < 0.5 * uq and 8 * len(payload.to_bytes()) < 0.75 * (uq + uq_side), (s, uq)
    again = PfrPayload.from_bytes(payload.to_bytes(), grid.size)
    assert again == payload
    x = pfr.decode_step(again, mu_p, sigma_q, grid, key, 2)
    assert torch.equal(x, step.x)


# ----------------------------------------------------------------------------- layout


def test_plan_is_a_seeded_partition():
    grid = TileGrid(3, 20, 28, 8)
    rng = np.random.default_rng(2)
    codes = rng.integers(120, 230, grid.size).astype(np.uint8).tobytes()
    plan = pfr.make_plan(codes, grid, (1, 2), 8)
    dims = 3 * 20 * 28
    assert sorted(plan.order.tolist()) == list(range(dims))
    assert (np.diff(plan.chunk) >= 0).all() and plan.starts[-1] == dims
    gid = (np.arange(3)[:, None, None] * grid.gh * grid.gw + grid.rows[None, :, None] * grid.gw
           + grid.cols[None, None, :]).ravel()[plan.order]
    kappa = pfr.KAPPA[np.frombuffer(codes, np.uint8)]
    for c in range(plan.num_chunks):
        g = gid[plan.starts[c]:plan.starts[c + 1]]
        assert (g == g[0]).all()  # a chunk stays inside one tile and channel
        assert plan.sizes[c] <= max(1, math.floor(8 / kappa[g[0]] + 1e-9))
    again = pfr.make_plan(codes, grid, (1, 2), 8, pfr.group_order(grid, (1, 2)))  # a precomputed order: the same
    assert np.array_equal(again.order, plan.order) and np.array_equal(again.chunk, plan.chunk)
    assert not np.array_equal(pfr.make_plan(codes, grid, (1, 3), 8).order, plan.order)  # per seed
    other = rng.integers(120, 230, grid.size).astype(np.uint8).tobytes()
    chunks = pfr.make_plan(other, grid, (1, 2), 8)
    assert np.array_equal(chunks.order, plan.order) and not np.array_equal(chunks.chunk, plan.chunk)  # per codes


def test_chunk_sizes_are_far_from_rounding_boundaries():
    """Chunk sizes are floor(chunk_bits / kappa + 1e-9): no table entry may sit within 1e-10 of
    the point where that flips, so a last-ulp difference of pow() between machines cannot."""
    for cb in range(1, pfr.MAX_CHUNK_BITS + 1):
        x = cb / pfr.KAPPA
        assert (np.abs(x - np.floor(x) - (1 - 1e-9)) > 1e-10).all()


def test_fit_codes_is_kl_optimal():
    grid = TileGrid(3, 32, 32, 16)
    rng = np.random.default_rng(4)
    scale = np.repeat(np.array([0.05, 0.5, 2.0, 8.0])[None, :, None], 3, axis=0)
    delta2 = (rng.normal(0, 1, (3, 4, 256)) * scale).reshape(3, 32, 32) ** 2
    kappa = pfr.KAPPA[np.frombuffer(pfr.fit_codes(delta2, grid), np.uint8)]
    opt = 0.5 * np.log2(1 + grid.tile_sums(delta2).ravel() / 256)
    np.testing.assert_allclose(kappa, opt, rtol=0.04)


# ----------------------------------------------------------------------------- the codec


@pytest.fixture(scope="module")
def pfr_file(tiny_prior):
    img = random_rgb(12, 16, 5)
    res = encode(img, tiny_prior, _opts())
    return res, img


def test_lossless_round_trips(pfr_file, tiny_prior):
    res, img = pfr_file
    parsed = parse(res.data)
    assert res.lossless and [c.kind for c in parsed.chunks[:-1]] == [ChunkKind.PFR] * 3
    for c, s in zip(parsed.chunks[:-1], res.steps[:-1]):
        p = PfrPayload.from_bytes(c.payload, 3)
        assert (p.chunk_bits, p.margin) == (6, 4) and c.ideal_bits == pytest.approx(s.ideal_bits, abs=1 / 16)
        assert s.coded_bits == 8 * (len(p.stream) + len(p.raw)) and s.extra["chunks"] > 0
    np.testing.assert_array_equal(np.asarray(decode(res.data, tiny_prior).image), img)
    for image in (Image.fromarray(random_rgb(8, 8, 6)), Image.fromarray(random_rgb(10, 9, 7)).convert("L")):
        out = decode(encode(image, tiny_prior, _opts(tile=8)).data, tiny_prior)
        assert out.lossless and out.image.mode == image.mode
        np.testing.assert_array_equal(np.asarray(out.image), np.asarray(image))


@pytest.mark.parametrize("effort", sorted(e for e, lvl in EFFORTS.items() if lvl.pfr))
def test_every_efforts_chunk_and_margin_round_trip(tiny_prior, effort):
    """The efforts' PFR settings (big chunks with margins down to one bit) write those fields
    and decode losslessly."""
    level = EFFORTS[effort]
    image = Image.fromarray(random_rgb(8, 8, effort))
    res = encode(image, tiny_prior, _opts(tile=8, effort=effort, pfr_chunk_bits=None, pfr_margin_bits=None))
    for c in parse(res.data).chunks[:-1]:
        p = PfrPayload.from_bytes(c.payload, 3)
        assert (p.chunk_bits, p.margin) == (level.chunk_bits, level.margin_bits)
    out = decode(res.data, tiny_prior)
    assert out.lossless
    np.testing.assert_array_equal(np.asarray(out.image), np.asarray(image))


def test_pfr_steps_leave_the_intervals_open_and_mix_with_uq(tiny_prior):
    """A PFR step sends a Gaussian sample, not a cell: it hands the feasible intervals on as
    they were; a chain mixing both coders decodes losslessly."""
    from diffcodec import trajectory
    from diffcodec.chain import CodedChain
    from diffcodec.coders import CODERS, EncodeTarget, StepContext
    from diffcodec.intervals import Intervals

    img = random_rgb(12, 16, 5)
    res = encode(img, tiny_prior, _opts())
    chain = CodedChain(tiny_prior, res.header)
    levels = img.transpose(2, 0, 1).astype(np.int64)
    target = EncodeTarget(levels, 3, 6, 4)
    ints = Intervals(chain.n, np.full(chain.n, 3), np.full(chain.n, 250))
    x = chain.x_T()
    step = CODERS[ChunkKind.PFR].encode(StepContext(chain, 0, 3, x, chain.predict(x, 3), ints), target)
    assert step.intervals is ints
    assert step.payload == parse(res.data).chunks[0].payload  # the intervals play no part in PFR

    mixed = trajectory.Plan((10, 400, 700, 999), (ChunkKind.PFR, ChunkKind.UQ, ChunkKind.PFR), 6, 4)
    import diffcodec.codec as codec

    real = codec.plan_chain
    codec.plan_chain = lambda *a, **k: mixed
    try:
        out = encode(img, tiny_prior, _opts())
    finally:
        codec.plan_chain = real
    assert [c.kind for c in parse(out.data).chunks] == [ChunkKind.PFR, ChunkKind.UQ, ChunkKind.PFR, out.steps[-1].kind]
    np.testing.assert_array_equal(np.asarray(decode(out.data, tiny_prior).image), img)


def test_truncation(pfr_file, tiny_prior):
    res, _ = pfr_file
    parsed = parse(res.data)
    full = list(iter_previews(res.data, tiny_prior))
    end = parsed.header_size
    for i, c in enumerate(parsed.chunks):
        out = decode(res.data[:end + 5], tiny_prior)  # cut inside chunk i
        assert out.truncated and out.step == i
        np.testing.assert_array_equal(np.asarray(out.image.convert("RGB")), full[i].image)
        end += c.size


def test_payload_read_as_the_other_coder_is_a_format_error(pfr_file, tiny_prior, tiny_images):
    res, _ = pfr_file
    parsed = parse(res.data)
    for c in range(len(parsed.chunks) - 1):
        chunks = list(parsed.chunks)
        chunks[c] = Chunk(ChunkKind.UQ, c, 0.0, chunks[c].payload)
        with pytest.raises(FormatError):
            decode(res.data[:parsed.header_size] + b"".join(ch.to_bytes() for ch in chunks), tiny_prior)
    uq = encode(tiny_images[2], tiny_prior, EncodeOptions(steps=2, seed=1, method=LatentMethod.UQ))
    p = parse(uq.data)
    chunks = list(p.chunks)
    chunks[0] = Chunk(ChunkKind.PFR, 0, 0.0, chunks[0].payload)
    with pytest.raises(FormatError):
        decode(uq.data[:p.header_size] + b"".join(ch.to_bytes() for ch in chunks), tiny_prior)
    with pytest.raises(ValueError):
        encode(tiny_images[2], tiny_prior, _opts(pfr_chunk_bits=30))


def test_corrupt_payloads_raise_only_format_errors(pfr_file, tiny_prior):
    """CRC-valid damage of the PFR fields (parameters, side information, lengths, indices):
    decoding either succeeds (a lossless result is then the original) or raises FormatError."""
    res, img = pfr_file
    parsed = parse(res.data)
    rng = np.random.default_rng(8)
    outcomes = {"ok": 0, "error": 0}
    for i in range(90):
        c = int(rng.integers(0, len(parsed.chunks) - 1))
        payload = bytearray(parsed.chunks[c].payload)
        where = i % 6
        if where == 0:  # chunk_bits, margin, offset, std
            payload[int(rng.integers(0, 4))] = int(rng.choice([0, 1, 7, 8, 20, 21, 255, int(rng.integers(256))]))
        elif where == 1:  # kappa codes
            payload[8 + int(rng.integers(0, 3))] = int(rng.choice([0, 255, int(rng.integers(256))]))
        elif where == 2:  # the counts S and W
            at = int(rng.choice([4, 11]))
            struct.pack_into("<I", payload, at, int(rng.choice([0, 3, 4, 2**31, int(rng.integers(64))])))
        else:  # stream and raw bits: flips, or cuts
            if rng.random() < 0.3:
                payload = payload[:len(payload) - int(rng.integers(1, 5))]
            else:
                for pos in rng.integers(15, len(payload), int(rng.integers(1, 4))):
                    payload[pos] ^= int(rng.integers(1, 256))
        outcomes[decode_outcome(with_chunk(res.data, c, ChunkKind.PFR, bytes(payload)), tiny_prior, img)] += 1
    assert outcomes["error"] > 30, outcomes


def test_cli_method_and_info(tmp_path, tiny_model_path):
    Image.fromarray(random_rgb(9, 11, 9)).save(tmp_path / "a.png")
    run = CliRunner().invoke
    r = run(main, ["encode", str(tmp_path / "a.png"), "-o", str(tmp_path / "a.dfc"), "--model", str(tiny_model_path),
                   "--steps", "2", "--method", "pfr", "--chunk-bits", "6", "--seed", "3"])
    assert r.exit_code == 0, r.output
    info = json.loads(run(main, ["info", str(tmp_path / "a.dfc"), "--json"]).output)
    assert info["lossless"] and [s["kind"] for s in info["steps"]][:2] == ["pfr", "pfr"]
    assert run(main, ["info", str(tmp_path / "a.dfc")]).output.count(" pfr ") == 2  # the 2 steps' coder
    r = run(main, ["decode", str(tmp_path / "a.dfc"), "-o", str(tmp_path / "b.png"), "--model", str(tiny_model_path)])
    assert r.exit_code == 0
    decoded, original = (np.asarray(Image.open(tmp_path / f)) for f in ("b.png", "a.png"))
    np.testing.assert_array_equal(decoded, original)
    r = run(main, ["encode", str(tmp_path / "a.png"), "-o", str(tmp_path / "c.dfc"), "--chunk-bits", "40"])
    assert r.exit_code == 2 and "--chunk-bits" in r.output and "40" in r.output  # click's range check
