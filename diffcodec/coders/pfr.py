"""Chunked Poisson functional representation (PFR): a latent step that sends a sample of q.

A latent step must send x_s ~ q = N(mu_q, sigma_q^2 I) to a receiver that knows mu_p (the
model's mean).  PFR (Li and El Gamal, 2018) does it with shared randomness at about
KL(q || p') + log2(KL + 1) + O(1) bits, for any prior p' the receiver can sample:

* **Prior.** p' = N(mu_p, sigma_p^2) per dimension with sigma_p = r * sigma_q, r = 2**kappa >= 1
  sent per tile and channel (one byte: kappa = 2 ** ((code - 200) / 10) bits,
  :data:`diffcodec.sideinfo.KAPPA`).
  With delta = (mu_q - mu_p) / sigma_q, KL(q || p') per dim is
  log2 r + ((1 + delta^2) / r^2 - 1) / (2 ln 2) bits, minimised over a tile at
  r^2 = 1 + mean(delta^2), where its mean is exactly kappa = log2 r.  :func:`fit_codes` starts
  there and searches nearby codes against KL + an estimated per-chunk overhead.
* **Chunks.** A group (tile x channel) of n dims with kappa bits/dim is cut into
  m = ceil(n / d) chunks of near-equal size, d = clamp(floor(chunk_bits / kappa), 1, 4096),
  visiting the dims in a seeded portable permutation (Philox keys, stable sort; one per file)
  so that a chunk mixes positions.  A chunk of s dims expects e = s * kappa bits.  The layout depends
  only on the side information, the seed and the step, never on the network's output.
* **Search.** Candidate n of chunk c is x_n = mu_p + sigma_p z_n: the chunk's dimensions in
  eights, each eight from one Philox call (counter (octet, n, c, tag|step)) whose four words
  give eight 16-bit halves, each looked up in a table of the 65536 normal quantiles
  Phi^-1((h + 1/2) / 65536) (:func:`normal_table`: |z| <= 4.325, the discrete stand-in for
  N(0, 1) both sides use); its weight w_n = q(x_n) / p'(x_n) is, in z,
  log w_n = sum_i [ln r - r^2 (z_i - a_i)^2 / 2 + z_i^2 / 2],  a = delta / r,
  i.e. sum_i [r^2 a_i z_i - (r^2 - 1) z_i^2 / 2] + const.  Arrivals T_n = E_0 + ... + E_n,
  E ~ Exp(1) from Philox; the encoder sends n* = argmin_n (ln T_n - ln w_n).  Without a cap
  x_{n*} ~ q exactly.  The search covers n < N = 2 ** L, and the decoder never needs N: the
  encoder sets L = clamp(ceil(KL_c) + margin, 1, chunk_bits + margin + 4) from the chunk's
  realised KL_c = KL(q_c || p'_c) in bits (the format's index range is chunk_bits + margin + 4).
  The cap makes the sample approximate when the chunk's information density ln w(x), x ~ q
  (mean KL_c, variance sum_i delta_i^2 / r_i^4 + (1 - 1 / r_i^2)^2 / 2 in nats^2), exceeds
  ln N, which is likely when KL_c exceeds log2 N - margin.  The encoder counts chunks whose
  KL_c exceeds L (``over_cap``), whose index fell in the top octave (``top_octave``), and the
  expected number where the cap binds under a Gaussian approximation of ln w (``cap_binds``).
* **Index.** b = floor(log2(n* + 1)) is range-coded under a discretized Gaussian on
  [0, chunk_bits + margin + 4]
  with mean e + offset and a std, both fitted per step and sent as one byte each; then the b
  low bits of n* + 1 follow raw (:func:`diffcodec.entropy.pack_bits`).
* **Decoder.** It rebuilds the layout, decodes the indices and regenerates only the chosen
  candidate of each chunk.

Everything random comes from :mod:`diffcodec.philox` (exact integer words on any device); the
search runs on any torch device in candidate blocks of at most ``max_elements`` entries.  A
PFR step leaves the pixels' feasible intervals as they are (its sample is not a cell).

Payload (format versions 5 and 6)::

    u8  chunk_bits                  1 .. 20: target KL per chunk in bits
    u8  margin                      0 .. 7: search margin; every n* < 2**H,
                                    H = chunk_bits + margin + 4
    u8  offset code, u8 std code    index model: b ~ N(e + (offset - 128) / 8, (std / 16)^2) on
                                    [0, H], e = the chunk's expected KL in bits; std code >= 1
    packed S codes                  kappa codes (prior width, one per tile per channel:
                                    S = tiles x 3), bit-packed as one side-information field
                                    (:func:`diffcodec.sideinfo.pack_fields`)
    varint W, then W bytes          range-coded b = floor(log2(n* + 1)), one per chunk in the
                                    layout's order (multiple of 4 bytes)
    rest                            raw bits: the b low bits of n* + 1 of each chunk in turn,
                                    most significant first, zero-padded to a whole byte

Versions 2-4 have a u32 S, then the S kappa codes as bytes, and a u32 W.
"""

from __future__ import annotations

