#!/usr/bin/env python
"""Train a LLaMA model with NEAT adapters on several processes: DDP, FSDP2 or transformers.Trainer.

    torchrun --nproc_per_node 2 examples/distributed.py --strategy ddp     --output-dir runs/ddp
    torchrun --nproc_per_node 2 examples/distributed.py --strategy fsdp2   --output-dir runs/fsdp2
    torchrun --nproc_per_node 2 examples/distributed.py --strategy trainer --output-dir runs/trainer
    python examples/distributed.py --output-dir runs/single      # one process, the same global batch

The same commands run on CPU (gloo) and on GPUs (NCCL, one GPU per process): the backend follows the
device. ``--model DIR`` trains a local HuggingFace LLaMA-family checkpoint; without it a tiny random
LLaMA is built from a config, so nothing is downloaded. The data are synthetic token sequences (each
an arithmetic progression modulo the vocabulary, which a model can learn); put your own data loader
in ``synthetic_tokens``' place.

``--global-batch`` is the batch of one optimizer step over all processes; each process takes its
slice, so a run on N processes follows the same loss curve as a single-process run (the test
``tests/python/test_distributed.py`` checks this). The adapter is saved once, by rank 0, with
``torch_neat``'s format (``--output-dir``/adapter): ``torch_neat.load_adapter(model, path)`` loads it
into an unsharded single-process model. Under FSDP2 only the adapter tensors are gathered for that,
never the frozen base weights.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

# Before init_process_group, on purpose: torch.distributed.nn's functions take ``group=group.WORLD`` as a
# default argument, so importing it later (torch._dynamo does, through transformers' model code, DDP
# and FSDP2) binds the default process group into those defaults for good (torch 2.13). Then
# destroy_process_group cannot free the group, its gloo threads outlive the interpreter, and now and
# then a process aborts at exit ("terminate called without an active exception").
import torch.distributed.nn  # noqa: E402, F401

import torch_neat  # noqa: E402

STRATEGIES = ("none", "ddp", "fsdp2", "trainer")
DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--strategy", choices=STRATEGIES, default=None,
                   help="ddp, fsdp2 (torch.distributed.fsdp.fully_shard) or trainer (transformers.Trainer, DDP); "
                        "default: ddp under torchrun with more than one process, else none (one process)")
    p.add_argument("--output-dir", required=True, help="where the adapter and train_log.json go")
    p.add_argument("--model", default=None, help="local HuggingFace causal-LM directory (default: a tiny random LLaMA)")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--global-batch", type=int, default=8, help="sequences per optimizer step, over all processes")
    p.add_argument("--seq-len", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-2)
    p.add_argument("--optimizer", choices=("adamw", "sgd"), default="adamw")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="float32",
                   help="model and adapter dtype (bfloat16: NEAT layers compute in float32 on CPU)")
    p.add_argument("--r", type=int, default=8)
    p.add_argument("--depth", type=int, default=2, help="paper's depth: 2 = vanilla NEAT")
    p.add_argument("--activation", default="relu")
    p.add_argument("--scale", type=float, default=1.0)
    p.add_argument("--target-modules", default="q_proj,v_proj")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cpu", action="store_true", help="stay on CPU (gloo) even if CUDA is available")
    p.add_argument("--dump", action="store_true",
                   help="also write each rank's trainable tensors (rank{i}.safetensors + rank{i}.json) and rank 0's "
                        "eval logits (eval_logits.safetensors); the tests read them")
    args = p.parse_args(argv)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if args.strategy is None:
        args.strategy = "ddp" if world > 1 else "none"
    if args.strategy == "none" and world > 1:
        p.error("--strategy none runs one process; launched on %d" % world)
    if args.global_batch % world:
        p.error(f"--global-batch {args.global_batch} is not divisible by the {world} processes")
    return args


# ---------------------------------------------------------------------------------------------
# Model and data (the same on every rank: everything is seeded)


def tiny_llama_config():
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=128, tie_word_embeddings=False,
        initializer_range=0.2,  # a random base with some signal, so the adapters learn visibly in a few steps
    )


def build_model(args, device: torch.device) -> torch.nn.Module:
    """The base model (``--model`` or a tiny random LLaMA) patched with NEAT; identical on every rank."""
    from transformers import AutoModelForCausalLM, LlamaForCausalLM

    dtype = DTYPES[args.dtype]
    torch.manual_seed(args.seed)
    if args.model:
        model = AutoModelForCausalLM.from_pretrained(args.model, dtype=dtype, local_files_only=True)
    else:
        model = LlamaForCausalLM(tiny_llama_config()).to(dtype)
    config = torch_neat.NeatConfig(
        r=args.r, depth=args.depth, activation=args.activation, scale=args.scale,
        target_modules=[t for t in args.target_modules.split(",") if t],
    )
    # the adapters' random init (A and hidden layers) draws from the seeded global generator
    torch.manual_seed(args.seed + 1)
    return torch_neat.get_neat_model(model, config).to(device)


def synthetic_tokens(n: int, seq_len: int, vocab: int, seed: int) -> torch.Tensor:
    """``n`` sequences ``(a + k t) mod vocab``, a and k drawn per sequence: learnable, no download."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randint(0, vocab, (n, 1), generator=g)
    k = torch.randint(1, 8, (n, 1), generator=g)
    return (a + k * torch.arange(seq_len)) % vocab


