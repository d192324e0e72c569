"""Entropy coding adapter: the only module that imports ``constriction``.

Symbols are integers in [lo, hi] coded under constriction's ``QuantizedGaussian`` (a Gaussian
discretized to unit bins centred on the integers, with the edge bins ``lo`` and ``hi`` open to
-inf and +inf, and every symbol in range given non-zero probability) with a range coder (queue
semantics: decoded in the order encoded).  A stream is the range coder's 32-bit words written
little-endian, so its length is always a multiple of 4.

Also here: the portable uniform dither and standard normals that encoder and decoder must
draw identically on every machine (NumPy's PCG64 bit stream is stable across versions and
platforms; we turn its raw 64-bit words into doubles ourselves rather than trust a sampler
method whose algorithm may change).
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
