"""Memory settings of the codec's processes: transparent huge pages for the network's large,
short-lived CPU tensors (:func:`prefer_huge_pages`), and a fixed mmap threshold so that the coders'
large arrays go back to the system when freed (:func:`cap_heap_growth`).

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

import ctypes
import os
import sys

VARIABLE = "THP_MEM_ALLOC_ENABLE"

#: glibc's own variable for the threshold below; where the user set it, it is left alone.
MMAP_VARIABLE = "MALLOC_MMAP_THRESHOLD_"
#: Bytes: blocks above this are always mmapped, and so go back to the system when freed.
MMAP_THRESHOLD = 8 << 20
_M_MMAP_THRESHOLD = -3  # mallopt's parameter number (malloc.h)


def prefer_huge_pages() -> bool:
    """Ask torch's CPU allocator for huge-page-advised blocks (``THP_MEM_ALLOC_ENABLE=1``) unless
    the environment already says otherwise; returns whether the setting is in force for this
    process (False once torch has been imported without it, or when the user set it to 0)."""
    if "torch" in sys.modules:
        return os.environ.get(VARIABLE) == "1"
    os.environ.setdefault(VARIABLE, "1")
    return os.environ[VARIABLE] == "1"


def cap_heap_growth() -> bool:
    """Serve blocks above :data:`MMAP_THRESHOLD` by mmap for the rest of the process (glibc only;
    returns whether it was set).  By default glibc raises its mmap threshold to the size of each
    mmapped block freed (up to 32 MB), so after the first large free the coders' channel- and
    pass-sized arrays of a large image (3-24 MB at 12 MP) are carved from the heap, where they
    fragment and the process's resident size only grows.  Measured on a 12 MP encode (effort 1,
    one thread, this VM, README "Speed and memory"): peak RSS 3,915-3,928 MiB with the threshold
    fixed at 1 or 8 MiB against 4,084-4,289 MiB without, the same bytes, no slower.  It changes
    no file; a user's ``MALLOC_MMAP_THRESHOLD_`` wins."""
    if MMAP_VARIABLE in os.environ or not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1


__all__ = ["prefer_huge_pages", "cap_heap_growth", "VARIABLE", "MMAP_VARIABLE", "MMAP_THRESHOLD"]