# ---------------------------------------------------------------------------------------------
# Distributed set-up


def setup(args):
    """(rank, world, device); starts the process group when launched by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and not args.cpu
    device = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    if world > 1 and args.strategy != "trainer":  # the Trainer starts its own process group
        dist.init_process_group("nccl" if use_cuda else "gloo", device_id=device if use_cuda else None)
    return rank, world, device


def wrap(model: torch.nn.Module, strategy: str, device: torch.device, world: int) -> torch.nn.Module:
    if strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel as DDP

        # only the adapter parameters need grad, so only they are all-reduced
        return DDP(model, device_ids=[device.index] if device.type == "cuda" else None)
    if strategy == "fsdp2":
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        mesh = init_device_mesh(device.type, (world,))
        # one FSDP group per decoder layer, then the root (embeddings, norm, lm_head). Frozen base
        # weights and trainable adapter tensors share the groups: FSDP2 tracks requires_grad per
        # parameter and reduce-scatters only the adapter gradients.
        blocks = set(getattr(model, "_no_split_modules", None) or ())
        for module in model.modules():
            if type(module).__name__ in blocks:
                fully_shard(module, mesh=mesh)
        fully_shard(model, mesh=mesh)
        return model
    return model


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model


@torch.no_grad()
def gather_adapter(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The full adapter tensors on CPU. A collective under FSDP2: every rank must call it."""
    from torch.distributed.tensor import DTensor

    out = {}
    for name, t in torch_neat.adapter_state_dict(unwrap(model)).items():
        if isinstance(t, DTensor):
            t = t.full_tensor()
        out[name] = t.detach().to("cpu", copy=True).contiguous()
    return out


def save_gathered_adapter(model: torch.nn.Module, tensors: dict[str, torch.Tensor], path: str) -> str:
    """Writes gathered adapter tensors in ``torch_neat.save_adapter``'s format (rank 0 only)."""
    from safetensors.torch import save_file

    model = unwrap(model)
    os.makedirs(path, exist_ok=True)
    save_file(tensors, os.path.join(path, torch_neat.model.WEIGHTS_NAME), metadata={"format": "pt"})
    model.neat_config.save(
        path, base_model_type=torch_neat.model_type(model),
        modules_to_save_resolved=torch_neat.saved_modules(model),
    )
    return path


def save_adapter(model: torch.nn.Module, strategy: str, rank: int, path: str) -> None:
    if strategy == "fsdp2":
        tensors = gather_adapter(model)  # every rank takes part
        if rank == 0:
            save_gathered_adapter(model, tensors, path)
    elif rank == 0:
        torch_neat.save_adapter(unwrap(model), path)


