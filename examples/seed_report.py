"""Spreads over seeds for the examples: mean and sample standard deviation per method, a paired difference,
a markdown table and a PNG of the training-loss curves (mean with a band over seeds) and test accuracy.

Used by examples/finetune.py and examples/llama_arith.py; matplotlib is needed only for the PNG. Also the
one way both run a method in a process of its own (:func:`run_isolated`).
"""

from __future__ import annotations

import math
import os
import statistics
import sys
from typing import Any, Callable, Iterable, Optional, Sequence


def _child(queue, fn: Callable, threads: int, args: tuple) -> None:
    import torch

    torch.set_num_threads(threads)
    try:
        queue.put(("ok", fn(*args)))
    except BaseException as e:  # the parent reports it
        queue.put(("error", f"{type(e).__name__}: {e}"))
        raise


def run_isolated(what: str, fn: Callable, args: tuple, threads: int, poll_s: float = 5.0) -> Any:
    """``fn(*args)`` in a fresh (spawned) process, so that its peak memory is its own.

    Raises RuntimeError naming ``what`` when the child raises, exits non-zero or dies without an answer
    (a signal: out of memory, a crash): the parent never waits on a child that is gone.
    """
    import multiprocessing as mp
    import queue as queues

    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(queue, fn, threads, args))
    proc.start()
    answer = None
    while answer is None:
        try:
            answer = queue.get(timeout=poll_s)
        except queues.Empty:
            if not proc.is_alive():
                try:  # it may have answered just before it exited
                    answer = queue.get(timeout=1.0)
                except queues.Empty:
                    proc.join()
                    raise RuntimeError(f"{what}: the training process died without an answer "
                                       f"(exit code {proc.exitcode})") from None
    proc.join()
    status, value = answer
    if status != "ok" or proc.exitcode != 0:
        raise RuntimeError(f"{what}: the training process failed: {value if status != 'ok' else proc.exitcode}")
    return value


def parse_seeds(text: str) -> list[int]:
    """ "0,1,2" -> [0, 1, 2]; duplicates are rejected (they would shrink the spread)."""
    try:
        seeds = [int(s) for s in str(text).split(",") if s.strip()]
    except ValueError:
        raise SystemExit(f"--seeds: expected comma-separated integers, got {text!r}") from None
    if not seeds:
        raise SystemExit("--seeds: no seed given")
    if len(set(seeds)) != len(seeds):
        raise SystemExit(f"--seeds: repeated seed in {text!r}")
    return seeds


def rotated(methods: Sequence[str], k: int) -> list[str]:
    """The order to run the methods in for the k-th seed: shifted by k, so that over as many seeds as methods
    each method runs once in every position. Timings drift along a sequence of runs on a shared machine (NEAT
    run first and again last in one sequence of four took 8% longer the first time); a fixed order would hand
    that drift to the same method every time."""
    if not methods:
        return []
    k %= len(methods)
    return list(methods[k:]) + list(methods[:k])


def run_rotated(items: Sequence, k: int, run: Callable) -> list:
    """run(item) for every item, in the k-th seed's order (rotated), the results in the items' order."""
    done = {}
    for i in rotated(range(len(items)), k):
        done[i] = run(items[i])
    return [done[i] for i in range(len(items))]


def mean_std(values: Iterable[float]) -> tuple[float, float, int]:
    """(mean, sample standard deviation, n) of the finite values; std is nan for fewer than two."""
    vals = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not vals:
        return float("nan"), float("nan"), 0
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else float("nan")), len(vals)


def fmt(mean: float, std: float, spec: str = ".1f", unit: str = "") -> str:
    """ "88.2%" for one run, "88.2 ± 0.4%" for several, "n/a" when there is nothing."""
    if math.isnan(mean):
        return "n/a"
    if math.isnan(std):
        return f"{mean:{spec}}{unit}"
    return f"{mean:{spec}} ± {std:{spec.lstrip('+')}}{unit}"


def memory_cell(runs: Sequence[dict]) -> str:
    """The peak-memory table cell of one method's runs: peak, and the part training added when measured."""
    peak = mean_std(r["peak_mb"] for r in runs)
    added = mean_std(r["added_mb"] for r in runs)
    cell = fmt(peak[0], peak[1], ".0f")
    if added[2]:
        cell += f" (+{fmt(added[0], added[1], '.0f')})"
    return cell


def methods_in_order(rows: Sequence[dict]) -> list[str]:
    seen: list[str] = []
    for r in rows:
        if r["method"] not in seen:
            seen.append(r["method"])
    return seen


def by_method(rows: Sequence[dict], key: str) -> dict[str, tuple[float, float, int]]:
    return {m: mean_std(r[key] for r in rows if r["method"] == m and key in r) for m in methods_in_order(rows)}


def paired_difference(rows: Sequence[dict], a: str, b: str, key: str) -> tuple[float, float, int]:
    """Mean and std over seeds of (a's key - b's key), pairing the two methods' runs of each seed."""
    va = {r["seed"]: r[key] for r in rows if r["method"] == a}
    vb = {r["seed"]: r[key] for r in rows if r["method"] == b}
    return mean_std(va[s] - vb[s] for s in va if s in vb)


def smooth(values: Sequence[float], window: int) -> list[float]:
    """Trailing moving average (the first points average what there is so far)."""
    out, acc = [], 0.0
    for i, v in enumerate(values):
        acc += v
        if i >= window:
            acc -= values[i - window]
        out.append(acc / min(i + 1, window))
    return out


