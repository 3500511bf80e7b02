"""Soak cases for the ops: memory in use must stay flat over tens of thousands of calls (docs/design.md §6.1).

Used by test_soak.py; also a script that prints the growth per call of every case as a table:

    python3 tests/python/soak_cases.py            # all cases
    python3 tests/python/soak_cases.py linear     # cases whose id contains "linear"

Two measures, both after a warm-up (thread pool, caches, allocator free lists settled):
  heap  glibc mallinfo2(): uordblks + hblkhd, the bytes malloc has handed out and not got back (all
        arenas, mmapped chunks included). Exact to the byte: a std::string leaked per call shows as
        its size, e.g. 48 bytes for a heap-allocated string object.
  rss   anonymous resident memory (RssAnon in /proc/self/status) after malloc_trim(0), growth per call
        over each quarter of the second half of the calls, the smallest; page-granular
        and moved by allocator decisions, so a coarser check that a steady leak fails and a one-off
        step passes. Anonymous only: a leak (malloc, mmap, Python's object arenas) is anonymous memory,
        while file-backed pages (shared libraries, mapped files) leave and re-enter the resident set as
        the kernel reclaims them (these VMs run DAMON reclaim). A CI run once saw the whole-process RSS
        grow 700 bytes per call in both late quarters of 2,000 calls with the heap exactly flat, which
        three other full runs (before and after it) did not show.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import dataclasses
import gc
import os
import sys
import time
from typing import Callable, List, Optional

import torch

import torch_neat  # noqa: F401  (loads torch.ops.neat)

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")


class _Mallinfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")
    ]


HAVE_MALLINFO2 = hasattr(_libc, "mallinfo2")  # glibc >= 2.33
if HAVE_MALLINFO2:
    _libc.mallinfo2.restype = _Mallinfo2
_PAGE = os.sysconf("SC_PAGE_SIZE")


def heap_in_use() -> int:
    """Bytes allocated through malloc and not freed (every arena plus mmapped chunks)."""
    m = _libc.mallinfo2()
    return int(m.uordblks + m.hblkhd)


def rss_bytes() -> int:
    """Anonymous resident bytes (RssAnon, Linux >= 4.5); the whole resident set where that is missing."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * _PAGE


def _settle() -> None:
    gc.collect()
    if hasattr(_libc, "malloc_trim"):
        _libc.malloc_trim(0)


@dataclasses.dataclass
class Result:
    case: str
    calls: int
    heap_per_call: float
    rss_per_call: float
    us_per_call: float

    def row(self) -> str:
        return f"| {self.case} | {self.calls} | {self.heap_per_call:+.2f} | {self.rss_per_call:+.2f} | {self.us_per_call:.0f} |"


HEADER = "| case | calls | heap B/call | RSS B/call | us/call |\n| --- | --- | --- | --- | --- |"


