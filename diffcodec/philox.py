"""Philox4x32-10, a counter-based generator, in portable torch int64 arithmetic.

Salmon, Moraes, Dror and Shaw, "Parallel random numbers: as easy as 1, 2, 3" (SC 2011).  A
128-bit counter ``(c0, c1, c2, c3)`` and a 64-bit key ``(k0, k1)`` map to four 32-bit words by
ten rounds of::

    (hi0, lo0) = M0 * c0,  (hi1, lo1) = M1 * c2            (32 x 32 -> 64-bit products)
    (c0, c1, c2, c3) = (hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0)
    (k0, k1) = (k0 + W0, k1 + W1) mod 2**32                (between rounds)

with M0 = 0xD2511F53, M1 = 0xCD9E8D57, W0 = 0x9E3779B9, W1 = 0xBB67AE85.  Words are held in
int64 tensors as values in [0, 2**32); the product is formed from 16-bit halves of the constant
(each partial product < 2**48) so nothing overflows int64, and every operation is exact integer
arithmetic: the words are bit-identical on any device.  Every random number the codec's PFR
coder draws is a pure function of a counter, so a decoder regenerates any one of them without
drawing the others.

Derived variates (per counter, from the four words w0..w3):

* uniforms: u = k * 2**-53 with k = (w0 >> 5) * 2**26 + (w1 >> 6) (53 bits), likewise from
  (w2, w3); k = 0 is mapped to 1 so that u lies in the open interval (0, 1).  The integer to
  double conversion and the scaling are exact, so uniforms are bit-identical on CPU and CUDA;
* normals: Box-Muller, z1 = sqrt(-2 ln u1) cos(2 pi u2), z2 = sqrt(-2 ln u1) sin(2 pi u2),
  identical up to the last ulp of the device's log/cos/sin;
* exponentials: e = -ln u.
"""

from __future__ import annotations

import torch

M0, M1 = 0xD2511F53, 0xCD9E8D57
W0, W1 = 0x9E3779B9, 0xBB67AE85
MASK32 = 0xFFFFFFFF
ROUNDS = 10

Counter = torch.Tensor | int


def _mulhilo(m: int, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(hi, lo) 32-bit halves of the 64-bit product m * b for a constant m < 2**32 and b in
    [0, 2**32): m * b = u * 2**16 + t with t = b * (m & 0xffff), u = b * (m >> 16), both < 2**48,
    so hi = (u + (t >> 16)) >> 16 and lo = (((u & 0xffff) << 16) + t) & 0xffffffff."""
    t = b * (m & 0xFFFF)
    u = b * (m >> 16)
    lo = u & 0xFFFF
    lo.bitwise_left_shift_(16).add_(t).bitwise_and_(MASK32)
    hi = t.bitwise_right_shift_(16).add_(u).bitwise_right_shift_(16)
    return hi, lo


def _xor(a: torch.Tensor, b: torch.Tensor, k: int) -> torch.Tensor:
    """a ^ b ^ k, in place in ``a`` (a fresh tensor) where the shapes allow."""
    if a.shape == torch.broadcast_shapes(a.shape, b.shape):
        return a.bitwise_xor_(b).bitwise_xor_(k)
    return (a ^ b).bitwise_xor_(k)


def _tensor(c: Counter, device: torch.device | None) -> torch.Tensor:
    if isinstance(c, torch.Tensor):
        if c.dtype != torch.int64:
            c = c.to(torch.int64)
        return c if device is None else c.to(device)
    return torch.tensor(int(c) & MASK32, dtype=torch.int64, device=device)


def philox4x32(c0: Counter, c1: Counter, c2: Counter, c3: Counter, key: tuple[int, int],
               rounds: int = ROUNDS, device: torch.device | str | None = None) -> tuple[torch.Tensor, ...]:
    """The four output words (int64 tensors in [0, 2**32)) for counters broadcast together.

    Counters are ints or int64 tensors with values in [0, 2**32); the key is two Python ints."""
    if device is None:
        device = next((c.device for c in (c0, c1, c2, c3) if isinstance(c, torch.Tensor)), None)
    device = None if device is None else torch.device(device)
    x0, x1, x2, x3 = (_tensor(c, device) for c in (c0, c1, c2, c3))
    k0, k1 = key[0] & MASK32, key[1] & MASK32
    for r in range(rounds):
        if r:
            k0, k1 = (k0 + W0) & MASK32, (k1 + W1) & MASK32
        hi0, lo0 = _mulhilo(M0, x0)
        hi1, lo1 = _mulhilo(M1, x2)
        x0, x1, x2, x3 = _xor(hi1, x1, k0), lo1, _xor(hi0, x3, k1), lo0
    shape = torch.broadcast_shapes(*(x.shape for x in (x0, x1, x2, x3)))
    return tuple(x.expand(shape) for x in (x0, x1, x2, x3))


def seed_key(seed: int) -> tuple[int, int]:
    """The Philox key of a 64-bit seed: (low word, high word)."""
    seed &= 2**64 - 1
    return seed & MASK32, seed >> 32


def words_to_uniform(hi: torch.Tensor, lo: torch.Tensor) -> torch.Tensor:
    """A double in (0, 1) from two words: 53 bits (27 of ``hi``, 26 of ``lo``) times 2**-53,
    with 0 mapped to 2**-53."""
    k = ((hi >> 5) << 26) | (lo >> 6)
    return torch.clamp_min(k, 1).to(torch.float64) * 2.0**-53


def uniforms(key: tuple[int, int], c0: Counter, c1: Counter, c2: Counter, c3: Counter,
             device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Two independent uniform doubles in (0, 1) per counter."""
    w0, w1, w2, w3 = philox4x32(c0, c1, c2, c3, key, device=device)
    return words_to_uniform(w0, w1), words_to_uniform(w2, w3)


def normals(key: tuple[int, int], c0: Counter, c1: Counter, c2: Counter, c3: Counter,
            device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Two independent standard normals per counter (Box-Muller on :func:`uniforms`)."""
    u1, u2 = uniforms(key, c0, c1, c2, c3, device=device)
    radius = torch.sqrt(-2.0 * torch.log(u1))
    angle = (2.0 * torch.pi) * u2
    return radius * torch.cos(angle), radius * torch.sin(angle)


def exponentials(key: tuple[int, int], c0: Counter, c1: Counter, c2: Counter, c3: Counter,
                 device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Two independent Exp(1) variates per counter, e = -ln u."""
    u1, u2 = uniforms(key, c0, c1, c2, c3, device=device)
    return -torch.log(u1), -torch.log(u2)


def sort_keys(key: tuple[int, int], c0: Counter, c1: Counter, c2: Counter, c3: Counter,
              device: torch.device | str | None = None) -> torch.Tensor:
    """62-bit non-negative random integers per counter (for seeded portable permutations)."""
    w0, w1, _, _ = philox4x32(c0, c1, c2, c3, key, device=device)
    return (w0 << 30) | (w1 >> 2)