def dump_rank_state(model: torch.nn.Module, rank: int, out_dir: str) -> None:
    """This rank's own copy (DDP) or shard (FSDP2) of every trainable tensor, for the tests."""
    from safetensors.torch import save_file
    from torch.distributed.fsdp import FSDPModule
    from torch.distributed.tensor import DTensor

    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.reshard()  # FSDP2 keeps the root unsharded after a forward without backward (the eval)
    tensors, meta = {}, {}
    for name, p in unwrap(model).named_parameters():
        if not p.requires_grad:
            continue
        local = p.to_local() if isinstance(p, DTensor) else p
        tensors[name] = local.detach().to("cpu", copy=True).contiguous()
        meta[name] = {
            "dtensor": isinstance(p, DTensor),
            # the dim each mesh dimension shards (None: replicated); FSDP2 shards dim 0
            "shard_dims": (
                [pl.dim if pl.is_shard() else None for pl in p.placements] if isinstance(p, DTensor) else None
            ),
            "global_shape": list(p.shape),
            "local_shape": list(local.shape),
        }
    frozen = [n for n, p in unwrap(model).named_parameters() if not p.requires_grad]
    frozen_dtensor = sum(isinstance(p, DTensor) for n, p in unwrap(model).named_parameters() if not p.requires_grad)
    save_file(tensors, os.path.join(out_dir, f"rank{rank}.safetensors"))
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump({"trainable": meta, "frozen": len(frozen), "frozen_dtensor": frozen_dtensor}, f, indent=1)


def save_eval_logits(out_dir: str, **tensors: torch.Tensor) -> None:
    """Rank 0's eval batch and logits (bfloat16 stored as float32), for the tests."""
    from safetensors.torch import save_file

    tensors = {k: (v.float() if v.dtype == torch.bfloat16 else v).cpu().contiguous() for k, v in tensors.items()}
    save_file(tensors, os.path.join(out_dir, "eval_logits.safetensors"))


# ---------------------------------------------------------------------------------------------
# Training


def all_mean(value: torch.Tensor, world: int) -> float:
    """The mean over ranks of a scalar (each rank's mean loss over an equal share of the global batch)."""
    if world > 1:
        value = value.detach().clone()
        dist.all_reduce(value)  # SUM: gloo has no AVG
        value /= world
    return float(value.detach())