def measure(name: str, fn: Callable[[], None], calls: int, warmup: int, threads: int) -> Result:
    """Heap growth over all `calls`; RSS growth over each quarter of the second half, the smallest.

    Resident memory settles in steps (the allocator's arenas and mmap threshold, the thread pool's
    stacks, and Python's own object arenas, which malloc's counters do not see): on the large shape
    it grows by about 100 KB over the first thousand calls, and a CI run once saw a single step of
    850 KB in the second half of its 2,000 calls with the heap exactly flat. A leak grows steadily, so
    it shows in every window; a one-off step shows in one. The first half is a longer warm-up for
    this coarser measure.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    half = calls // 2
    bounds = [half + (calls - half) * k // 4 for k in range(5)]  # four windows over the second half
    try:
        for _ in range(warmup):
            fn()
        _settle()
        heap0 = heap_in_use()
        t0 = time.perf_counter()
        for _ in range(half):
            fn()
        rss = []
        for k in range(4):
            _settle()
            rss.append(rss_bytes())
            for _ in range(bounds[k + 1] - bounds[k]):
                fn()
        seconds = time.perf_counter() - t0
        _settle()
        heap2 = heap_in_use()
        rss.append(rss_bytes())
    finally:
        torch.set_num_threads(before)
    rss_per_call = min((rss[k + 1] - rss[k]) / (bounds[k + 1] - bounds[k]) for k in range(4))
    return Result(name, calls, (heap2 - heap0) / calls, rss_per_call, seconds / calls * 1e6)


# ---------------------------------------------------------------------------------------------
# Cases


@dataclasses.dataclass
class Shape:
    name: str
    n: int
    d_in: int
    d_out: int
    r: int
    hidden: int
    threads: int
    calls: int = 20000


# The problem list: tiny; the reported (64, 96) x (80, 96), r=8, 2 threads; the skinny GEMM paths
# (an output dim <= 16 with a reduction > 256, 2 threads), including the wide d_out=8192 one.
SHAPES = [
    Shape("tiny", n=4, d_in=8, d_out=6, r=3, hidden=2, threads=1),
    Shape("x64x96_W80x96_r8", n=64, d_in=96, d_out=80, r=8, hidden=0, threads=2),
    Shape("skinny_x8x300_W64x300_r4", n=8, d_in=300, d_out=64, r=4, hidden=2, threads=2),
    # x (16,100), W (8192,100), A (8,8192): ~1 ms per forward+backward call on 2 cores, so it runs
    # 2000 calls (the heap measure is exact; a 48-byte leak is 96 kB there, far above the noise).
    Shape("x16x100_W8192x100_r8", n=16, d_in=100, d_out=8192, r=8, hidden=0, threads=2, calls=2000),
]


def _inputs(s: Shape, requires_grad: bool, dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    mk = lambda *shape: torch.randn(*shape, generator=g, dtype=dtype)
    x = mk(s.n, s.d_in)
    w = mk(s.d_out, s.d_in) / s.d_in**0.5
    b = mk(s.d_out)
    A = mk(s.r, s.d_out) / s.d_out**0.5
    B = mk(s.d_out, s.r) / s.r**0.5
    H = [mk(s.r, s.r) / s.r**0.5 for _ in range(s.hidden)]
    if requires_grad:
        for t in (x, A, B, *H):
            t.requires_grad_(True)
    return x, w, b, A, B, H


def _qweight(s: Shape):
    g = torch.Generator().manual_seed(1)
    n, bs = s.d_out * s.d_in, 64
    nblocks = -(-n // bs)
    qw = [
        torch.randint(0, 256, (-(-n // 2),), generator=g, dtype=torch.uint8),
        torch.linspace(-1, 1, 16),
        torch.randint(0, 256, (nblocks,), generator=g, dtype=torch.uint8),
        torch.linspace(-1, 1, 256),
        torch.rand(-(-nblocks // 256), generator=g) + 0.5,
    ]
    return qw, [1, s.d_out, s.d_in, bs, 256]


def _op_fn(op: str, s: Shape, backward: bool) -> Callable[[], None]:
    x, w, b, A, B, H = _inputs(s, requires_grad=backward)
    ops = torch.ops.neat
    if op == "linear":
        f = lambda: ops.linear(x, w, b, A, B, H, "gelu", 0.5)
    elif op == "qlinear":  # a nested 4-bit weight made by hand (the arrays are the format)
        qw, qm = _qweight(s)
        f = lambda: ops.qlinear(x, qw, qm, 0.25, b, A, B, H, "gelu", 0.5)
    elif op == "adapter":
        f = lambda: ops.adapter(x, w, A, B, H, "silu", 0.5)
    else:
        f = lambda: ops.compute_g(w, A, H, "tanh")
    if not backward:

        def fwd():
            with torch.no_grad():
                f()

        return fwd
    params = [t for t in (x, A, B, *H) if t.requires_grad]

    def fwd_bwd():
        y = f()
        torch.autograd.grad(y, params, torch.ones_like(y))

    return fwd_bwd


def _raises(call: Callable[[], None]) -> Callable[[], None]:
    def fn():
        try:
            call()
        except (RuntimeError, ValueError):
            return
        raise AssertionError("expected the call to raise")

    return fn


def _error_cases():
    s = SHAPES[0]
    x, w, b, A, B, H = _inputs(s, requires_grad=False)
    ops = torch.ops.neat
    long_name = "not_an_activation_" * 6  # > 15 chars: a heap-allocated std::string
    bad_A = torch.randn(s.r, s.d_out + 1)
    return [
        ("error_unknown_activation", _raises(lambda: ops.linear(x, w, b, A, B, H, "bogus", 1.0))),
        ("error_unknown_activation_long", _raises(lambda: ops.adapter(x, w, A, B, H, long_name, 1.0))),
        ("error_wrong_shape_A", _raises(lambda: ops.linear(x, w, b, bad_A, B, H, "relu", 1.0))),
        ("error_odd_hidden", _raises(lambda: ops.compute_g(w, A, H[:1], "relu"))),
        ("error_dtype_mismatch", _raises(lambda: ops.linear(x.double(), w, b, A, B, H, "relu", 1.0))),
    ]


@dataclasses.dataclass
class Case:
    id: str
    make: Callable[[], Callable[[], None]]
    calls: int
    threads: int


def cases() -> List[Case]:
    out = []
    for s in SHAPES:
        # one quantized op on the two small shapes (its C path is the float one's plus the panel loops)
        quantized = ("qlinear",) if s in SHAPES[:2] else ()
        for op in ("linear", "adapter", "compute_g", *quantized):
            modes = [("fwd_nograd", False)] + ([] if op == "compute_g" else [("fwd_bwd", True)])
            for mode, backward in modes:
                out.append(Case(f"{op}-{mode}-{s.name}", (lambda op=op, s=s, backward=backward: _op_fn(op, s, backward)), s.calls, s.threads))
    for name, _ in _error_cases():
        out.append(Case(name, (lambda name=name: dict(_error_cases())[name]), 20000, 1))
    return out


def run(case: Case) -> Result:
    fn = case.make()
    return measure(case.id, fn, case.calls, warmup=min(1000, max(200, case.calls // 10)), threads=case.threads)


def main(argv: Optional[list] = None) -> int:
    pattern = (argv or sys.argv[1:] or [""])[0]
    print(HEADER)
    for case in cases():
        if pattern in case.id:
            print(run(case).row(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