import math
import struct
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from .. import philox
from ..entropy import decode_gaussian, encode_gaussian, pack_bits, unpack_bits
from ..errors import FormatError
from ..varint import read_uvarint, uvarint
from ..kinds import ChunkKind
from ..sideinfo import INDEX_OFFSET, INDEX_STD, KAPPA as KAPPA_CODES, TileGrid as Grid, pack_fields, unpack_fields
from .base import EncodeTarget, StepContext, StepOutput

KAPPA = KAPPA_CODES.value(np.arange(256))  # bits/dim of each code
RATIO = 2.0**KAPPA  # r = sigma_p / sigma_q
MAX_CHUNK_DIMS = 4096
MAX_CHUNK_BITS, MAX_MARGIN, CAP_EXTRA = 20, 7, 4  # at most 2**31 candidates: counters stay 32-bit
TAG_NORMAL, TAG_ARRIVAL, TAG_ORDER = 1, 2, 3
SEARCH_ELEMENTS = 2**19  # candidate x dimension entries per torch block
MIN_BLOCK = 16
_EPS = 1e-9  # keeps float floor/ceil decisions away from ulp-level platform differences


def _dims_per_chunk(kappa: np.ndarray, chunk_bits: int) -> np.ndarray:
    return np.clip(np.floor(chunk_bits / kappa + _EPS), 1, MAX_CHUNK_DIMS).astype(np.int64)


def check_params(chunk_bits: int, margin: int) -> None:
    if not (1 <= chunk_bits <= MAX_CHUNK_BITS and 0 <= margin <= MAX_MARGIN):
        raise ValueError(f"PFR needs chunk_bits in [1, {MAX_CHUNK_BITS}] and margin in [0, {MAX_MARGIN}]")


# ----------------------------------------------------------------------------- layout


@dataclass
class Plan:
    """Chunk layout of one step: dims are visited in ``order`` (flat indices into C x H x W),
    which is chunk-major; position k belongs to chunk ``chunk[k]`` at place ``pos[k]``."""

    order: np.ndarray
    chunk: np.ndarray
    pos: np.ndarray
    starts: np.ndarray  # [C + 1]
    kappa: np.ndarray  # [C] bits/dim (expected KL rate) of each chunk
    ratio: np.ndarray  # [C] sigma_p / sigma_q
    expected_bits: np.ndarray  # [C] e = size * kappa
    widths: np.ndarray | None = None  # per position: sigma_p / sigma_q where it varies inside a chunk

    @property
    def num_chunks(self) -> int:
        return len(self.starts) - 1

    @property
    def position_ratio(self) -> np.ndarray:
        """sigma_p / sigma_q per position of ``order``."""
        return self.ratio[self.chunk] if self.widths is None else self.widths

    @property
    def sizes(self) -> np.ndarray:
        return np.diff(self.starts)


def index_range(chunk_bits: int, margin: int) -> int:
    """The largest b = floor(log2(n* + 1)) a step may code (its search caps' limit)."""
    return chunk_bits + margin + CAP_EXTRA


def _finish(order: np.ndarray, chunk: np.ndarray, kappa: np.ndarray, ratio: np.ndarray) -> Plan:
    """The plan's per-position arrays are int32 (an image's dims are far below 2**31)."""
    sizes = np.bincount(chunk, minlength=len(kappa))
    starts = np.concatenate([[0], np.cumsum(sizes)])
    pos = (np.arange(len(order), dtype=np.int64) - starts[chunk]).astype(np.int32)
    return Plan(order.astype(np.int32), chunk.astype(np.int32), pos, starts, kappa, ratio, sizes * kappa)


