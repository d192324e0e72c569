"""Entropy coding adapter: the only module that imports ``constriction``.

Symbols are integers in [lo, hi] coded under constriction's ``QuantizedGaussian`` (a Gaussian
discretized to unit bins centred on the integers, with the edge bins ``lo`` and ``hi`` open to
-inf and +inf, and every symbol in range given non-zero probability) with a range coder (queue
semantics: decoded in the order encoded).  A stream is the range coder's 32-bit words written
little-endian, so its length is always a multiple of 4.

Also here: raw bit fields (:func:`pack_bits`, the low bits of PFR indices), and the portable
uniform dither and standard normals that encoder and decoder must draw identically on every
machine (NumPy's PCG64 bit stream is stable across versions and platforms; we turn its raw
64-bit words into doubles ourselves rather than trust a sampler method whose algorithm may
change).
"""

from __future__ import annotations

import numpy as np

import constriction

from .errors import FormatError

MIN_STD = 1e-3  # constriction needs std > 0; below a thousandth of a bin nothing changes
MAX_STD = 1e6


def _params(means: np.ndarray, stds: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    means, stds = (np.asarray(a, dtype=np.float64) for a in (means, stds))
    means = means.ravel() if means.size == n else np.broadcast_to(means, (n,))
    stds = stds.ravel() if stds.size == n else np.broadcast_to(stds, (n,))
    if not (np.isfinite(means).all() and np.isfinite(stds).all()):
        raise ValueError("entropy model parameters must be finite")
    return np.ascontiguousarray(means), np.ascontiguousarray(np.clip(stds, MIN_STD, MAX_STD))


def encode_gaussian(symbols: np.ndarray, means, stds, lo: int, hi: int) -> bytes:
    """Range-code ``symbols`` (flattened, all in [lo, hi]) under QuantizedGaussian(mean, std)."""
    symbols = np.ascontiguousarray(np.asarray(symbols).ravel(), dtype=np.int32)
    if symbols.size and (symbols.min() < lo or symbols.max() > hi):
        raise ValueError("symbol outside the coder's range")
    means, stds = _params(means, stds, symbols.size)
    if lo >= hi:  # a one-symbol alphabet carries no information (and constriction needs hi > lo)
        if lo > hi:
            raise ValueError("empty symbol range")
        return b""
    encoder = constriction.stream.queue.RangeEncoder()
    if symbols.size:
        encoder.encode(symbols, constriction.stream.model.QuantizedGaussian(lo, hi), means, stds)
    return encoder.get_compressed().astype("<u4").tobytes()


def decode_gaussian(data: bytes, n: int, means, stds, lo: int, hi: int) -> np.ndarray:
    """Decode ``n`` symbols from a stream made by :func:`encode_gaussian` with the same
    parameters.  A stream that is not a whole number of words raises FormatError; a corrupt
    stream decodes to wrong symbols (the container's CRCs catch corruption before this)."""
    if len(data) % 4:
        raise FormatError("entropy-coded stream is not a whole number of 32-bit words")
    means, stds = _params(means, stds, n)
    if lo >= hi:  # see encode_gaussian: every symbol is lo, and the stream is empty
        if lo > hi or data:
            raise FormatError("entropy-coded stream does not match its symbol range")
        return np.full(n, lo, dtype=np.int32)
    if n == 0:
        return np.zeros(0, dtype=np.int32)
    words = np.frombuffer(data, dtype="<u4").astype(np.uint32)
    decoder = constriction.stream.queue.RangeDecoder(words)
    try:
        out = decoder.decode(constriction.stream.model.QuantizedGaussian(lo, hi), means, stds)
    except (ValueError, RuntimeError, AssertionError) as e:
        raise FormatError(f"entropy-coded stream is corrupt ({e})") from None
    return np.asarray(out, dtype=np.int32)


def portable_uniform(seed: int, stream: int, n: int) -> np.ndarray:
    """n doubles uniform on [-1/2, 1/2), identical on every machine for (seed, stream)."""
    bits = np.random.PCG64(np.random.SeedSequence([seed & (2**64 - 1), stream])).random_raw(n)
    return (bits >> np.uint64(11)).astype(np.float64) * 2.0**-53 - 0.5


def portable_normal(seed: int, stream: int, n: int) -> np.ndarray:
    """n standard normals (Box-Muller on :func:`portable_uniform`), the same on every machine
    up to the last bit of libm's log/cos."""
    m = (n + 1) // 2
    u = portable_uniform(seed, stream, 2 * m) + 0.5
    u1 = 1.0 - u[:m]  # in (0, 1]
    r = np.sqrt(-2.0 * np.log(u1))
    z = np.concatenate([r * np.cos(2 * np.pi * u[m:]), r * np.sin(2 * np.pi * u[m:])])
    return z[:n]


def pack_bits(values: np.ndarray, widths: np.ndarray) -> bytes:
    """Raw bits: the low ``widths[i]`` bits of ``values[i]`` (0 <= widths <= 52), most significant
    first, concatenated and zero-padded to whole bytes."""
    values = np.asarray(values, dtype=np.int64).ravel()
    widths = np.asarray(widths, dtype=np.int64).ravel()
    if values.shape != widths.shape or (widths.size and (widths.min() < 0 or widths.max() > 52)):
        raise ValueError("pack_bits needs one width in [0, 52] per value")
    total = int(widths.sum())
    if total == 0:
        return b""
    owner = np.repeat(np.arange(values.size), widths)
    k = np.arange(total) - np.repeat(np.cumsum(widths) - widths, widths)  # bit index inside the value
    bits = (values[owner] >> (widths[owner] - 1 - k)) & 1
    return np.packbits(bits.astype(np.uint8)).tobytes()


def unpack_bits(data: bytes, widths: np.ndarray) -> np.ndarray:
    """Inverse of :func:`pack_bits`.  Data of the wrong length or with non-zero padding raises
    FormatError."""
    widths = np.asarray(widths, dtype=np.int64).ravel()
    total = int(widths.sum())
    if len(data) != -(-total // 8):
        raise FormatError("raw bit field has the wrong length")
    bits = np.unpackbits(np.frombuffer(data, dtype=np.uint8)).astype(np.int64)
    if bits[total:].any():
        raise FormatError("raw bit field has non-zero padding")
    owner = np.repeat(np.arange(widths.size), widths)
    k = np.arange(total) - np.repeat(np.cumsum(widths) - widths, widths)
    weights = (bits[:total] << (widths[owner] - 1 - k)).astype(np.float64)  # exact: values < 2**53
    return np.bincount(owner, weights, minlength=widths.size).astype(np.int64)
