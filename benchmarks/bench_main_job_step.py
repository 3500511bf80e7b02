"""One training step of the main job's model (all-MiniLM-L6-v2 with a mean-pool classifier, query/value
adapted, r = 8, batches of 32 entries of 16 tokens), NEAT against PEFT LoRA against the head alone, in
one process: every round steps each model through the same batches in turn, so machine drift falls on
all of them alike. Prints the median ms per step and the ratio to LoRA; --profile neat,lora adds
torch.profiler's table of where each step's CPU time goes.

    python benchmarks/bench_main_job_step.py [--steps 20] [--rounds 5] [--profile neat,lora]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "examples"))
import finetune  # noqa: E402  (examples/finetune.py: the job's own model, data and methods)
from machine import header  # noqa: E402  (benchmarks/machine.py)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=20, help="batches per round")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--methods", default="neat,lora,head")
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--profile", default="", help="comma-separated methods to profile after timing")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    args = finetune.parse_args([])
    from transformers import AutoTokenizer

    path = finetune.default_model_path()
    tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    train_split, _ = finetune.load_vader_polarity(None, seed=0)
    train = finetune.tokenize(tokenizer, train_split, args.max_length)
    make = finetune.EncoderFromPath(path)
    methods = [m for m in a.methods.split(",") if m]
    models, opts = {}, {}
    for m in methods:
        model = finetune.build_model(m, make, args)
        model.train()
        models[m] = model
        opts[m] = torch.optim.AdamW([q for q in model.parameters() if q.requires_grad], lr=1e-4)
    gen = torch.Generator().manual_seed(0)
    n = train["labels"].shape[0]
    batches = [{k: v[idx] for k, v in train.items()}
               for idx in (torch.randperm(n, generator=gen)[:args.batch_size] for _ in range(a.steps))]

    def run(m):
        model, opt = models[m], opts[m]
        t = time.perf_counter()
        for b in batches:
            loss = model(**b).loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return (time.perf_counter() - t) / len(batches) * 1e3

    for m in methods:  # warm-up
        run(m)
    res = {m: [] for m in methods}
    for _ in range(a.rounds):
        for m in methods:
            res[m].append(run(m))
    print(header())
    print(f"# {a.rounds} rounds of {a.steps} steps, median ms per step")
    base = statistics.median(res["lora"]) if "lora" in res else None
    for m in methods:
        med = statistics.median(res[m])
        print(f"{m:6s} {med:8.2f} ms/step" + (f"   ratio to lora {med / base:.3f}" if base else ""))
    if a.profile:
        from torch.profiler import ProfilerActivity, profile

        for m in a.profile.split(","):
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                run(m)
            print(f"==== {m}")
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=20))


if __name__ == "__main__":
    main()
