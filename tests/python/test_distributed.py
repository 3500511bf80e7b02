"""Distributed training of a NEAT-patched LLaMA on 2 CPU processes (gloo): DDP, FSDP2 and transformers.Trainer.

Each run launches ``examples/distributed.py`` (the README's commands) with ``python -m
torch.distributed.run`` on a free loopback port, and the parent compares what the runs wrote:

- the per-step loss curves of DDP and FSDP2 against a single-process run with the same global batch,
- the adapter on each rank (DDP: bitwise identical replicas; FSDP2: the two shards concatenated are
  bitwise the saved adapter) and against the single-process adapter,
- the adapter saved from the distributed model, loaded into a fresh single-process model with
  ``torch_neat.load_adapter``: its logits against the distributed model's own,
- the Trainer run: exit status 0, 2 processes, finite losses, identical replicas, a loadable adapter.

float64 throughout (the example's own loss is computed in the logits' dtype), so the tolerances are
tight: a wrong gradient reduction or a wrong data split is off by orders of magnitude more.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

import torch_neat

pytestmark = pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()), reason="torch.distributed with gloo is not available"
)

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "distributed.py"
TIMEOUT_S = 240  # per launch: a hang fails the test instead of blocking CI
STEPS = 8
COMMON = [
    "--cpu", "--dtype", "float64", "--optimizer", "sgd", "--lr", "0.1", "--steps", str(STEPS),
    "--global-batch", "8", "--seq-len", "32", "--seed", "0", "--dump",
]

# float64 everywhere. Measured (2 processes vs 1, gloo, CPU, 2026-11-25): losses differ by at most 3e-16
# relative and the final adapters by 5e-16 (only the order of the cross-rank gradient sum differs).
# A rank training on the wrong slice of the batch is off by 3e-2, gradients summed instead of averaged
# by 6e-3 (both checked by hand against these tolerances).
LOSS_RTOL = 1e-10
ADAPTER_RTOL = 1e-10
# The same parameters, input and kernels in one process: measured bitwise equal; the margin allows for
# a BLAS whose blocking depends on the thread count (the workers run 1 thread, the test process more).
LOGITS_RTOL = 1e-12


# ---------------------------------------------------------------------------------------------
# Launching


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict:
    env = os.environ.copy()  # keeps PYTHONPATH, so the workers import the torch_neat under test
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
              "TORCHELASTIC_RUN_ID"):
        env.pop(k, None)
    # PYTHONFAULTHANDLER: a worker killed by a signal (SIGABRT, SIGSEGV) prints every thread's Python stack
    env.update(
        PYTHONFAULTHANDLER="1", OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
    )
    return env


def launch(out: Path, strategy: str, nproc: int) -> dict:
    """Runs the example (torchrun when nproc > 1); returns its train_log.json. Fails with the output tail."""
    args = [str(EXAMPLE), "--strategy", strategy, "--output-dir", str(out), *COMMON]
    for attempt in range(2):
        if nproc == 1:
            cmd = [sys.executable, *args]
        else:
            cmd = [
                sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", str(nproc),
                "--master-addr", "127.0.0.1", "--master-port", str(_free_port()), *args,
            ]
        try:
            proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=TIMEOUT_S, cwd=out.parent)
        except subprocess.TimeoutExpired as e:
            out_text = e.stdout or b""
            tail = (out_text.decode(errors="replace") if isinstance(out_text, bytes) else out_text)[-3000:]
            pytest.fail(f"{strategy}: no result within {TIMEOUT_S} s (hang?)\n{' '.join(cmd)}\n{tail}")
        output = proc.stdout + proc.stderr
        if proc.returncode != 0 and attempt == 0 and "address already in use" in output.lower():
            continue  # the free port was taken between the probe and torchrun's bind: try another
        break
    assert proc.returncode == 0, f"{strategy} exited {proc.returncode}\n{' '.join(cmd)}\n{output[-6000:]}"
    with open(out / "train_log.json") as f:
        return json.load(f)


class Run:
    def __init__(self, out: Path, log: dict):
        from safetensors.torch import load_file

        self.out, self.log = out, log
        self.adapter_dir = out / "adapter"
        self.adapter = load_file(str(self.adapter_dir / torch_neat.model.WEIGHTS_NAME))
        nranks = log["world_size"]
        self.ranks = [load_file(str(out / f"rank{i}.safetensors")) for i in range(nranks)]
        self.meta = [json.loads((out / f"rank{i}.json").read_text()) for i in range(nranks)]
        self.logits = load_file(str(out / "eval_logits.safetensors"))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Launches each run once, on first use."""
    root = tmp_path_factory.mktemp("distributed")
    cache = {}

    def get(strategy: str) -> Run:
        if strategy not in cache:
            nproc = 1 if strategy == "none" else 2
            out = root / strategy
            cache[strategy] = Run(out, launch(out, strategy, nproc))
        return cache[strategy]

    return get