def causal_lm_loss(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy, in the logits' dtype (float32 at least; HF's own loss is float32)."""
    if logits.dtype not in (torch.float32, torch.float64):
        logits = logits.float()
    return torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten())


@torch.no_grad()
def evaluate(model, ids: torch.Tensor):
    """(loss, logits) on a fixed batch; every rank runs it (FSDP2 gathers parameters collectively)."""
    was_training = model.training
    model.eval()
    logits = model(input_ids=ids).logits
    model.train(was_training)
    return causal_lm_loss(logits, ids), logits


def train_loop(args, rank: int, world: int, device: torch.device) -> dict:
    model = build_model(args, device)
    if rank == 0:
        torch_neat.print_trainable_parameters(model)
    vocab = model.config.vocab_size
    model = wrap(model, args.strategy, device, world)
    params = [p for p in model.parameters() if p.requires_grad]
    if args.optimizer == "sgd":
        opt = torch.optim.SGD(params, lr=args.lr, momentum=0.9)
    else:
        opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0)

    local = args.global_batch // world
    data = synthetic_tokens(args.steps * args.global_batch, args.seq_len, vocab, args.seed + 2)
    eval_ids = synthetic_tokens(4, args.seq_len, vocab, args.seed + 3).to(device)
    eval_start, logits_start = evaluate(model, eval_ids)

    losses = []
    model.train()
    t0 = time.perf_counter()
    for step in range(args.steps):
        start = step * args.global_batch + rank * local
        ids = data[start:start + local].to(device)
        # HF's causal-LM loss is the mean over this rank's tokens; every rank holds as many tokens, so
        # the mean over ranks (what DDP and FSDP2 do to the gradients) is the global batch's mean.
        loss = causal_lm_loss(model(input_ids=ids).logits, ids)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(all_mean(loss, world))
        if rank == 0:
            print(f"step {step + 1:4d}/{args.steps}  loss {losses[-1]:.6f}", flush=True)
    train_s = time.perf_counter() - t0

    eval_end, logits_end = evaluate(model, eval_ids)
    adapter_dir = os.path.join(args.output_dir, "adapter")
    save_adapter(model, args.strategy, rank, adapter_dir)
    if args.dump:
        dump_rank_state(model, rank, args.output_dir)
        if rank == 0:
            save_eval_logits(args.output_dir, eval_ids=eval_ids, start=logits_start, end=logits_end)
    return {
        "losses": losses,
        "eval_loss_start": all_mean(eval_start, world),
        "eval_loss_end": all_mean(eval_end, world),
        "train_seconds": train_s,
        "adapter_dir": adapter_dir,
    }


def train_trainer(args, rank: int, world: int, device: torch.device) -> dict:
    """The same model under transformers.Trainer (it starts the process group and wraps the model in DDP)."""
    from transformers import Trainer, TrainingArguments

    model = build_model(args, device)
    vocab = model.config.vocab_size
    data = synthetic_tokens(args.steps * args.global_batch, args.seq_len, vocab, args.seed + 2)
    rows = [{"input_ids": row, "labels": row} for row in data]
    training_args = TrainingArguments(
        output_dir=args.output_dir,
        per_device_train_batch_size=args.global_batch // world,
        max_steps=args.steps,
        learning_rate=args.lr,
        optim="sgd" if args.optimizer == "sgd" else "adamw_torch",
        weight_decay=0.0,
        lr_scheduler_type="constant",
        warmup_steps=0,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        use_cpu=device.type == "cpu",
        ddp_backend="gloo" if device.type == "cpu" else None,
        ddp_find_unused_parameters=False,  # every adapter tensor gets a gradient every step
        seed=args.seed,
        disable_tqdm=True,
        bf16=args.dtype == "bfloat16" and device.type == "cuda",
    )
    trainer = Trainer(model=model, args=training_args, train_dataset=rows)
    t0 = time.perf_counter()
    trainer.train()
    train_s = time.perf_counter() - t0
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    adapter_dir = os.path.join(args.output_dir, "adapter")
    if trainer.is_world_process_zero():
        torch_neat.save_adapter(trainer.model, adapter_dir)  # trainer.model: the unwrapped model
    if args.dump:
        dump_rank_state(trainer.model, rank, args.output_dir)
        if rank == 0:
            eval_ids = synthetic_tokens(4, args.seq_len, vocab, args.seed + 3).to(device)
            _, logits = evaluate(trainer.model, eval_ids)
            save_eval_logits(args.output_dir, eval_ids=eval_ids, end=logits)
    return {"losses": losses, "train_seconds": train_s, "adapter_dir": adapter_dir,
            "global_step": trainer.state.global_step, "trainer_world_size": training_args.world_size,
            "parallel_mode": str(training_args.parallel_mode)}


def main(argv=None) -> None:
    args = parse_args(argv)
    rank, world, device = setup(args)
    os.makedirs(args.output_dir, exist_ok=True)
    try:
        run = train_trainer if args.strategy == "trainer" else train_loop
        result = run(args, rank, world, device)
        if rank == 0:
            log = {
                "strategy": args.strategy, "world_size": world, "device": device.type, "dtype": args.dtype,
                "global_batch": args.global_batch, "steps": args.steps, "optimizer": args.optimizer, **result,
            }
            if not all(math.isfinite(x) for x in result["losses"]):
                raise SystemExit(f"non-finite loss: {result['losses']}")
            with open(os.path.join(args.output_dir, "train_log.json"), "w") as f:
                json.dump(log, f, indent=1)
            print(f"adapter saved to {result['adapter_dir']} ({result['train_seconds']:.1f} s of training)", flush=True)
    finally:
        if dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()


if __name__ == "__main__":
    main()
