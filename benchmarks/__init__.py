"""Benchmark scripts: the codec's rate-distortion and likelihood (rd_diffcodec, bound,
sweep_steps, pfr_speed), classical baselines (baselines), plots and RESULTS.md (plots,
make_results), and the helpers they share (common).

Run them as modules from the repository root, e.g. ``python -m benchmarks.rd_diffcodec --help``.
They import the public library and :mod:`benchmarks.common` only, never each other.
"""

from diffcodec.allocator import cap_heap_growth as _cap_heap_growth
from diffcodec.allocator import prefer_huge_pages as _prefer_huge_pages

# The benchmarks time the codec as the `diffcodec` command runs it: torch's large CPU blocks
# advised as huge pages (THP_MEM_ALLOC_ENABLE=0 to time without); before torch is imported;
# large arrays always mmapped (MALLOC_MMAP_THRESHOLD_ to measure otherwise).
_prefer_huge_pages()
_cap_heap_growth()