def _example():
    spec = importlib.util.spec_from_file_location("neat_distributed_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def fresh_model():
    """A fresh, unsharded, single-process model built exactly as the runs built theirs (same seeds)."""
    example = _example()
    args = example.parse_args(["--output-dir", "unused", *COMMON])
    return example.build_model(args, torch.device("cpu")).eval()


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


def assert_curve(got: list, ref: list, rtol: float, what: str) -> None:
    assert len(got) == len(ref) == STEPS, f"{what}: {len(got)} losses, reference {len(ref)}, expected {STEPS}"
    errs = [abs(g - r) / abs(r) for g, r in zip(got, ref)]
    if max(errs) > rtol:
        rows = "\n".join(
            f"  step {i + 1}: {g:.15g} vs {r:.15g} (rel {e:.2e}){'  <--' if e > rtol else ''}"
            for i, (g, r, e) in enumerate(zip(got, ref, errs))
        )
        pytest.fail(
            f"{what}: loss curve differs from the single-process run (rtol {rtol:g}, worst {max(errs):.2e}):\n{rows}"
        )


def assert_adapters(got: dict, ref: dict, rtol: float, what: str) -> None:
    assert sorted(got) == sorted(ref), f"{what}: tensor names differ: {sorted(set(got) ^ set(ref))[:5]}"
    errs = {k: rel_err(got[k], ref[k]) for k in ref if ref[k].norm() > 0}
    bad = {k: e for k, e in errs.items() if e > rtol}
    worst = sorted(bad.items(), key=lambda kv: -kv[1])[:5]
    assert not bad, f"{what}: adapter differs from the single-process one (rtol {rtol:g}): {worst}"


# ---------------------------------------------------------------------------------------------
# DDP and FSDP2 against one process with the same global batch


@pytest.mark.parametrize("strategy", ["ddp", "fsdp2"])
def test_loss_curve_matches_single_process(runs, strategy):
    single, run = runs("none"), runs(strategy)
    assert run.log["world_size"] == 2 and run.log["strategy"] == strategy
    assert single.log["world_size"] == 1 and single.log["global_batch"] == run.log["global_batch"] == 8
    assert_curve(run.log["losses"], single.log["losses"], LOSS_RTOL, strategy)
    # the comparison means something: the curve moves far more than the tolerance, and training learned
    ref = single.log["losses"]
    assert max(abs(a - b) / b for a, b in zip(ref[1:], ref)) > 1e4 * LOSS_RTOL
    assert single.log["eval_loss_end"] < single.log["eval_loss_start"]
    assert math.isclose(run.log["eval_loss_end"], single.log["eval_loss_end"], rel_tol=LOSS_RTOL)


@pytest.mark.parametrize("strategy", ["ddp", "fsdp2"])
def test_final_adapter_matches_single_process(runs, strategy):
    single, run = runs("none"), runs(strategy)
    assert_adapters(run.adapter, single.adapter, ADAPTER_RTOL, strategy)
    # trained: B starts at zero
    assert all(single.adapter[k].abs().max() > 0 for k in single.adapter if k.endswith("neat_B"))


def test_ddp_replicas_identical(runs):
    run = runs("ddp")
    r0, r1 = run.ranks
    assert sorted(r0) == sorted(r1) == sorted(run.adapter), "trainable tensors are exactly the adapter's"
    differ = [k for k in r0 if not torch.equal(r0[k], r1[k])]
    assert not differ, f"DDP: the adapter differs between rank 0 and rank 1 in {differ[:5]} ({len(differ)})"
    assert all(torch.equal(r0[k], run.adapter[k]) for k in r0), "the saved adapter is not rank 0's"


def test_fsdp2_sharded_and_saved_adapter_is_the_shards(runs):
    run = runs("fsdp2")
    (r0, r1), (m0, m1) = run.ranks, run.meta
    assert sorted(r0) == sorted(r1) == sorted(run.adapter)
    for name, full in run.adapter.items():
        for meta in (m0, m1):
            info = meta["trainable"][name]
            assert info["dtensor"] and info["shard_dims"] == [0], f"{name} is not sharded: {info}"
            assert info["global_shape"] == list(full.shape)
        # even first dims here, so each rank holds exactly half; together they are the saved tensor, bit for bit
        assert r0[name].shape[0] + r1[name].shape[0] == full.shape[0] and r0[name].shape[0] < full.shape[0]
        assert torch.equal(torch.cat([r0[name], r1[name]]), full), f"FSDP2: saved {name} is not the gathered shards"
    # frozen base weights and the adapter share the FSDP groups: everything is sharded
    assert m0["frozen"] > 0 and m0["frozen_dtensor"] == m0["frozen"]


@pytest.mark.parametrize("strategy", ["ddp", "fsdp2", "trainer"])
def test_saved_adapter_loads_into_fresh_single_process_model(runs, strategy):
    run = runs(strategy)
    model = fresh_model()
    ids = run.logits["eval_ids"]
    with torch.no_grad():
        if "start" in run.logits:
            # the fresh model's adapters are at their init (B = 0): the base the run started from
            err = rel_err(model(input_ids=ids).logits, run.logits["start"])
            assert err <= LOGITS_RTOL, f"{strategy}: the fresh base differs from the run's start ({err:.2e})"
        torch_neat.load_adapter(model, run.adapter_dir)
        out = model(input_ids=ids).logits
    err = rel_err(out, run.logits["end"])
    assert err <= LOGITS_RTOL, (
        f"{strategy}: logits of the fresh model with the saved adapter differ from the trained "
        f"{strategy} model's: rel err {err:.2e} > {LOGITS_RTOL:g}, "
        f"worst abs {(out - run.logits['end']).abs().max():.2e}"
    )


# ---------------------------------------------------------------------------------------------
# transformers.Trainer on 2 processes


def test_trainer_two_processes(runs):
    run = runs("trainer")
    log = run.log
    assert log["world_size"] == 2 and log["trainer_world_size"] == 2, log
    assert "DISTRIBUTED" in log["parallel_mode"], log["parallel_mode"]
    assert log["global_step"] == STEPS
    assert len(log["losses"]) == STEPS and all(math.isfinite(x) for x in log["losses"]), log["losses"]
    r0, r1 = run.ranks
    assert sorted(r0) == sorted(run.adapter)
    differ = [k for k in r0 if not torch.equal(r0[k], r1[k])]
    assert not differ, f"Trainer: the adapter differs between rank 0 and rank 1 in {differ[:5]}"
    assert all(run.adapter[k].abs().max() > 0 for k in run.adapter if k.endswith("neat_B")), "adapter not trained"
