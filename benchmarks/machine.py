"""What a benchmark ran on, for the header of its output: the CPU model (from /proc/cpuinfo) and its
vector extensions, torch and the BLAS it was built with, the thread count, and which GEMM serves
torch_neat's large CPU products (torch.ops.neat.cpu_gemm_plan: the C library's own or torch's).
Timings from different machines are not comparable; ratios taken side by side in one run are."""

from __future__ import annotations

import datetime
import platform
import re

import torch


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            text = f.read()
    except OSError:
        return platform.processor() or platform.machine()
    model = re.search(r"^model name\s*:\s*(.+)$", text, re.M)
    flags = re.search(r"^flags\s*:\s*(.+)$", text, re.M)
    have = set(flags.group(1).split()) if flags else set()
    ext = [e for e, f in (("AVX2", "avx2"), ("AVX-512", "avx512f"), ("AMX", "amx_tile")) if f in have]
    name = model.group(1).strip() if model else platform.machine()
    return name + (f" ({', '.join(ext)})" if ext else "")


def blas() -> str:
    cfg = torch.__config__.show()
    info = re.search(r"BLAS_INFO=([^,\s]+)", cfg)
    parts = [info.group(1) if info else "unknown BLAS"]
    mkl = re.search(r"Intel\(R\) (?:oneAPI )?Math Kernel Library Version ([^\s]+)", cfg)
    if mkl:
        parts.append(f"MKL {mkl.group(1)}")
    dnn = re.search(r"(?:MKL-DNN|oneDNN) v([\d.]+)", cfg)
    if dnn:
        parts.append(f"oneDNN {dnn.group(1)}")
    cap = re.search(r"CPU capability usage: (\S+)", cfg)
    if cap:
        parts.append(f"dispatch {cap.group(1)}")
    return ", ".join(parts)


def neat_gemm_plan() -> str:
    try:
        import torch_neat  # noqa: F401  (registers torch.ops.neat)

        return torch.ops.neat.cpu_gemm_plan()
    except Exception as e:  # an older build without the op
        return f"unknown ({type(e).__name__})"


def header() -> str:
    return (
        f"# {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, CPU: {cpu_model()}, "
        f"{torch.get_num_threads()} threads\n"
        f"# torch {torch.__version__}, BLAS: {blas()}; torch_neat large CPU products: {neat_gemm_plan()}"
    )


if __name__ == "__main__":
    print(header())