def group_order(grid: Grid, key: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(order, group of each position): every dimension, grouped by (channel, tile), in a seeded
    portable permutation within each group (Philox keys, stable sort).  One per file: it does not
    depend on the step, so a chain computes it once."""
    gid = grid.group_ids().ravel()
    keys = philox.sort_keys(key, torch.arange(gid.size), 0, 0, TAG_ORDER << 16, device="cpu").numpy()
    first = np.argsort(keys, kind="stable")
    del keys
    order = first[np.argsort(gid[first], kind="stable")].astype(np.int32)
    return order, gid[order].astype(np.int32)


def make_plan(codes: bytes, grid: Grid, key: tuple[int, int], chunk_bits: int,
              order: tuple[np.ndarray, np.ndarray] | None = None) -> Plan:
    """The layout both sides derive from the side-information codes and the seed (``order``:
    :func:`group_order`, when already computed)."""
    n_groups = grid.size
    order, g = group_order(grid, key) if order is None else order
    dims = len(order)
    n_g = np.bincount(g, minlength=n_groups)
    code = np.frombuffer(codes, dtype=np.uint8).astype(np.int64)
    d_g = _dims_per_chunk(KAPPA[code], chunk_bits)
    m_g = -(-n_g // d_g)
    g_start = np.cumsum(n_g) - n_g
    c_off = np.cumsum(m_g) - m_g
    rank = np.arange(dims) - g_start[g]
    chunk = c_off[g] + rank * m_g[g] // n_g[g]
    owner = np.repeat(np.arange(n_groups), m_g)
    return _finish(order, chunk, KAPPA[code][owner], RATIO[code][owner])


#: Resolution of a dimension's expected KL in :func:`make_rate_plan` (1/EXPECTED_UNITS bits):
#: the layout and the index model are made from these exact integers, so that an ulp of
#: difference in the rates' floats cannot move a chunk boundary.
EXPECTED_UNITS = 64


def make_rate_plan(rsq: np.ndarray, grid: Grid, key: tuple[int, int], chunk_bits: int,
                   order: tuple[np.ndarray, np.ndarray] | None = None) -> Plan:
    """The layout of a prior whose width varies per dimension, r^2 = ``rsq`` (flat, C x H x W
    order).  A dimension's expected KL is e = log2(r^2) / 2 bits (its KL when delta^2 matches
    r^2 - 1), rounded to u = round(e * :data:`EXPECTED_UNITS`) units.  Each group's dimensions,
    in :func:`group_order`'s permutation, go to chunk floor(m / (chunk_bits * EXPECTED_UNITS))
    of their group, m = the running sum of u before a dimension plus half its own u (in
    integers: (2 before + u) // (2 chunk_bits EXPECTED_UNITS)), and a new chunk starts after
    every :data:`MAX_CHUNK_DIMS` dimensions: so every chunk expects about chunk_bits (a
    dimension expecting more is alone) however unevenly the rates are spread; a chunk expects
    the sum of its u."""
    order, g = group_order(grid, key) if order is None else order
    dims = len(order)
    units = np.round(0.5 * np.log2(np.asarray(rsq, dtype=np.float64).reshape(-1)[order]) * EXPECTED_UNITS)
    units = units.astype(np.int64)
    n_g = np.bincount(g, minlength=grid.size)
    g_start = np.cumsum(n_g) - n_g
    rank = np.arange(dims) - g_start[g]
    before = np.cumsum(units) - units  # running sum before each position, over the whole order ...
    before -= before[g_start[g]]  # ... and from its group's first position (the order is group-major)
    local = (2 * before + units) // (2 * chunk_bits * EXPECTED_UNITS) + rank // MAX_CHUNK_DIMS
    # consecutive chunk ids over (group, local), which rises along the order: count its changes
    new = np.concatenate([[True], (g[1:] != g[:-1]) | (local[1:] != local[:-1])]) if dims else np.zeros(0, bool)
    chunk = np.cumsum(new) - 1
    n_chunks = int(chunk[-1]) + 1 if dims else 0
    plan = _finish(order, chunk, np.zeros(n_chunks), np.ones(n_chunks))
    plan.expected_bits = np.bincount(plan.chunk, units, minlength=n_chunks) / EXPECTED_UNITS
    plan.kappa = plan.expected_bits / plan.sizes
    plan.ratio = 2.0**plan.kappa
    plan.widths = np.sqrt(np.asarray(rsq, dtype=np.float64).reshape(-1)[order])
    return plan


def plan_from_sizes(sizes: np.ndarray, kappa: np.ndarray) -> Plan:
    """A layout of consecutive chunks with the given sizes and kappas (for synthetic tests)."""
    sizes, kappa = np.asarray(sizes, dtype=np.int64), np.asarray(kappa, dtype=np.float64)
    chunk = np.repeat(np.arange(len(sizes)), sizes)
    return _finish(np.arange(int(sizes.sum())), chunk, kappa, 2.0**kappa)


# ----------------------------------------------------------------------------- search


def normal_table() -> torch.Tensor:
    """The 65536 candidate normals: z[h] = Phi^-1((h + 1/2) / 65536), rounded to float32 (so
    that a last-ulp difference of scipy's ndtri between machines does not reach the codec)."""
    global _TABLE
    if _TABLE is None:  # a cache of a pure function, computed on first use
        from scipy.special import ndtri

        z = ndtri((np.arange(TABLE_SIZE, dtype=np.float64) + 0.5) / TABLE_SIZE).astype(np.float32)
        _TABLE = torch.from_numpy(z.astype(np.float64))
    return _TABLE


TABLE_SIZE = 1 << 16
_TABLE = None


def candidate_normals(key: tuple[int, int], octet: torch.Tensor, n: torch.Tensor, chunk: torch.Tensor,
                      step: int) -> torch.Tensor:
    """The 8 normals of every (octet, candidate n, chunk): Philox counter (octet, n, chunk,
    TAG_NORMAL << 16 | step), its four words split into 16-bit halves (low half first) and
    looked up in :func:`normal_table`; shape broadcast(octet, n, chunk) + (8,)."""
    words = philox.philox4x32(octet, n, chunk, (TAG_NORMAL << 16) | step, key)
    halves = torch.stack([h for w in words for h in (w & 0xFFFF, w >> 16)], dim=-1)
    return normal_table().to(halves.device)[halves]


@dataclass
class _Octets:
    """The plan's positions taken eight at a time (one Philox call gives eight normals)."""

    chunk: np.ndarray  # [O] chunk of each octet
    index: np.ndarray  # [O] octet index inside its chunk (counter word 0)
    lanes: np.ndarray  # [O, 8] plan position of each lane, -1 where the chunk ended
    starts: np.ndarray  # [C + 1] octets of each chunk


def _octets(plan: Plan) -> _Octets:
    sizes = plan.sizes
    per = -(-sizes // 8)
    starts = np.concatenate([[0], np.cumsum(per)])
    chunk = np.repeat(np.arange(plan.num_chunks), per)
    index = np.arange(len(chunk)) - starts[chunk]
    pos = plan.starts[chunk][:, None] + 8 * index[:, None] + np.arange(8)[None]
    lanes = np.where(pos < plan.starts[chunk + 1][:, None], pos, -1)
    return _Octets(chunk, index, lanes, starts)


def _ranges(starts: np.ndarray, which: np.ndarray) -> np.ndarray:
    """Concatenated index ranges starts[c] .. starts[c + 1] for c in ``which``."""
    lengths = starts[which + 1] - starts[which]
    return np.repeat(starts[which] - np.cumsum(lengths) + lengths, lengths) + np.arange(lengths.sum())


@dataclass
class SearchResult:
    nstar: np.ndarray
    certified: np.ndarray  # bool [C]: the bound proved n* is the uncapped argmin
    candidates: int = 0  # candidate x dimension evaluations
    seconds: float = 0.0
    compiled: bool = False


def _coefficients(plan: Plan, a: np.ndarray, rsq: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per position lin = r^2 a and quad = (r^2 - 1) / 2 of f(z) = sum (lin - quad z) z, and per
    chunk f_max = sum lin^2 / (4 quad), the largest f can be."""
    lin, quad = rsq * a, 0.5 * (rsq - 1.0)
    f_max = np.bincount(plan.chunk, lin**2 / (4.0 * np.maximum(quad, 1e-300)), minlength=plan.num_chunks)
    return lin, quad, f_max


def search(key: tuple[int, int], step: int, plan: Plan, a: np.ndarray, rsq: np.ndarray, cap_bits: np.ndarray,
           device: torch.device | str = "cpu", max_elements: int = SEARCH_ELEMENTS,
           compiled: bool | None = None) -> SearchResult:
    """n* = argmin_{n < 2**L_c} ln T_n - ln w_n for every chunk c (L = ``cap_bits``).  ``a`` and
    ``rsq`` (= r^2) are per position of ``plan.order``; a = (mu_q - mu_p) / sigma_p.

    With f(z) = sum_i [r_i^2 a_i z_i - (r_i^2 - 1) z_i^2 / 2] (ln w up to a per-chunk constant),
    f <= f_max = sum_i r_i^4 a_i^2 / (2 (r_i^2 - 1)), so once ln T_n - f_max >= the best value
    so far no later candidate can win: the chunk stops early and its n* is *certified* exact.
    Chunks still open at their cap are not certified (the cap may have bound).

    On a CPU the compiled kernel (diffcodec/csrc/pfrsearch.c) runs it when it was built
    (``compiled=None``: when available); the torch code below is the reference and the fallback."""
    t0 = time.perf_counter()
    lin, quad, f_max = _coefficients(plan, a, rsq)
    caps = np.left_shift(1, np.asarray(cap_bits, dtype=np.int64))
    kernel = _kernel() if compiled is not False and torch.device(device).type == "cpu" else None
    if compiled and kernel is None:
        raise RuntimeError("the compiled PFR search is not available (diffcodec/csrc was not built)")
    if kernel is not None:
        res = _search_compiled(kernel, key, step, plan, lin, quad, f_max, caps)
    else:
        res = _search_torch(key, step, plan, lin, quad, f_max, caps, torch.device(device), max_elements)
    res.seconds = time.perf_counter() - t0
    return res


def _search_torch(key, step, plan: Plan, lin, quad, f_max, caps, dev, max_elements) -> SearchResult:
    oc = _octets(plan)
    lanes = np.where(oc.lanes >= 0, oc.lanes, 0)
    valid = oc.lanes >= 0
    lin8, quad8 = np.where(valid, lin[lanes], 0.0), np.where(valid, quad[lanes], 0.0)
    n_oct = np.diff(oc.starts)
    res = SearchResult(np.zeros(plan.num_chunks, dtype=np.int64), np.zeros(plan.num_chunks, dtype=bool))
    tag_a = (TAG_ARRIVAL << 16) | step
    per_batch = max(max_elements // (8 * MIN_BLOCK), int(n_oct.max()))
    bounds = np.searchsorted(np.cumsum(n_oct), np.arange(per_batch, n_oct.sum() + per_batch, per_batch), side="right")
    c0 = 0
    for c1 in np.unique(np.clip(bounds, 1, plan.num_chunks)):
        chunks = np.arange(c0, c1)
        ccaps = caps[chunks]
        best = torch.full((len(chunks),), math.inf, dtype=torch.float64, device=dev)
        pick = torch.zeros(len(chunks), dtype=torch.int64, device=dev)
        carry = torch.zeros(len(chunks), dtype=torch.float64, device=dev)
        bound = torch.from_numpy(f_max[chunks]).to(dev)
        open_ = np.ones(len(chunks), dtype=bool)
        n0, active = 0, np.zeros(0, dtype=np.int64)
        while True:
            now = np.flatnonzero(open_ & (ccaps > n0))
            if not len(now):
                break
            if len(now) != len(active):
                active = now
                sel = _ranges(oc.starts, chunks[active])
                t = {k: torch.from_numpy(np.ascontiguousarray(v)).to(dev) for k, v in dict(
                    index=oc.index[sel], chunk=oc.chunk[sel], lin=lin8[sel], quad=quad8[sel],
                    ends=np.cumsum(n_oct[chunks[active]]) - 1, ids=chunks[active], caps=ccaps[active],
                    local=active).items()}
            block = max(max_elements // (8 * len(t["index"])), MIN_BLOCK)
            block = int(min(block, max(n0, MIN_BLOCK), ccaps[active].max() - n0))
            n = torch.arange(n0, n0 + block, dtype=torch.int64, device=dev)[:, None]
            z = candidate_normals(key, t["index"][None], n, t["chunk"][None], step)  # [block, O, 8]
            f = ((t["lin"][None] - t["quad"][None] * z) * z).sum(dim=-1)
            ends = torch.cumsum(f, dim=1)[:, t["ends"]]
            log_w = torch.cat([ends[:, :1], ends[:, 1:] - ends[:, :-1]], dim=1)
            e, _ = philox.exponentials(key, n, t["ids"][None], 0, tag_a)
            arrivals = torch.cumsum(e, dim=0) + carry[t["local"]][None]
            carry[t["local"]] = arrivals[-1]
            value = (torch.log(arrivals) - log_w).masked_fill(n >= t["caps"][None], math.inf)
            low, arg = value.min(dim=0)
            better = low < best[t["local"]]
            best[t["local"]] = torch.where(better, low, best[t["local"]])
            pick[t["local"]] = torch.where(better, arg + n0, pick[t["local"]])
            done = (torch.log(arrivals[-1]) - bound[t["local"]] >= best[t["local"]]).cpu().numpy()
            res.certified[chunks[active[done]]] = True
            open_[active[done]] = False
            res.candidates += block * int(plan.starts[chunks[active] + 1].sum() - plan.starts[chunks[active]].sum())
            n0 += block
        res.nstar[c0:c1] = pick.cpu().numpy()
        c0 = c1
    return res


def _kernel():
    """The compiled search (a ctypes function), or None where the extension was not built."""
    global _KERNEL
    if _KERNEL is None:
        _KERNEL = False
        import ctypes
        import importlib.machinery
        from pathlib import Path

        here = Path(__file__).resolve().parents[1]
        for suffix in importlib.machinery.EXTENSION_SUFFIXES:
            lib = here / f"_pfrsearch{suffix}"
            if lib.exists():
                try:
                    fn = ctypes.CDLL(str(lib)).pfr_search
                except OSError:
                    continue
                fn.restype = None
                _KERNEL = fn
                break
    return _KERNEL or None


_KERNEL = None


def _search_compiled(kernel, key, step, plan: Plan, lin, quad, f_max, caps) -> SearchResult:
    import ctypes

    def ptr(arr, ctype):
        return arr.ctypes.data_as(ctypes.POINTER(ctype))

    starts = np.ascontiguousarray(plan.starts, dtype=np.int64)
    lin, quad = np.ascontiguousarray(lin, dtype=np.float64), np.ascontiguousarray(quad, dtype=np.float64)
    f_max, caps = np.ascontiguousarray(f_max, dtype=np.float64), np.ascontiguousarray(caps, dtype=np.int64)
    table = np.ascontiguousarray(normal_table().numpy())
    nstar = np.zeros(plan.num_chunks, dtype=np.int64)
    certified = np.zeros(plan.num_chunks, dtype=np.uint8)
    evaluated = np.zeros(1, dtype=np.int64)
    kernel(ctypes.c_int64(plan.num_chunks), ptr(starts, ctypes.c_int64), ptr(lin, ctypes.c_double),
           ptr(quad, ctypes.c_double), ptr(caps, ctypes.c_int64), ptr(f_max, ctypes.c_double),
           ctypes.c_uint32(key[0] & 0xFFFFFFFF), ctypes.c_uint32(key[1] & 0xFFFFFFFF),
           ctypes.c_uint32((TAG_NORMAL << 16) | step), ctypes.c_uint32((TAG_ARRIVAL << 16) | step),
           ptr(table, ctypes.c_double), ptr(nstar, ctypes.c_int64), ptr(certified, ctypes.c_uint8),
           ptr(evaluated, ctypes.c_int64), ctypes.c_int32(torch.get_num_threads()))
    return SearchResult(nstar, certified.astype(bool), int(evaluated[0]), compiled=True)


def regenerate(key: tuple[int, int], step: int, plan: Plan, nstar: np.ndarray,
               device: torch.device | str = "cpu") -> torch.Tensor:
    """z_{n*} of every chunk, per position of ``plan.order`` (float64, CPU)."""
    oc = _octets(plan)
    dev = torch.device(device)
    z = candidate_normals(key, torch.from_numpy(oc.index).to(dev), torch.from_numpy(nstar[oc.chunk]).to(dev),
                          torch.from_numpy(oc.chunk).to(dev), step).cpu()  # [O, 8]
    out = torch.empty(len(plan.order), dtype=torch.float64)
    valid = torch.from_numpy(oc.lanes >= 0)
    out[torch.from_numpy(oc.lanes[oc.lanes >= 0])] = z[valid]
    return out


# ----------------------------------------------------------------------------- side information


def _tile_kl_bits(n: np.ndarray, s: np.ndarray, code: np.ndarray) -> np.ndarray:
    """KL(q || p') in bits of groups of n dims with sum(delta^2) = s under the codes' widths."""
    return n * KAPPA[code] + ((n + s) / RATIO[code] ** 2 - n) / (2.0 * math.log(2.0))


def fit_codes(delta2: np.ndarray, grid: Grid) -> bytes:
    """kappa codes per tile and channel from delta^2 = ((mu_q - mu_p) / sigma_q)^2, [C, H, W]:
    the code nearest (in KL(q || p')) to the KL-optimal r^2 = 1 + mean(delta^2), searched -2 .. +2
    around the rounded log2(kappa).  An unbiased kappa keeps each chunk's expected KL e (which
    the index model and the chunk sizes use) honest; chunk_bits alone sets the chunk size."""
    return _fit_tile_codes(grid.tile_counts().ravel(), grid.tile_sums(delta2).ravel())


def _fit_tile_codes(n: np.ndarray, s: np.ndarray) -> bytes:
    """:func:`fit_codes` from each tile's dim count n and sum of delta^2 s."""
    kappa_opt = 0.5 * np.log2(1.0 + s / n)
    start = KAPPA_CODES.code(np.maximum(kappa_opt, 1e-30))
    best_cost, best = None, None
    for shift in range(-2, 3):
        code = np.clip(start + shift, 0, 255).astype(np.int64)
        cost = _tile_kl_bits(n, s, code)
        if best is None:
            best_cost, best = cost, code
        else:
            better = cost < best_cost
            best_cost, best = np.where(better, cost, best_cost), np.where(better, code, best)
    return best.astype(np.uint8).tobytes()


# ----------------------------------------------------------------------------- index coding


def _index_model(plan: Plan, offset_code: int, std_code: int) -> tuple[np.ndarray, float]:
    return plan.expected_bits + float(INDEX_OFFSET.value(offset_code)), float(INDEX_STD.value(std_code))


def _model_cost(b: np.ndarray, means: np.ndarray, std: float, hi: int) -> float:
    bt, m = torch.from_numpy(b.astype(np.float64)), torch.from_numpy(means)
    upper = torch.where(bt >= hi, torch.tensor(math.inf, dtype=torch.float64), bt + 0.5)
    lower = torch.where(bt <= 0, torch.tensor(-math.inf, dtype=torch.float64), bt - 0.5)
    p = torch.special.ndtr((upper - m) / std) - torch.special.ndtr((lower - m) / std)
    return float(-torch.log2(p.clamp_min(2.0**-24)).sum())


def encode_indices(nstar: np.ndarray, plan: Plan, hi: int) -> tuple[int, int, bytes, bytes]:
    """(offset code, std code, range-coded b's in [0, hi], raw low bits) for the chunks' indices."""
    value = nstar.astype(np.int64) + 1
    b = (np.frexp(value.astype(np.float64))[1] - 1).astype(np.int64)  # floor(log2 v), exact below 2**53
    resid = b - plan.expected_bits
    off0 = int(INDEX_OFFSET.code(resid.mean()))
    std0 = float(np.clip(INDEX_STD.code(max(resid.std(), 0.5)), 1, 255))
    best = None
    for off in range(off0 - 8, off0 + 9, 2):
        for f in (0.5, 0.63, 0.79, 1.0, 1.26, 1.59, 2.0):
            codes = (int(np.clip(off, 0, 255)), int(np.clip(round(std0 * f), 1, 255)))
            cost = _model_cost(b, *_index_model(plan, *codes), hi)
            if best is None or cost < best[0]:
                best = (cost, codes)
    offset_code, std_code = best[1]
    means, std = _index_model(plan, offset_code, std_code)
    stream = encode_gaussian(b, means, std, 0, hi)
    return offset_code, std_code, stream, pack_bits(value - np.left_shift(1, b), b)


def decode_indices(stream: bytes, raw: bytes, plan: Plan, offset_code: int, std_code: int, hi: int) -> np.ndarray:
    """Inverse of :func:`encode_indices`; inconsistent data raises FormatError."""
    if std_code < 1:
        raise FormatError("PFR index model has a zero std")
    means, std = _index_model(plan, offset_code, std_code)
    b = decode_gaussian(stream, plan.num_chunks, means, std, 0, hi).astype(np.int64)
    nstar = np.left_shift(1, b) + unpack_bits(raw, b) - 1
    if (nstar >= 1 << hi).any():
        raise FormatError("PFR index beyond the step's index range")
    return nstar


# ----------------------------------------------------------------------------- one step


@dataclass
class PfrStep:
    codes: bytes  # kappa code per tile and channel
    offset_code: int
    std_code: int
    stream: bytes
    raw: bytes
    x: torch.Tensor  # [C, H, W] the sample, as the decoder computes it
    stats: dict = field(default_factory=dict)


def _sample(plan: Plan, z: torch.Tensor, mu_p: torch.Tensor, sigma_q: float) -> torch.Tensor:
    """x = mu_p + sigma_q r z at the plan's positions."""
    flat = mu_p.reshape(-1).to(torch.float64).clone()
    order = torch.from_numpy(plan.order)
    flat[order] = flat[order] + sigma_q * torch.from_numpy(plan.position_ratio) * z
    return flat.reshape(mu_p.shape)


def scaled_candidates(plan: Plan, z: torch.Tensor) -> np.ndarray:
    """r z of the chosen candidates, flat in C x H x W order (every position is in the plan)."""
    out = np.empty(len(plan.order), dtype=np.float64)
    out[plan.order] = plan.position_ratio * z.numpy()
    return out


@dataclass
class CodedChunks:
    """One step's chunks coded: the chosen candidates, the index streams and the step's stats."""

    nstar: np.ndarray
    offset_code: int
    std_code: int
    stream: bytes
    raw: bytes
    stats: dict


def code_chunks(d: np.ndarray, plan: Plan, key: tuple[int, int], step: int, chunk_bits: int, margin: int,
                device: torch.device | str = "cpu") -> CodedChunks:
    """Search and code every chunk of ``plan`` for q = N(d, 1) against p' = N(0, r^2) per
    position (``d``: delta at the plan's positions, r: ``plan.position_ratio``)."""
    hi = index_range(chunk_bits, margin)
    r = plan.position_ratio
    c = 1.0 / (r * r)
    ln2 = math.log(2.0)
    kl = np.bincount(plan.chunk, np.log2(r) + ((1.0 + d * d) * c - 1.0) / (2.0 * ln2), minlength=plan.num_chunks)
    sd = np.sqrt(np.bincount(plan.chunk, d * d * c * c + 0.5 * (1.0 - c) ** 2, minlength=plan.num_chunks)) / ln2
    cap = np.clip(np.ceil(kl) + margin, 1, hi).astype(np.int64)
    found = search(key, step, plan, d / r, r * r, cap, device)
    offset_code, std_code, stream, raw = encode_indices(found.nstar, plan, hi)
    binds = 0.5 * torch.special.erfc(torch.from_numpy((cap - kl) / np.maximum(sd, 1e-12) / math.sqrt(2.0)))
    binds[torch.from_numpy(found.certified)] = 0.0
    stats = {"chunks": plan.num_chunks, "mean_chunk_dims": float(plan.sizes.mean()),
             "kl_prior_bits": float(kl.sum()), "over_cap": int((kl > cap).sum()),
             "uncertified": int((~found.certified).sum()),
             "top_octave": int((found.nstar + 1 >= np.left_shift(1, cap - 1)).sum()),
             "cap_binds": float(binds.sum()), "index_bits": 8 * (len(stream) + len(raw)),
             "candidates": found.candidates, "search_seconds": found.seconds,
             "chunk_bits": chunk_bits, "margin_bits": margin}
    return CodedChunks(found.nstar, offset_code, std_code, stream, raw, stats)


def encode_step(mu_q: torch.Tensor, mu_p: torch.Tensor, sigma_q: float, grid: Grid, key: tuple[int, int],
                step: int, chunk_bits: int, margin: int, device: torch.device | str = "cpu",
                codes: bytes | None = None, order: tuple[np.ndarray, np.ndarray] | None = None) -> PfrStep:
    """Send x ~ N(mu_q, sigma_q^2) ([C, H, W], float64) to a receiver knowing mu_p (``codes``:
    the kappa codes when already fitted, e.g. by :func:`estimate`)."""
    check_params(chunk_bits, margin)
    delta = ((mu_q - mu_p) / sigma_q).to(torch.float64).cpu().numpy()
    if codes is None:
        codes = fit_codes(delta**2, grid)
    plan = make_plan(codes, grid, key, chunk_bits, order)
    coded = code_chunks(delta.ravel()[plan.order], plan, key, step, chunk_bits, margin, device)
    x = _sample(plan, regenerate(key, step, plan, coded.nstar, device), mu_p.cpu(), sigma_q)
    return PfrStep(codes, coded.offset_code, coded.std_code, coded.stream, coded.raw, x, coded.stats)


def decode_step(payload: "PfrPayload", mu_p: torch.Tensor, sigma_q: float, grid: Grid, key: tuple[int, int],
                step: int, device: torch.device | str = "cpu",
                order: tuple[np.ndarray, np.ndarray] | None = None) -> torch.Tensor:
    """The receiver's x ([C, H, W], float64) from one step's PFR data."""
    p = payload
    plan = make_plan(p.kappa_codes, grid, key, p.chunk_bits, order)
    nstar = decode_indices(p.stream, p.raw, plan, p.offset_code, p.std_code, index_range(p.chunk_bits, p.margin))
    return _sample(plan, regenerate(key, step, plan, nstar, device), mu_p.cpu(), sigma_q)


@dataclass
class PfrPayload:
    chunk_bits: int
    margin: int
    offset_code: int
    std_code: int
    kappa_codes: bytes
    stream: bytes
    raw: bytes

    def to_bytes(self) -> bytes:
        """The current layout (versions 5 and 6)."""
        return struct.pack("<BBBB", self.chunk_bits, self.margin, self.offset_code, self.std_code) \
            + pack_fields([self.kappa_codes]) + uvarint(len(self.stream)) + self.stream + self.raw

    @classmethod
    def from_bytes(cls, data: bytes, expected_codes: int, compact: bool = True) -> "PfrPayload":
        if compact:
            return cls._from_compact(data, expected_codes)
        if len(data) < 8:
            raise FormatError("PFR step payload too short")
        cbits, margin, offset, std, n = struct.unpack_from("<BBBBI", data)
        if n != expected_codes or len(data) < 12 + n:
            raise FormatError("PFR step payload has the wrong amount of side information")
        if not (1 <= cbits <= MAX_CHUNK_BITS and margin <= MAX_MARGIN and std >= 1):
            raise FormatError("PFR step payload has implausible coding parameters")
        (w,) = struct.unpack_from("<I", data, 8 + n)
        if w % 4 or len(data) < 12 + n + w:
            raise FormatError("PFR step payload has a bad index stream length")
        return cls(cbits, margin, offset, std, data[8:8 + n], data[12 + n:12 + n + w], data[12 + n + w:])

    @classmethod
    def _from_compact(cls, data: bytes, n: int) -> "PfrPayload":
        if len(data) < 5:
            raise FormatError("PFR step payload too short")
        cbits, margin, offset, std = data[:4]
        if not (1 <= cbits <= MAX_CHUNK_BITS and margin <= MAX_MARGIN and std >= 1):
            raise FormatError("PFR step payload has implausible coding parameters")
        (codes,), used = unpack_fields(data[4:], [n], "PFR side information")
        try:
            w, pos = read_uvarint(data, 4 + used, "PFR index stream length", len(data))
        except FormatError:
            raise FormatError("PFR step payload has a bad index stream length") from None
        if w % 4 or len(data) < pos + w:
            raise FormatError("PFR step payload has a bad index stream length")
        return cls(cbits, margin, offset, std, codes, bytes(data[pos:pos + w]), bytes(data[pos + w:]))


class PfrCoder:
    """PFR latent steps: the plain layout (kind PFR, a width per tile and channel) or the spectral
    one (PFR_SPEC, :mod:`diffcodec.coders.spectral`), whichever has the smaller KL."""

    kind = ChunkKind.PFR
    needs_latent = True  # q's mean is made from x_t

    def encode(self, ctx: StepContext, target: EncodeTarget) -> StepOutput:
        chain = ctx.chain
        mu_q, _, _ = chain.diffusion.q_posterior_mean_variance(target.x0, ctx.x, chain.t(ctx.j))
        sigma_q = math.sqrt(ctx.coefs[2])
        order = chain.memo("pfr_order", lambda: group_order(chain.grid, chain.key))
        mu_p = ctx.pred["mean"][0].double()
        delta = ((mu_q[0] - mu_p) / sigma_q).to(torch.float64).cpu().numpy()
        codes = fit_codes(delta**2, chain.grid)
        kind, step = ChunkKind.PFR, None
        if target.spectral_pfr and chain.prior.linear is not None:
            from . import spectral

            basis, shape = _spectral_setup(ctx)
            u2 = basis.forward(delta) ** 2
            spec_codes = spectral.fit_gains(u2, shape, chain.grid)
            spec_kl = float(spectral.kl_bits(u2, spectral.widths(spec_codes, shape, chain.grid)).sum())
            plain_kl = float(_tile_kl_bits(chain.grid.tile_counts().ravel(), chain.grid.tile_sums(delta**2).ravel(),
                                           np.frombuffer(codes, dtype=np.uint8).astype(np.int64)).sum())
            del u2
            if spec_kl < plain_kl:
                kind = ChunkKind.PFR_SPEC
                step = spectral.encode_step(delta, mu_p, sigma_q, shape, basis, chain.key, ctx.index,
                                            target.pfr_chunk_bits, target.pfr_margin_bits, chain.device, order)
                step.stats["plain_kl_bits"] = plain_kl
        if step is None:
            step = encode_step(mu_q[0], mu_p, sigma_q, chain.grid, chain.key, ctx.index, target.pfr_chunk_bits,
                               target.pfr_margin_bits, chain.device, codes=codes, order=order)
        payload = PfrPayload(target.pfr_chunk_bits, target.pfr_margin_bits, step.offset_code, step.std_code,
                             step.codes, step.stream, step.raw).to_bytes()
        return StepOutput(payload, ctx.intervals, x=step.x[None], coded_bits=step.stats["index_bits"],
                          stats={"kind": kind, **step.stats})

    def check(self, payload: bytes, header, kind: ChunkKind = ChunkKind.PFR) -> None:
        PfrPayload.from_bytes(payload, Grid(3, header.height, header.width, header.tile).size, header.compact)

    def decode(self, ctx: StepContext, payload: bytes, kind: ChunkKind = ChunkKind.PFR) -> StepOutput:
        chain = ctx.chain
        p = PfrPayload.from_bytes(payload, chain.grid.size, chain.header.compact)
        order = chain.memo("pfr_order", lambda: group_order(chain.grid, chain.key))
        mu_p, sigma_q = ctx.pred["mean"][0].double(), math.sqrt(ctx.coefs[2])
        if kind == ChunkKind.PFR_SPEC:
            from . import spectral

            if chain.prior.linear is None:
                raise FormatError("a spectral PFR step needs a model with a linear prior")
            basis, shape = _spectral_setup(ctx)
            x = spectral.decode_step(p, mu_p, sigma_q, shape, basis, chain.key, ctx.index, chain.device, order)
        else:
            x = decode_step(p, mu_p, sigma_q, chain.grid, chain.key, ctx.index, chain.device, order)
        return StepOutput(payload, ctx.intervals, x=x[None])


def _spectral_setup(ctx: StepContext):
    """The chain's spectral basis (made once) and the step's error shape T."""
    from . import spectral

    chain = ctx.chain
    basis = chain.memo("spectral_basis", lambda: spectral.SpectralBasis(chain.prior.linear, chain.grid))
    coef1, _, var = ctx.coefs
    return basis, spectral.step_shape(basis, float(chain.diffusion.alphas_cumprod[ctx.j]), coef1, math.sqrt(var))
