"""Soak test: memory in use stays flat over tens of thousands of op calls (DESIGN.md 3.1, 6.1).

Each case (soak_cases.py) calls one op (linear, adapter, compute_g) forward-only under no_grad or
forward+backward, at several shapes and thread counts, or an error path (a call that raises), 20,000
times after a warm-up (2,000 for the one large shape, see soak_cases.SHAPES), and measures

  heap  glibc mallinfo2 bytes in use (exact; the assertion that catches small per-call leaks)
  rss   anonymous resident memory after malloc_trim (page-granular; a coarser second check, taken as the
        smallest growth over four windows of the second half, so a one-off allocator step does not fail it)

per call. `pytest -s` prints one table row per case; `python3 tests/python/soak_cases.py` prints the
whole table.

Bounds: HEAP_BOUND bytes per call. A leaked std::string costs at least 32 bytes (its object, 48 with
malloc's header) plus its heap buffer for names over 15 characters, so the bound sits well below
that, and well above the measured noise of a leak-free build (under 1 byte per call: warm-up leaves
the allocator's caches settled). RSS moves by whole pages and with allocator decisions (a large
tensor freed to the top of the heap, a new arena), so its bound is the looser RSS_BOUND.
"""

from __future__ import annotations

import pytest
import soak_cases

HEAP_BOUND = 8.0  # bytes per call
RSS_BOUND = 100.0  # bytes per call

pytestmark = pytest.mark.skipif(not soak_cases.HAVE_MALLINFO2, reason="needs glibc >= 2.33 (mallinfo2)")

CASES = soak_cases.cases()


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_memory_flat(case):
    result = soak_cases.run(case)
    print("\n" + result.row(), end="")
    assert result.heap_per_call <= HEAP_BOUND, (
        f"{case.id}: heap grew {result.heap_per_call:.1f} bytes per call over {result.calls} calls (bound {HEAP_BOUND})"
    )
    assert result.rss_per_call <= RSS_BOUND, (
        f"{case.id}: RSS grew {result.rss_per_call:.1f} bytes per call over {result.calls} calls (bound {RSS_BOUND})"
    )


def test_the_measures_see_leaks():
    """The two measures catch what they are for: a malloc'd leak in the heap, a leak of small Python objects
    (pymalloc's arenas, mapped memory malloc never sees) in the anonymous resident set."""
    kept = []
    r = soak_cases.measure("malloc leak", lambda: kept.append(bytearray(4096)), calls=2000, warmup=100, threads=1)
    assert r.heap_per_call >= 4096, r
    kept.clear()
    r = soak_cases.measure("python leak", lambda: kept.append(b"%300d" % len(kept)), calls=8000, warmup=100, threads=1)
    assert r.heap_per_call < 32, r  # malloc sees only the list's 8-byte slots, not the 300-byte objects ...
    assert r.rss_per_call >= 250 > RSS_BOUND, r  # ... but not to the resident set