def plot_runs(rows: Sequence[dict], path: str, names: dict, title: str, accuracy_label: str = "test accuracy (%)",
              baseline: Optional[tuple[str, float, float]] = None, window: int = 20,
              log_loss: bool = False) -> Optional[str]:
    """Writes a PNG: left, training loss per step (moving average over `window` steps; the line is the mean over
    seeds, the band one standard deviation either side; with `log_loss` the axis is logarithmic and the band runs
    from the lowest to the highest seed); right, test accuracy per method (bar: mean, whisker: std, dots: the
    seeds). `baseline` = (label, mean %, std %) draws a dashed line (e.g. before training).
    Returns the path, or None when matplotlib is missing (a note is printed)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("note: matplotlib is not installed (pip install matplotlib); no plot written")
        return None
    import numpy as np

    methods = methods_in_order(rows)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 3.8), gridspec_kw={"width_ratios": [1.6, 1]})
    for i, m in enumerate(methods):
        runs = [smooth(r["losses"], window) for r in rows if r["method"] == m and r.get("losses")]
        if not runs:
            continue
        steps = min(len(c) for c in runs)
        curves = np.array([c[:steps] for c in runs])
        mean = curves.mean(0)
        x = np.arange(1, steps + 1)
        color = colors[i % len(colors)]
        ax_loss.plot(x, mean, color=color, lw=1.4, label=f"{names.get(m, m)} (n={len(runs)})")
        if len(runs) > 1:  # on a log axis mean - std may be negative: the band spans the seeds' curves there
            std = curves.std(0, ddof=1)
            lo, hi = (curves.min(0), curves.max(0)) if log_loss else (mean - std, mean + std)
            ax_loss.fill_between(x, lo, hi, color=color, alpha=0.2, lw=0)
    if log_loss:
        ax_loss.set_yscale("log")
    ax_loss.set_xlabel("step")
    ax_loss.set_ylabel(f"training loss ({window}-step average)")
    ax_loss.grid(alpha=0.3)
    ax_loss.legend(fontsize=8)

    labels = []
    for i, m in enumerate(methods):
        accs = [100 * r["accuracy"] for r in rows if r["method"] == m]
        mean, std, _ = mean_std(accs)
        color = colors[i % len(colors)]
        ax_acc.bar(i, mean, color=color, alpha=0.75, yerr=None if math.isnan(std) else std, capsize=4)
        ax_acc.scatter([i] * len(accs), accs, color="black", s=10, zorder=3)
        top = max([mean + (0.0 if math.isnan(std) else std)] + accs)
        ax_acc.annotate(fmt(mean, std), (i, top), textcoords="offset points", xytext=(0, 3), ha="center",
                        fontsize=7)
        labels.append(names.get(m, m))
    if baseline is not None:
        label, mean, std = baseline
        ax_acc.axhline(mean, color="gray", ls="--", lw=1, label=f"{label}: {fmt(mean, std)}")
        ax_acc.legend(fontsize=7, loc="lower right")
    ax_acc.set_xticks(range(len(methods)), labels, rotation=20, ha="right", fontsize=8)
    ax_acc.set_ylabel(accuracy_label)
    all_acc = [100 * r["accuracy"] for r in rows]
    lo = min(all_acc + ([baseline[1]] if baseline else []))
    ax_acc.set_ylim(max(0.0, lo - 10), min(100.0, max(all_acc) + 6))
    ax_acc.grid(axis="y", alpha=0.3)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def run_summary(runs: list) -> tuple:
    """One method's runs as the tables show them: accuracy in % and train seconds (each as mean_std), and
    the memory cell."""
    return (mean_std(100 * r["accuracy"] for r in runs), mean_std(r["train_s"] for r in runs), memory_cell(runs))


def rss_mb() -> float:
    """Resident memory of this process now, MiB (nan where /proc is missing)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return float("nan")


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, MiB."""
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def end_of_training(device, start: float, rss_before: float) -> tuple[float, float, float]:
    """(train seconds since ``start``, peak memory MiB, MiB added since ``rss_before``) once the last step
    has run: on CUDA after a synchronize, from the allocator's peak (added: nan); on CPU from the peak RSS."""
    import time

    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()
    train_s = time.perf_counter() - start
    if device.type == "cuda":
        return train_s, torch.cuda.max_memory_allocated(device) / 2**20, float("nan")
    peak = peak_rss_mb()
    return train_s, peak, peak - rss_before


def runs_by_method(rows: Sequence[dict]) -> list:
    """``(method, its runs)`` for each method, in the order the methods first appear."""
    return [(m, [r for r in rows if r["method"] == m]) for m in methods_in_order(rows)]


def spread_head(rows: Sequence[dict]) -> str:
    """"mean ± sample standard deviation over N seeds (...)", or "" when the rows hold fewer than two seeds."""
    seeds = sorted({r["seed"] for r in rows})
    if len(seeds) < 2:
        return ""
    return f"mean ± sample standard deviation over {len(seeds)} seeds ({', '.join(map(str, seeds))})"


def train_step(loss, opt, sched, losses: list) -> None:
    """Backward through ``loss``, one optimizer and scheduler step, and the loss appended to ``losses``."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    sched.step()
    losses.append(loss.item())
