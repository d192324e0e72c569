"""The entropy-coding adapter (diffcodec.entropy): exact round trips, rate against the ideal
code length, streams consumed exactly, and golden bitstreams."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from scipy.stats import norm

from diffcodec.entropy import MAX_STD, MIN_STD, decode_gaussian, decode_tables, encode_gaussian, encode_tables, \
    table_chunks
from diffcodec.errors import FormatError


def _round_trip(sym, means, stds, lo, hi) -> bytes:
    data = encode_gaussian(sym, means, stds, lo, hi)
    assert isinstance(data, bytes) and len(data) % 4 == 0
    out = decode_gaussian(data, np.size(sym), means, stds, lo, hi)
    assert out.dtype == np.int32
    np.testing.assert_array_equal(out, np.asarray(sym).ravel())
    return data


@pytest.mark.parametrize("seed", range(6))
def test_round_trip_random(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 3000))
    lo = int(rng.integers(-300, 10))
    hi = lo + int(rng.integers(1, 600))
    means = rng.uniform(lo - 50, hi + 50, n)  # means outside the range too
    stds = np.exp(rng.uniform(np.log(1e-6), np.log(1e4), n))  # 1e-6 (clamped) .. 1e4
    sym = np.clip(np.rint(means + stds * rng.standard_normal(n)), lo, hi).astype(np.int64)
    sym[: n // 10] = rng.integers(lo, hi + 1, n // 10)  # some very improbable symbols
    sym[0], sym[-1] = lo, hi
    _round_trip(sym, means, stds, lo, hi)


def test_round_trip_extremes():
    n = 200
    lo, hi = -1000, 1000
    sym = np.where(np.arange(n) % 2, lo, hi)  # only the two open edge bins
    for std in (1e-6, MIN_STD, 0.3, 1e4, MAX_STD, 1e9):
        for mean in (0.0, lo - 1e5, hi + 1e5, 0.49999):
            _round_trip(sym, mean, std, lo, hi)
    # a tiny std far from the symbols: the symbol still has non-zero probability
    _round_trip(np.array([lo, hi, 0]), np.array([hi, lo, 700.0]), 1e-6, lo, hi)


def test_two_symbol_and_wide_range():
    rng = np.random.default_rng(3)
    _round_trip(rng.integers(0, 2, 500), 0.3, 0.5, 0, 1)
    lo, hi = -(2**19), 2**19  # the container's largest span is 2**20
    sym = rng.integers(lo, hi + 1, 300)
    _round_trip(sym, 0.0, 2.0e5, lo, hi)


def test_scalar_and_array_parameters_agree():
    rng = np.random.default_rng(4)
    sym = rng.integers(-10, 11, 100)
    a = encode_gaussian(sym, 1.5, 3.0, -10, 10)
    b = encode_gaussian(sym, np.full(100, 1.5), np.full((10, 10), 3.0), -10, 10)
    assert a == b


def test_empty_input():
    data = encode_gaussian(np.zeros(0, dtype=np.int64), np.zeros(0), np.ones(0), -5, 5)
    assert len(data) % 4 == 0 and len(data) <= 8
    out = decode_gaussian(data, 0, np.zeros(0), np.ones(0), -5, 5)
    assert out.shape == (0,)


def test_one_symbol_alphabet_costs_nothing():
    """lo == hi (every symbol equal, e.g. a latent step that moves nothing) must code to an empty
    stream and decode back, rather than crash the range coder."""
    for n in (1, 3, 1000):
        data = encode_gaussian(np.full(n, 7), np.linspace(-1, 1, n), 0.3, 7, 7)
        assert data == b""
        np.testing.assert_array_equal(decode_gaussian(data, n, 0.0, 1.0, 7, 7), np.full(n, 7))
    with pytest.raises(FormatError):
        decode_gaussian(b"\0\0\0\0", 5, 0.0, 1.0, 7, 7)
    with pytest.raises(FormatError):
        decode_gaussian(b"", 5, 0.0, 1.0, 8, 7)


def test_rejects_bad_arguments():
    with pytest.raises(ValueError):
        encode_gaussian(np.array([0, 11]), 0.0, 1.0, -10, 10)
    with pytest.raises(ValueError):
        encode_gaussian(np.array([-11]), 0.0, 1.0, -10, 10)
    with pytest.raises(ValueError):
        encode_gaussian(np.array([0, 1]), np.array([0.0, np.nan]), 1.0, -10, 10)
    with pytest.raises(ValueError):
        encode_gaussian(np.array([0, 1]), 0.0, np.array([1.0, np.inf]), -10, 10)


@pytest.mark.parametrize("length", [1, 2, 3, 5, 7, 101])
def test_odd_length_stream_is_format_error(length):
    with pytest.raises(FormatError):
        decode_gaussian(b"\x5a" * length, 10, 0.0, 1.0, -10, 10)


def test_garbage_stream_never_crashes():
    """Random words either decode to in-range symbols or raise FormatError."""
    rng = np.random.default_rng(9)
    for _ in range(200):
        data = rng.integers(0, 256, 4 * int(rng.integers(0, 6)), dtype=np.uint8).tobytes()
        try:
            out = decode_gaussian(data, 50, rng.normal(0, 5, 50), 2.0, -20, 20)
        except FormatError:
            continue
        assert out.shape == (50,) and out.min() >= -20 and out.max() <= 20


def _ideal_bits(sym, means, stds, lo, hi) -> float:
    """-sum log2 p of a Gaussian discretized to unit bins with open edge bins (scipy)."""
    upper = np.where(sym == hi, np.inf, sym + 0.5)
    lower = np.where(sym == lo, -np.inf, sym - 0.5)
    # the smaller tail of the two for accuracy: P(lower < X < upper)
    p = np.where(
        sym > means,
        norm.sf(lower, means, stds) - norm.sf(upper, means, stds),
        norm.cdf(upper, means, stds) - norm.cdf(lower, means, stds),
    )
    return float(-np.log2(p).sum())


@pytest.mark.parametrize("std_range", [(0.6, 3.0), (3.0, 40.0)])
def test_rate_close_to_ideal(std_range):
    rng = np.random.default_rng(11)
    n, lo, hi = 20000, -60, 60
    means = rng.uniform(-40, 40, n)
    stds = rng.uniform(*std_range, n)
    sym = np.clip(np.rint(means + stds * rng.standard_normal(n)), lo, hi).astype(np.int64)
    assert (sym == lo).any() or (sym == hi).any() or std_range[1] < 10  # edge bins exercised
    data = _round_trip(sym, means, stds, lo, hi)
    ideal = _ideal_bits(sym, means, stds, lo, hi)
    coded = 8 * len(data)
    assert ideal > 20000  # sanity of the reference itself: > 1 bit per symbol here
    assert coded <= 1.01 * ideal + 4 * 32, (coded, ideal)
    assert coded >= 0.99 * ideal - 4 * 32, (coded, ideal)  # no bits for nothing either


def test_rate_of_improbable_symbols_is_high():
    """A symbol 30 sigma from the mean costs much more than one at the mean: the coder uses the
    model, it is not a fixed-length code."""
    n = 2000
    near = encode_gaussian(np.zeros(n, dtype=np.int64), 0.0, 1.0, -100, 100)
    far = encode_gaussian(np.full(n, 30), 0.0, 1.0, -100, 100)
    assert 8 * len(near) < 1.45 * n  # bin 0 of N(0, 1) has p = 0.383: 1.385 bits
    assert 8 * len(far) > 20 * n  # p is the coder's floor (~2**-24)


# GOLDEN VALUES.  These pin the coded bytes and the shared randomness.  A .dfc written today must
# decode with every future version: if a change makes these fail, the bitstream changed.  Such a
# change must be deliberate, and must come with a container VERSION bump (and old-file support or
# a documented break) -- never just an update of the constants below.

GOLDEN_STREAM_HEX = (
    "ff000000512a4cfb6c74a1b4f8332f6732e5f16c52d9507ec0a73e347720ea95c86a0257f7b440611261656b8f6c"
    "9fde56cdaa42ffe76101ac2325efe1fc036ccb4716e1930d15e43bbfd37dff8bddffe355d0c3c39b5326adbbdfa057"
    "b8fcbc6667f2656c103b357bf3bd5c32f8a5ff"
)
GOLDEN_STREAM_SHA256 = "1f270f1308fa11d6d983e7a2f348cc5d4da27accb7a552f5272838414b38c592"


def _golden_inputs():
    i = np.arange(64)
    sym = ((i * 37) % 41) - 20
    means = np.sin(i * 0.7) * 15
    stds = 0.5 + (i % 7) * 1.3
    return sym, means, stds, -20, 20


def test_golden_bitstream():
    sym, means, stds, lo, hi = _golden_inputs()
    data = encode_gaussian(sym, means, stds, lo, hi)
    assert data.hex() == GOLDEN_STREAM_HEX
    assert hashlib.sha256(data).hexdigest() == GOLDEN_STREAM_SHA256
    # and the golden bytes decode to the golden symbols
    out = decode_gaussian(bytes.fromhex(GOLDEN_STREAM_HEX), 64, means, stds, lo, hi)
    np.testing.assert_array_equal(out, sym)


def test_streams_must_be_consumed_exactly():
    """Any data beyond the symbols' own words is an error: one extra word too (the range
    decoder alone cannot see it; the re-encoding check can)."""
    sym, means, stds, lo, hi = _golden_inputs()
    data = encode_gaussian(sym, means, stds, lo, hi)
    for extra in (b"\0\0\0\0", b"\x01\x02\x03\x04", b"\xff" * 8):
        with pytest.raises(FormatError, match="left over"):
            decode_gaussian(data + extra, 64, means, stds, lo, hi)
    with pytest.raises(FormatError):
        decode_gaussian(data[:-4], 64, means, stds, lo, hi)
    with pytest.raises(FormatError, match="left over"):
        decode_gaussian(b"\0\0\0\0", 0, 0.0, 1.0, 0, 5)  # no symbols, but data


def _table_case(seed: int, n: int = 700, width: int = 9):
    rng = np.random.default_rng(seed)
    alphabet = rng.integers(1, width + 1, n)
    probs = rng.random((n, width)) * (np.arange(width)[None] < alphabet[:, None])
    sym = np.array([rng.integers(0, a) for a in alphabet])
    return sym, probs, alphabet


@pytest.mark.parametrize("seed", range(3))
def test_tables_round_trip_and_rate(seed, monkeypatch):
    import diffcodec.entropy as entropy

    sym, probs, alphabet = _table_case(seed)
    monkeypatch.setattr(entropy, "TABLE_ELEMENTS", 64)  # many chunks of varying width
    chunks = table_chunks(alphabet)
    assert chunks[0][0] == 0 and chunks[-1][1] == len(sym) and all(b == c for (_, b, _), (c, _, _) in
                                                                      zip(chunks, chunks[1:]))
    assert all((e - s) * w <= 64 or e - s == 1 for s, e, w in chunks)
    assert all(w == alphabet[s:e].max() for s, e, w in chunks)
    tables = [probs[s:e, :w] for s, e, w in chunks]
    data = encode_tables((sym[s:e], t) for (s, e, _), t in zip(chunks, tables))
    np.testing.assert_array_equal(decode_tables(data, tables), sym)
    p = probs / probs.sum(axis=1, keepdims=True)
    ideal = -np.log2(p[np.arange(len(sym)), sym])[alphabet > 1].sum()
    assert 8 * len(data) <= 1.01 * ideal + 64 and 8 * len(data) >= 0.99 * ideal - 64
    with pytest.raises(FormatError, match="left over"):
        decode_tables(data + b"\0" * 4, tables)


def test_tables_of_one_symbol_cost_nothing_and_empty_rows_are_uniform():
    assert encode_tables([(np.zeros(50, dtype=int), np.ones((50, 1)))]) == b""
    np.testing.assert_array_equal(decode_tables(b"", [np.ones((50, 1))]), np.zeros(50))
    sym = np.array([0, 3, 1])
    table = np.zeros((3, 4))  # underflowed rows: coded as uniform, still exact
    data = encode_tables([(sym, table)])
    np.testing.assert_array_equal(decode_tables(data, [table]), sym)
    with pytest.raises(ValueError):
        encode_tables([(np.array([4]), np.ones((1, 4)))])


GOLDEN_TABLE_SHA256 = "68a5204ec6721431ffa7b90c1ed9570f526e11a158f8b36868dc3263b43b73e0"


def test_golden_table_bitstream():
    sym, probs, alphabet = _table_case(11, n=200)
    data = encode_tables([(sym, probs)])
    assert hashlib.sha256(data).hexdigest() == GOLDEN_TABLE_SHA256
