"""Transparent huge pages for the network's large, short-lived CPU tensors.

A network call allocates and frees tens of activation maps of 50–400 MB each.  Above 32 MB
glibc's malloc hands each one a fresh ``mmap`` and unmaps it on free, so every call faults in
every 4 KiB page of every activation again (the kernel zeroing each), and in a virtual machine a
page fault is dear.  torch can ask for 2 MiB-aligned blocks advised as huge pages
(``THP_MEM_ALLOC_ENABLE=1``, read once, when torch makes its first CPU tensor): 512 times fewer
faults, the same arithmetic and the same peak memory.  Measured on the 2-core AMD EPYC VM that CI
uses (kernel THP mode ``madvise``), shipped model, two threads, in fresh processes
(see README "Speed and memory" for the codec's figures):

==========================  =================  ======================
                            768 x 512 call     1152² tile (12 MP run)
==========================  =================  ======================
glibc default               1.07–1.27 s        4.9–5.0 s, 1724 MiB peak
huge pages                  0.74–1.18 s        3.1 s, 1723 MiB peak
==========================  =================  ======================

(Keeping freed blocks in malloc's heap instead, ``mallopt(M_MMAP_MAX, 0)``, was about as fast
but fragmented: the tile peaked at 2662 MiB and a 12 MP round trip at 5464 MiB against 3463.)

:func:`prefer_huge_pages` sets the variable unless the user has; it must run before torch is
imported, so the ``diffcodec`` command and the benchmarks call it first thing.  A program that
embeds diffcodec may call it (or set the variable) before it imports torch.  It changes no
file: a test encodes the same bytes with and without it.  Where the kernel's THP mode is
``never`` it does nothing.
"""

from __future__ import annotations

import os
import sys

VARIABLE = "THP_MEM_ALLOC_ENABLE"


def prefer_huge_pages() -> bool:
    """Ask torch's CPU allocator for huge-page-advised blocks (``THP_MEM_ALLOC_ENABLE=1``) unless
    the environment already says otherwise; returns whether the setting is in force for this
    process (False once torch has been imported without it, or when the user set it to 0)."""
    if "torch" in sys.modules:
        return os.environ.get(VARIABLE) == "1"
    os.environ.setdefault(VARIABLE, "1")
    return os.environ[VARIABLE] == "1"


__all__ = ["prefer_huge_pages", "VARIABLE"]
