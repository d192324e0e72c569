"""The progressive codec (diffcodec.codec) end to end with tiny random models and an oracle."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
from PIL import Image

import diffcodec.entropy as entropy
from codec_fixtures import oracle_prior, other_model_path, other_prior, random_rgb, tiny_model_path, tiny_prior  # noqa: F401
from diffcodec.codec import EncodeOptions, decode, encode, iter_previews
from diffcodec.container import parse
from diffcodec.errors import FormatError, ImageError, OptionError
from diffcodec.kinds import ChunkKind, LatentMethod
from diffcodec.varint import uvarint

STEPS = 3
T_MIN = 10


def _opts(**kw) -> EncodeOptions:
    kw.setdefault("steps", STEPS)
    kw.setdefault("t_min", T_MIN)
    kw.setdefault("seed", 7)
    kw.setdefault("method", LatentMethod.UQ)  # PFR has its own tests
    kw.setdefault("symmetry", 1)  # the plain network (the default effort's ensemble has its own tests)
    kw.setdefault("symmetry_max_t", 0xFFFF)
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


@pytest.mark.parametrize("symmetry", [2, 8])
def test_symmetrised_network_round_trip(symmetry, tiny_prior, tiny_images):
    """A file whose network calls average over the square's symmetries round-trips; the header
    carries the symmetry, and a decoder that ran the plain network instead would not get the
    image back (the pixels' CRC refuses it or a chunk's stream fails)."""
    img = Image.fromarray(tiny_images[1])  # 48 x 32: transposes swap the sides
    plain = encode(img, tiny_prior, _opts())
    res = encode(img, tiny_prior, _opts(symmetry=symmetry))
    assert res.header.symmetry == symmetry == parse(res.data).header.symmetry and plain.header.symmetry == 1
    assert res.net_calls == plain.net_calls  # one symmetrised call per step
    out = decode(res.data, tiny_prior)
    assert out.lossless
    np.testing.assert_array_equal(np.asarray(out.image), np.asarray(img))
    forged = _with_header(res.data, symmetry=1)
    with pytest.raises(FormatError):
        decode(forged, tiny_prior)
    with pytest.raises(OptionError, match="symmetry"):
        encode(img, tiny_prior, _opts(symmetry=3))


def test_symmetry_at_low_timesteps_only(tiny_prior, tiny_images):
    """symmetry_max_t averages only the network calls at t <= it: the calls counted, the bytes
    between the plain file's and the all-symmetric one's, and a decoder told another threshold
    (or every call) does not get the image back."""
    img = Image.fromarray(tiny_images[1])
    ts = encode(img, tiny_prior, _opts()).header.timesteps  # the chain the options give (STEPS + 1 timesteps)
    cut = ts[1]  # the calls at x_t with t = ts[1] (the last latent step) and ts[0] (the final step)
    res = encode(img, tiny_prior, _opts(symmetry=4, symmetry_max_t=cut))
    full = encode(img, tiny_prior, _opts(symmetry=4))
    h = parse(res.data).header
    assert (h.symmetry, h.symmetry_max_t) == (4, cut) and full.header.symmetry_max_t == 0xFFFF
    assert res.net_calls == full.net_calls == STEPS + 1
    assert res.net_evaluations == (STEPS + 1) + 3 * 2 and full.net_evaluations == 4 * (STEPS + 1)
    assert res.data != full.data
    out = decode(res.data, tiny_prior)
    assert out.lossless
    np.testing.assert_array_equal(np.asarray(out.image), np.asarray(img))
    for changes in (dict(symmetry_max_t=0xFFFF), dict(symmetry_max_t=ts[0])):
        with pytest.raises(FormatError):
            decode(_with_header(res.data, **changes), tiny_prior)
    with pytest.raises(OptionError, match="symmetry_max_t"):
        encode(img, tiny_prior, _opts(symmetry=2, symmetry_max_t=70000))


def test_bound_with_symmetry_at_low_timesteps_only(tiny_prior, tiny_images):
    """The bound under a header's rule: the terms at t <= symmetry_max_t are the symmetric
    network's, the others the plain network's (same noise draws)."""
    from diffcodec.likelihood import bits_per_dim

    img = tiny_images[2]
    plain = bits_per_dim(img, tiny_prior, steps=5)
    full = bits_per_dim(img, tiny_prior, steps=5, symmetry=4)
    ts = plain.timesteps  # 0, 250, 500, 749, 999
    part = bits_per_dim(img, tiny_prior, steps=5, symmetry=4, symmetry_max_t=int(ts[2]))
    low = ts <= ts[2]
    np.testing.assert_array_equal(part.per_step[low], full.per_step[low])
    np.testing.assert_array_equal(part.per_step[~low], plain.per_step[~low])
    assert not np.array_equal(full.per_step, plain.per_step)


def _with_header(data: bytes, **changes) -> bytes:
    parsed = parse(data)
    header = dataclasses.replace(parsed.header, **changes)
    return header.to_bytes() + data[parsed.header_size:]


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


def test_encode_result_accounting(rgb_file, tiny_prior):
    res, img = rgb_file
    parsed = parse(res.data)
    assert [s.kind for s in res.steps][:4] == [ChunkKind.UQ] * 4 and res.steps[-1].kind.is_final
    assert [c.kind for c in parsed.chunks] == [s.kind for s in res.steps]
    assert [s.bytes for s in res.steps] == [c.size for c in parsed.chunks]
    assert [c.ideal_bits for c in parsed.chunks] == pytest.approx([s.ideal_bits for s in res.steps], abs=1 / 16)  # eighths of a bit
    assert parsed.header_size + sum(s.bytes for s in res.steps) == len(res.data)
    ts = parsed.header.timesteps
    assert ts[-1] == 999 and ts[0] == T_MIN and len(ts) == 5 and ts == res.plan.timesteps
    assert [s.timestep for s in res.steps] == [999, ts[3], ts[2], ts[1], ts[0]]
    for s in res.steps:
        assert math.isfinite(s.coded_bits) and s.coded_bits > 0 and s.coded_bits % 32 == 0
        assert math.isfinite(s.ideal_bits) and s.ideal_bits > 0
        assert s.coded_bits < 8 * s.bytes
    assert len(res.preview_rmse) == len(res.steps) + 1 and res.preview_rmse[-1] == 0.0
    assert all(math.isfinite(r) and r >= 0 for r in res.preview_rmse)
    previews = list(iter_previews(res.data, tiny_prior))  # the decoder's previews are the encoder's
    np.testing.assert_allclose([np.sqrt(np.mean((p.image.astype(float) - img) ** 2)) for p in previews],
                               res.preview_rmse, rtol=1e-12)


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
    with pytest.raises(OptionError):
        decode(res.data, tiny_prior, step=-1)


def test_decode_makes_only_the_network_calls_it_needs(rgb_file, tiny_prior):
    """Step k needs the network at the k coded steps before it, and once more for its preview
    unless that preview is the flat grey of x_T (no signal yet)."""
    res, _ = rgb_file
    n = len(res.steps)
    assert decode(res.data, tiny_prior, step=0).net_calls == 0  # x_T alone: the grey preview
    for k in range(1, n):
        assert decode(res.data, tiny_prior, step=k).net_calls == k + 1
    assert decode(res.data, tiny_prior).net_calls == n
    assert res.net_calls == n


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
    assert len(res.preview_rmse) == 3 and res.net_calls == 3  # the last preview's quality is known too
    parsed = parse(res.data)
    assert len(parsed.chunks) == 2 == parsed.header.num_chunks and not parsed.truncated
    assert not res.lossless and [s.kind for s in res.steps] == [ChunkKind.UQ, ChunkKind.UQ]
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
    from diffcodec.coders.chanpred import Layout, split_payload
    from diffcodec.sideinfo import pack_fields

    img = tiny_images[0]
    dims = img.size
    prior = oracle_prior(img)
    res = encode(img, prior, _opts(steps=4))
    latent = [s for s in res.steps if not s.kind.is_final]
    assert len(latent) == 4
    stream_bits = sum(s.coded_bits for s in latent)
    side_bits = sum(8 * s.bytes - s.coded_bits for s in latent)  # chunk framing, ideal bits, scale codes
    assert all(s.coded_bits <= 32 for s in latent), stream_bits  # at most the range coder's one closing word
    # fixed overhead only: kind (1), the payload length (a one-byte varint), the step's ideal
    # bits (a varint of eighths of a bit), the CRC (4) and 3 width codes (one tile), bit-packed
    chunks = parse(res.data).chunks[:4]
    ideal = [len(uvarint(round(8 * c.ideal_bits))) for c in chunks]
    codes = [len(pack_fields([split_payload(c.payload, 3, Layout.PLAIN, "UQ step").widths])) for c in chunks]
    assert all(n == 2 for n in codes)  # 8 bits, then two small differences
    assert side_bits == 8 * sum(1 + 1 + v + 4 + n for v, n in zip(ideal, codes))
    assert res.preview_rmse[1] < 1.0  # the oracle's x_0 estimate is exact after one step
    grey = np.sqrt(np.mean((img.astype(np.float64) - 128.0) ** 2))  # x_T: the flat mid-grey preview
    assert res.prior_rmse == pytest.approx(grey)
    out = decode(res.data, prior)
    assert out.lossless
    np.testing.assert_array_equal(np.asarray(out.image), img)
    # contrast: the random tiny model's latents cost a lot
    random_latent = sum(s.coded_bits for s in encode(img, tiny_prior, _opts(steps=4)).steps if not s.kind.is_final)
    assert random_latent / dims > 1.0
    assert random_latent > 100 * stream_bits


def test_oracle_prior_final_step_is_cheap(tiny_images):
    img = tiny_images[2]
    prior = oracle_prior(img)
    res = encode(img, prior, _opts())
    final = res.steps[-1]
    assert final.kind.is_final and final.coded_bits / img.size < 0.05


# ----------------------------------------------------------------------------- rate vs ideal


def test_coded_rate_close_to_decoder_probabilities(rgb_file, tiny_prior, monkeypatch):
    """Record every table the range decoder used in a real decode and check each stream's
    length against an independent -sum log2 p of the decoded symbols under those tables."""

    res, _ = rgb_file
    calls = []

    class Spy(entropy.TableDecoder):  # one per stream: its tables and symbols, recorded at its end
        def __init__(self, data):
            super().__init__(data)
            self.data, self.tables, self.symbols = bytes(data), [], []

        def decode(self, tables):
            tables = [np.array(t) for t in tables]
            self.tables += tables
            self.symbols.append(super().decode(tables))
            return self.symbols[-1]

        def finish(self):
            super().finish()
            calls.append((self.data, self.tables, np.concatenate(self.symbols)))

    monkeypatch.setattr(entropy, "TableDecoder", Spy)
    assert decode(res.data, tiny_prior).lossless
    assert len(calls) == len(res.steps)  # one stream a step (format version 5), every pass in it
    for i, (data, tables, sym) in enumerate(calls):
        probs = np.concatenate([t / t.sum(axis=1, keepdims=True) for t in tables if t.shape[1] > 1]) \
            if any(t.shape[1] > 1 for t in tables) else np.ones((0, 1))
        used = np.concatenate([sym[o:o + len(t)] for o, t in zip(np.cumsum([0] + [len(t) for t in tables]), tables)
                               if t.shape[1] > 1]) if len(probs) else np.zeros(0, dtype=int)
        ideal = float(-np.log2(np.maximum(probs[np.arange(len(used)), used], 2.0**-24)).sum())
        coded = 8 * len(data)
        if i < len(res.steps) - 1:
            assert coded == res.steps[i].coded_bits
        assert coded <= 1.05 * ideal + 64, (i, coded, ideal)
        assert coded >= 0.95 * ideal - 64, (i, coded, ideal)
    assert 8 * len(calls[-1][0]) == res.steps[-1].coded_bits


def test_restricting_the_final_belief_to_the_intervals_saves_bits(tiny_prior, tiny_images):
    """The final step codes each level under the belief restricted to the levels the UQ steps
    left feasible: never more bits than the unrestricted belief (probabilities only grow)."""
    from diffcodec.chain import CodedChain
    from diffcodec.coders import CODERS, EncodeTarget, StepContext
    from diffcodec.intervals import Intervals

    img = tiny_images[0]
    res = encode(img, tiny_prior, _opts(steps=4, t_min=2))
    header = parse(res.data).header
    chain = CodedChain(tiny_prior, header)
    x, ints = chain.x_T(), Intervals(chain.n)
    levels = img.transpose(2, 0, 1).astype(np.int64)
    target = EncodeTarget(levels, 3)
    for n in range(4):
        out = chain.predict(x, 4 - n)
        step = CODERS[ChunkKind.UQ].encode(StepContext(chain, n, 4 - n, x, out, ints), target)
        assert (step.intervals.lo <= levels.ravel()).all() and (levels.ravel() <= step.intervals.hi).all()
        assert (step.intervals.widths <= ints.widths).all()  # intervals only shrink
        x, ints = step.x, step.intervals
    out = chain.predict(x, 0)
    restricted = CODERS[ChunkKind.FINAL].encode(StepContext(chain, 4, 0, x, out, ints), target)
    free = CODERS[ChunkKind.FINAL].encode(StepContext(chain, 4, 0, x, out, Intervals(chain.n)), target)
    assert ints.mean_log2_width() < 8.0  # the UQ steps did narrow the intervals
    assert restricted.coded_bits < free.coded_bits
    assert restricted.payload == parse(res.data).chunks[-1].payload  # what the encoder wrote


# ----------------------------------------------------------------------------- options and robustness


@pytest.mark.parametrize("tile", [8, 16, 0])
def test_tiled_side_information(tile, tiny_prior, tiny_images):
    import diffcodec.coders.final as final_coder
    import diffcodec.coders.uq as uq_coder
    from diffcodec.coders.chanpred import split_payload
    from diffcodec.sideinfo import pack_fields

    img = tiny_images[2]  # 37 x 23: partial tiles on both edges
    res = encode(img, tiny_prior, _opts(tile=tile))
    parsed = parse(res.data)
    assert parsed.header.tile == tile
    n_tiles = (-(-23 // tile)) * (-(-37 // tile)) if tile else 1
    layouts = {**uq_coder.LAYOUTS, **final_coder.LAYOUTS}
    for c in parsed.chunks:  # the widths (one per tile and channel) lead every payload, packed
        fields = split_payload(c.payload, 3 * n_tiles, layouts[c.kind], "step")
        assert len(fields.widths) == 3 * n_tiles
        side = len(pack_fields([fields.widths, fields.predictors, fields.spatial]))
        with pytest.raises(FormatError):  # a payload cut inside its side information is refused
            split_payload(c.payload[:side - 1], 3 * n_tiles, layouts[c.kind], "step")
    out = decode(res.data, tiny_prior)
    np.testing.assert_array_equal(np.asarray(out.image), img)


def test_t_min(tiny_prior, tiny_images):
    img = tiny_images[1]
    res = encode(img, tiny_prior, _opts(t_min=100))
    assert parse(res.data).header.timesteps[0] == 100 and res.steps[-1].timestep == 100
    np.testing.assert_array_equal(np.asarray(decode(res.data, tiny_prior).image), img)
    with pytest.raises(OptionError):
        encode(img, tiny_prior, _opts(t_min=999))
    with pytest.raises(OptionError):
        encode(img, tiny_prior, _opts(steps=1000))


def test_bilevel_and_grey_previews_are_grey(tiny_prior, tiny_images):
    for mode in ("1", "L"):
        img = Image.fromarray(tiny_images[0]).convert(mode)
        res = encode(img, tiny_prior, _opts())
        prev = decode(res.data, tiny_prior, step=1)
        assert prev.image.mode == "L" and not prev.lossless
        full = decode(res.data, tiny_prior)
        assert full.image.mode == mode


def test_impostor_network_is_refused_not_decoded_wrongly(rgb_file, tiny_prior, other_prior):
    """Every step's probabilities depend on the network's output: a decoder whose network differs
    (here entirely, under the same fingerprint) must end in a FormatError, never a wrong image."""

    res, _ = rgb_file
    impostor = dataclasses.replace(other_prior, fingerprint=tiny_prior.fingerprint)
    with pytest.raises(FormatError, match="checksum|corrupt|left over|outside"):
        decode(res.data, impostor)


def test_shipped_model_round_trip(tiny_images):
    """The default model inside the package loads with no arguments and codes a photo losslessly."""
    from diffcodec.checkpoint import load_prior

    prior = load_prior()
    img = tiny_images[0]
    res = encode(img, prior, EncodeOptions(effort=1, seed=1))
    assert res.lossless and res.steps[-1].kind.is_final
    out = decode(res.data, prior)
    assert out.lossless
    np.testing.assert_array_equal(np.asarray(out.image), img)


def test_header_edited_to_a_large_image_is_refused_before_any_work(tiny_prior, tiny_images):
    """A real 16 x 12 file whose header is edited to claim 2048 x 2048 (CRC recomputed) is
    refused from its chunks' side information (its size follows from the header's tile grid): no
    network call, nothing image-sized."""
    import tracemalloc

    from diffcodec.container import MAGIC

    img = np.ascontiguousarray(tiny_images[0][4:16, 8:24])
    real = encode(img, tiny_prior, _opts()).data
    parsed = parse(real)
    header = dataclasses.replace(parsed.header, width=2048, height=2048)
    data = header.to_bytes() + real[parsed.header_size:]  # the chunks' CRCs do not cover the header
    assert bytes(data[:8]) == MAGIC and parse(bytes(data)).header.width == 2048
    calls = []
    net = tiny_prior.net
    tiny_prior.net = lambda *a: calls.append(1) or net(*a)
    tiny_prior.net.config = net.config
    tracemalloc.start()
    try:
        with pytest.raises(FormatError, match="side information"):
            decode(bytes(data), tiny_prior)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
        tiny_prior.net = net
    assert not calls and peak < 4 << 20


def test_shared_randomness_is_blockwise_identical(monkeypatch):
    """x_T, dithers and sample noise are generated in blocks of counters to bound memory; the
    numbers do not depend on the block size."""
    import diffcodec.chain as chain_module

    key = (12345, 678)
    whole = chain_module.shared_normals(key, 4, 0, 1001), chain_module.shared_uniforms(key, 5, 3, 1001)
    monkeypatch.setattr(chain_module, "GENERATOR_BLOCK", 7)
    blocks = chain_module.shared_normals(key, 4, 0, 1001), chain_module.shared_uniforms(key, 5, 3, 1001)
    for a, b in zip(whole, blocks):
        np.testing.assert_array_equal(a, b)
    u = whole[1]
    assert u.shape == (1001,) and (u > 0).all() and (u < 1).all() and abs(u.mean() - 0.5) < 0.03


@pytest.fixture(scope="module")
def chan_file():
    """A natural image at low noise under the shipped model: the channels' and the neighbours'
    residuals are correlated, and UQ steps take the context layout."""
    from skimage import data

    from diffcodec.checkpoint import load_prior

    prior = load_prior()
    img = np.asarray(Image.fromarray(data.astronaut()).resize((48, 48), Image.Resampling.LANCZOS))
    res = encode(img, prior, _opts(steps=3, t_min=2))
    return res, img, prior


def test_uq_steps_take_the_layout_estimated_shortest(chan_file):
    res, img, prior = chan_file
    from diffcodec.coders.chanpred import side_bits
    from diffcodec.coders.uq import LAYOUTS, UqCoder
    from diffcodec.sideinfo import TileGrid

    parsed = parse(res.data)
    grid = TileGrid(3, parsed.header.height, parsed.header.width, parsed.header.tile)
    kinds = [s.kind for s in res.steps[:-1]]
    assert set(kinds) & {ChunkKind.UQ_CTX, ChunkKind.UQ_TEX, ChunkKind.UQ_NBR}
    for s, chunk in zip(res.steps[:-1], parsed.chunks):
        # the layout estimated shortest; its streams within 1 % + a word each of -log2 p
        bits = {ChunkKind.UQ: s.extra["plain_symbol_bits"], ChunkKind.UQ_PRED: s.extra["predicted_symbol_bits"],
                ChunkKind.UQ_CTX: s.extra["context_symbol_bits"], ChunkKind.UQ_TEX: s.extra["texture_symbol_bits"],
                ChunkKind.UQ_NBR: s.extra["neighbours_symbol_bits"]}
        total = s.extra["layout_bits"]
        assert set(total) == set(bits) and s.kind == min(total, key=total.get)
        # one tile's side information at most (3 predictor codes, 63 spatial and 24 texture codes)
        assert all(0 <= total[k] - bits[k] <= 8 * (3 + 63 + 24) for k in bits)
        assert abs(s.coded_bits - bits[s.kind]) <= 0.01 * bits[s.kind] + 6 * 32
        # what the chosen layout sends besides its symbols is what the encoder counted for it
        fields = UqCoder.split(chunk.payload, grid, s.kind)
        assert total[s.kind] - bits[s.kind] == side_bits(LAYOUTS[s.kind], fields.predictors, fields.spatial, fields.texture)
    # the checkerboard's others are predicted from their anchors: the layout pays on this photo
    # (by 8 %, 12 % and 2.7 % on the three steps with the shipped model `ec52609d…`), and more
    # neighbours, every channel's, pay more
    ctx = [s for s in res.steps[:-1] if s.kind in (ChunkKind.UQ_CTX, ChunkKind.UQ_TEX, ChunkKind.UQ_NBR)]
    assert ctx and all(s.extra["context_symbol_bits"] < 0.98 * s.extra["predicted_symbol_bits"] for s in ctx)
    assert all(s.extra["neighbours_symbol_bits"] < s.extra["context_symbol_bits"] for s in ctx)
    np.testing.assert_array_equal(np.asarray(decode(res.data, prior).image), img)


def test_damaged_context_payloads_are_format_errors(chan_file):
    from codec_fixtures import decode_outcome, with_chunk

    res, img, prior = chan_file
    parsed = parse(res.data)
    c = next(i for i, ch in enumerate(parsed.chunks) if ch.kind in (ChunkKind.UQ_CTX, ChunkKind.UQ_NBR))
    kind = parsed.chunks[c].kind
    payload = parsed.chunks[c].payload
    rng = np.random.default_rng(5)
    outcomes = {"ok": 0, "error": 0}
    cuts = list(range(0, len(payload), max(1, len(payload) // 40)))
    for i in range(len(cuts) + 40):
        if i < len(cuts):
            bad = payload[:cuts[i]]
        else:
            bad = bytearray(payload)
            bad[int(rng.integers(0, len(bad)))] ^= int(rng.integers(1, 256))
            bad = bytes(bad)
        outcomes[decode_outcome(with_chunk(res.data, c, kind, bad), prior, img)] += 1
    assert outcomes["error"] >= len(cuts)  # every cut is refused


@pytest.mark.parametrize("case", ["analytic", "shipped"])
def test_coders_hold_few_image_sized_arrays(case, monkeypatch):
    """Memory per step, in units of one float64 image (8 bytes a dimension), is what bounds a
    12-megapixel round trip: the numpy memory a UQ or final step allocates beyond what the loop
    holds stays under a few units (the coders made per-pixel maps one channel or one slice at a
    time; the previous coders took up to 12 units a UQ step and 11 a final step on this image).
    Probability tables are shrunk so that only image-sized arrays count.  The analytic prior's
    file has a plain final step, the shipped model's (a photo of a cat) a context-layout one."""
    import tracemalloc

    from codec_fixtures import analytic_prior
    from diffcodec.checkpoint import load_prior
    from diffcodec.coders import final, uq
    from skimage import data

    monkeypatch.setattr(entropy, "TABLE_ELEMENTS", 1 << 12)
    if case == "analytic":
        img = np.asarray(Image.fromarray(data.astronaut()).resize((256, 192)))
        prior, opts = analytic_prior(), EncodeOptions(steps=2, t_min=4, seed=1, method=LatentMethod.UQ, tile=64)
    else:
        img = np.asarray(Image.fromarray(data.chelsea()).crop((0, 0, 256, 192)))
        prior, opts = load_prior(), EncodeOptions(effort=2, seed=3)
    unit = img.size * 8
    growth: dict = {}

    def watch(cls, name):
        method = getattr(cls, name)

        def wrapped(*args, **kwargs):
            tracemalloc.reset_peak()
            start = tracemalloc.get_traced_memory()[0]
            out = method(*args, **kwargs)
            key = (cls.__name__, name)
            growth[key] = max(growth.get(key, 0.0), (tracemalloc.get_traced_memory()[1] - start) / unit)
            return out
        monkeypatch.setattr(cls, name, wrapped)

    for cls in (uq.UqCoder, final.FinalCoder):
        for name in ("encode", "decode"):
            watch(cls, name)
    tracemalloc.start()
    try:
        res = encode(img, prior, opts)
        out = decode(res.data, prior)
    finally:
        tracemalloc.stop()
    # every RGB UQ and final step fits the neighbourhood layout (the largest: its context fit and
    # its texture fit) whichever it codes; here the final and the UQ steps code it
    assert out.lossless and [s.kind for s in res.steps][-1] == ChunkKind.FINAL_NBR
    assert ChunkKind.UQ_NBR in {s.kind for s in res.steps}
    # measured here: UQ decode 8.1, final encode 9.2 / decode 2.2 (previous coders 11.7, 11.2, 5.5);
    # the context layout's final decode 4.0 (two passes, a residual map), the texture layout's 4.05
    # (its class map), the neighbourhood layout's 4.4 (a pass's features: 9 quarter-size maps; UQ
    # encode 10.2, decode 8.1, final encode 9.4);
    # the UQ encode (10.3, was 10.2 before the context layout) is not pinned: at this size its
    # fixed temporaries dominate. Since a pass's neighbour sums are made 4,096 pixels at a time
    # (spatial.FEATURE_BLOCK): final decode 3.4, UQ encode 10.0, final encode 9.2
    limits = {("UqCoder", "decode"): 10.0, ("FinalCoder", "encode"): 10.5, ("FinalCoder", "decode"): 3.6}
    for key, limit in limits.items():
        assert growth[key] < limit, (key, growth[key])


def test_progress_reports_steps_in_order(tiny_prior, tiny_images):
    """encode and decode tell a progress callback the steps done, never going back, and end at
    the number of steps (what the CLI's bars show)."""
    seen_enc, seen_dec = [], []
    res = encode(tiny_images[2], tiny_prior, _opts(steps=4), progress=lambda done, total: seen_enc.append((done, total)))
    total = res.header.num_latent_steps + 1
    assert seen_enc[-1] == (total, total)
    assert all(b[0] >= a[0] for a, b in zip(seen_enc, seen_enc[1:])) and {t for _, t in seen_enc} == {total}
    out = decode(res.data, tiny_prior, progress=lambda done, total: seen_dec.append((done, total)))
    assert out.lossless and seen_dec[-1] == (total, total)
    assert all(b[0] >= a[0] for a, b in zip(seen_dec, seen_dec[1:]))
    # a preview decode counts only the steps it decodes
    seen_dec.clear()
    decode(res.data, tiny_prior, step=2, progress=lambda done, total: seen_dec.append((done, total)))
    assert seen_dec[-1] == (3, 3)  # two steps and the preview's network call
