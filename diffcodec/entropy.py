"""Entropy coding adapter: the only module that imports ``constriction``.

Symbols are integers in [lo, hi] coded under constriction's ``QuantizedGaussian`` (a Gaussian
discretized to unit bins centred on the integers, with the edge bins ``lo`` and ``hi`` open to
-inf and +inf, and every symbol in range given non-zero probability) with a range coder (queue
semantics: decoded in the order encoded).  A stream is the range coder's 32-bit words written
little-endian, so its length is always a multiple of 4.

Symbols with an explicit probability table per symbol (the interval-restricted beliefs of
:mod:`diffcodec.intervals`) are coded under constriction's ``Categorical`` (``perfect=False``:
every symbol of the table keeps a non-zero probability), chunk by chunk so that a table never
holds more than :data:`TABLE_ELEMENTS` entries.

A decoder checks that a stream is consumed exactly: words left over are an error, as are
symbols a stream runs out of.  Also here: raw bit fields (:func:`pack_bits`, the low bits of
PFR indices).
"""

from __future__ import annotations

import numpy as np

import constriction

from .errors import FormatError

TABLE_ELEMENTS = 2**22  # probabilities per Categorical call (32 MiB of float64)
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
    parameters.  A stream that is not a whole number of words, or that has words left over,
    raises FormatError; other corruption decodes to wrong symbols (the container's CRCs catch
    it before this)."""
    means, stds = _params(means, stds, n)
    if lo >= hi:  # see encode_gaussian: every symbol is lo, and the stream is empty
        if lo > hi or data:
            raise FormatError("entropy-coded stream does not match its symbol range")
        return np.full(n, lo, dtype=np.int32)
    decoder = _decoder(data)
    model = constriction.stream.model.QuantizedGaussian(lo, hi)
    check = constriction.stream.queue.RangeEncoder()
    if n:
        try:
            out = np.asarray(decoder.decode(model, means, stds), dtype=np.int32)
        except (ValueError, RuntimeError, AssertionError) as e:
            raise FormatError(f"entropy-coded stream is corrupt ({e})") from None
        check.encode(out, model, means, stds)
    else:
        out = np.zeros(0, dtype=np.int32)
    _check_exact(check, data)
    return out


def _decoder(data: bytes):
    if len(data) % 4:
        raise FormatError("entropy-coded stream is not a whole number of 32-bit words")
    return constriction.stream.queue.RangeDecoder(np.frombuffer(data, dtype="<u4").astype(np.uint32))


def _check_exact(check, data: bytes) -> None:
    """The stream must be exactly what encoding the decoded symbols gives: no word left over
    (range coder streams are minimal, so a decoder alone cannot tell a last extra word)."""
    if check.get_compressed().astype("<u4").tobytes() != bytes(data):
        raise FormatError("entropy-coded stream has data left over after its last symbol")


def table_chunks(alphabet: np.ndarray) -> list[tuple[int, int, int]]:
    """(start, end, width) of consecutive runs of symbols whose probability tables fit
    :data:`TABLE_ELEMENTS`, width = the largest alphabet in the run (at least 1)."""
    alphabet = np.maximum(np.asarray(alphabet), 1)  # its own integer dtype: no int64 copy of an image
    out, start, n = [], 0, len(alphabet)
    while start < n:
        # grow the run while (run length) x (largest alphabet) stays within the limit
        end = start + max(1, min(n - start, TABLE_ELEMENTS // int(alphabet[start])))
        width = int(alphabet[start:end].max())
        while end - start > 1 and (end - start) * width > TABLE_ELEMENTS:
            end = start + max(1, TABLE_ELEMENTS // width)
            width = int(alphabet[start:end].max())
        out.append((start, end, width))
        start = end
    return out


class TableEncoder:
    """One range coder fed run after run of symbols under explicit tables (:meth:`encode` once
    per pass of a step; format version 5 codes a step's passes in one stream)."""

    def __init__(self) -> None:
        self._encoder = constriction.stream.queue.RangeEncoder()
        self._model = constriction.stream.model.Categorical(perfect=False)

    def encode(self, chunks) -> "TableEncoder":
        """``chunks`` yields (symbols [m], probabilities [m, width]) with 0 <= symbol < width.
        Rows need not be normalised; zeros are allowed."""
        for symbols, probs in chunks:
            symbols = np.ascontiguousarray(symbols, dtype=np.int32)
            if not symbols.size or probs.shape[1] < 2:
                continue  # a one-symbol alphabet carries no information
            if symbols.min() < 0 or symbols.max() >= probs.shape[1]:
                raise ValueError("symbol outside its table")
            self._encoder.encode(symbols, self._model, _rows(probs))
        return self

    def to_bytes(self) -> bytes:
        return self._encoder.get_compressed().astype("<u4").tobytes()


class TableDecoder:
    """Inverse of :class:`TableEncoder`: :meth:`decode` once per :meth:`TableEncoder.encode`, in
    the same order, then :meth:`finish`, which refuses a stream with data left over."""

    def __init__(self, data: bytes) -> None:
        self._data = bytes(data)
        self._decoder = _decoder(self._data)
        self._check = constriction.stream.queue.RangeEncoder()
        self._model = constriction.stream.model.Categorical(perfect=False)

    def decode(self, tables) -> np.ndarray:
        """``tables`` yields the encoder's probability tables (it may be a generator that uses
        the symbols decoded so far, passed back by ``send``)."""
        out = []
        for probs in tables:
            if probs.shape[1] < 2:
                out.append(np.zeros(probs.shape[0], dtype=np.int32))
                continue
            rows = _rows(probs)
            try:
                out.append(np.asarray(self._decoder.decode(self._model, rows), dtype=np.int32))
            except (ValueError, RuntimeError, AssertionError) as e:
                raise FormatError(f"entropy-coded stream is corrupt ({e})") from None
            self._check.encode(out[-1], self._model, rows)
        return np.concatenate(out) if out else np.zeros(0, dtype=np.int32)

    def finish(self) -> None:
        _check_exact(self._check, self._data)


def encode_tables(chunks) -> bytes:
    """Range-code symbols under explicit tables, one stream (:meth:`TableEncoder.encode`)."""
    return TableEncoder().encode(chunks).to_bytes()


def decode_tables(data: bytes, tables) -> np.ndarray:
    """Inverse of :func:`encode_tables` (:meth:`TableDecoder.decode`), the stream consumed exactly."""
    decoder = TableDecoder(data)
    out = decoder.decode(tables)
    decoder.finish()
    return out


def code_passes(passes) -> bytes:
    """One stream for a step's passes (each an iterable of :meth:`TableEncoder.encode` chunks),
    in order (format version 5; versions 2-4 had one stream a pass)."""
    encoder = TableEncoder()
    for chunks in passes:
        encoder.encode(chunks)
    return encoder.to_bytes()


class PassStreams:
    """The decoder's view of a step's passes (channels, or checkerboard passes x channels): one
    stream each (format versions 2-4) or one stream for them all (version 5, ``len(streams) ==
    1``); :meth:`decode` them in order, then :meth:`finish`."""

    def __init__(self, streams: list[bytes], passes: int) -> None:
        if len(streams) not in (1, passes):
            raise FormatError(f"a step needs {passes} streams or one, not {len(streams)}")
        self._merged = TableDecoder(streams[0]) if len(streams) == 1 else None
        self._streams, self._next = streams, 0

    def decode(self, tables) -> np.ndarray:
        if self._merged is not None:
            return self._merged.decode(tables)
        self._next += 1
        return decode_tables(self._streams[self._next - 1], tables)

    def finish(self) -> None:
        if self._merged is not None:
            self._merged.finish()


def _rows(probs: np.ndarray) -> np.ndarray:
    """Probability rows constriction accepts: finite, non-negative, each with some mass (a row
    that underflowed to all zeros becomes uniform)."""
    p = np.nan_to_num(np.asarray(probs, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    p = np.maximum(p, 0.0)
    empty = p.sum(axis=1) <= 0
    if empty.any():
        p[empty] = 1.0
    return np.ascontiguousarray(p)


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
