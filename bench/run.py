"""Benchmark suite: fixed workloads timed side by side with the PyTorch stack on the same machine.

    python bench/run.py                  # every workload, both benchmark models (DESIGN.md §7)
    python bench/run.py --models small   # one model
    python bench/run.py --smoke          # seconds: tiny shapes, one repetition (CI runs this)

Prints one JSON line per (workload, model, framework) with the median of the timed repetitions, and one
line per (workload, model) with the oversight/PyTorch ratio measured in the same run. The two frameworks
alternate repetition by repetition, so machine drift hits both alike. Allocator settings are applied to the
whole process (both frameworks) and recorded. Workloads so far: W4 (SFT step); W1–W3 follow with the RLHF
core.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

# glibc returning memory to the OS costs PyTorch's training steps 11-17% here; both sides run with this.
MALLOC_ENV = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": "100000000000"}

MODELS = {  # DESIGN.md §7: GPT-2 architecture, random init, float32
    "tiny": dict(n_layers=4, d_model=256, n_heads=4, vocab_size=8192),
    "small": dict(n_layers=6, d_model=512, n_heads=8, vocab_size=16384),
    "smoke": dict(n_layers=1, d_model=64, n_heads=2, vocab_size=512),
}


def emit(record: dict) -> None:
    print(json.dumps(record), flush=True)


def matmul_peak(reps: int) -> dict:
    """fp32 GFLOP/s of a 2048² matmul on 2 threads, by JAX and by PyTorch; the machine's peak is the larger."""
    import jax
    import jax.numpy as jnp
    import torch

    n = 2048
    a = jnp.ones((n, n), jnp.float32)
    f = jax.jit(lambda x: x @ x)
    f(a).block_until_ready()
    t = torch.ones(n, n)
    t @ t
    jax_s, torch_s = [], []
    for _ in range(max(reps, 5)):
        s = time.perf_counter()
        f(a).block_until_ready()
        jax_s.append(time.perf_counter() - s)
        s = time.perf_counter()
        t @ t
        torch_s.append(time.perf_counter() - s)
    flop = 2 * n**3
    out = {"jax": flop / statistics.median(jax_s) / 1e9, "torch": flop / statistics.median(torch_s) / 1e9}
    out["peak"] = max(out.values())
    return out


class OversightSFT:
    """W4 with oversight: one jitted SFT step (forward, backward, AdamW) on batch × length tokens."""

    name = "oversight"

    def __init__(self, dims: dict, batch: int, length: int):
        import jax
        import numpy as np

        from oversight.models import ModelConfig
        from oversight.parallel import MeshConfig, make_mesh, shard_batch
        from oversight.training.loop import TrainConfig, init_train_state, make_optimizer, make_train_step
        from oversight.training.sft import sft_loss

        self.cfg = ModelConfig(family="gpt2", max_seq_len=length, **dims)
        mesh, rules = make_mesh(MeshConfig()), MeshConfig().rules
        tx = make_optimizer(TrainConfig(grad_clip=0.0, weight_decay=0.01))
        graphdef, self.state, shardings = init_train_state(self.cfg, tx, 0, mesh, rules)
        self.step = make_train_step(graphdef, sft_loss, shardings, mesh, rules)
        rng = np.random.default_rng(0)
        ones = np.ones((batch, length), np.int32)
        tokens = rng.integers(0, self.cfg.vocab_size, (batch, length)).astype(np.int32)
        self.batch = shard_batch({"tokens": tokens, "mask": ones, "loss_mask": ones}, mesh, rules)
        self._jax = jax

    def run(self) -> None:
        self.state, metrics = self.step(self.state, self.batch)
        self._jax.block_until_ready(metrics)

    def compiled(self) -> int:
        return self.step._cache_size()

    def num_params(self) -> int:
        return self.cfg.num_params()


class TorchSFT:
    """W4 with the PyTorch stack: transformers GPT-2, fused AdamW, the same tokens."""

    name = "pytorch"

    def __init__(self, dims: dict, batch: int, length: int):
        import torch
        from transformers import GPT2Config, GPT2LMHeadModel

        torch.manual_seed(0)
        cfg = GPT2Config(
            vocab_size=dims["vocab_size"],
            n_positions=length,
            n_embd=dims["d_model"],
            n_layer=dims["n_layers"],
            n_head=dims["n_heads"],
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
            bos_token_id=0,
            eos_token_id=0,
        )
        self.model = GPT2LMHeadModel(cfg).train()
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=3e-4, weight_decay=0.01, fused=True)
        self.tokens = torch.randint(0, dims["vocab_size"], (batch, length))
        self._params = sum(p.numel() for p in self.model.parameters())

    def run(self) -> None:
        loss = self.model(input_ids=self.tokens, labels=self.tokens).loss
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)

    def compiled(self) -> int:
        return 0

    def num_params(self) -> int:
        return self._params


def time_alternating(impls: list, reps: int, warmup: int) -> dict[str, list[float]]:
    for impl in impls:
        for _ in range(warmup):
            impl.run()
    compiled = {impl.name: impl.compiled() for impl in impls}
    times: dict[str, list[float]] = {impl.name: [] for impl in impls}
    for _ in range(reps):
        for impl in impls:
            start = time.perf_counter()
            impl.run()
            times[impl.name].append(time.perf_counter() - start)
    for impl in impls:
        if impl.compiled() != compiled[impl.name]:
            raise RuntimeError(
                f"{impl.name}: recompiled after warm-up ({compiled[impl.name]} -> {impl.compiled()})"
            )
    return times


def w4_sft(model: str, reps: int, warmup: int, peak: float, batch: int, length: int) -> None:
    dims = MODELS[model]
    impls = [OversightSFT(dims, batch, length), TorchSFT(dims, batch, length)]
    times = time_alternating(impls, reps, warmup)
    tokens_per_s = {}
    for impl in impls:
        median = statistics.median(times[impl.name])
        tokens_per_s[impl.name] = batch * length / median
        flops = 6 * impl.num_params() * tokens_per_s[impl.name]
        emit(
            {
                "workload": "W4_sft_step",
                "model": model,
                "framework": impl.name,
                "seconds_median": median,
                "seconds_all": times[impl.name],
                "tokens_per_s": tokens_per_s[impl.name],
                "params": impl.num_params(),
                "model_flops_per_s": flops,
                "fraction_of_peak": flops / peak,
            }
        )
    emit(
        {
            "workload": "W4_sft_step",
            "model": model,
            "ratio_oversight_over_pytorch": tokens_per_s["oversight"] / tokens_per_s["pytorch"],
        }
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", nargs="+", default=["tiny", "small"], choices=sorted(MODELS))
    parser.add_argument(
        "--reps", type=int, default=5, help="timed repetitions per framework (median reported)"
    )
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument(
        "--smoke", action="store_true", help="tiny shapes, one repetition: checks the suite runs"
    )
    parser.add_argument(
        "--no-malloc-tuning", action="store_true", help="keep glibc's default allocator settings"
    )
    args = parser.parse_args()

    if not args.no_malloc_tuning and any(os.environ.get(k) != v for k, v in MALLOC_ENV.items()):
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **MALLOC_ENV})

    import torch

    torch.set_num_threads(2)
    models, reps, warmup, batch, length = args.models, args.reps, args.warmup, 16, 256
    if args.smoke:
        models, reps, warmup, batch, length = ["smoke"], 1, 1, 2, 32
    peak = matmul_peak(reps)
    emit(
        {
            "machine": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(),
            "malloc": {k: os.environ.get(k) for k in MALLOC_ENV},
            "matmul_gflops": peak,
            "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
    )
    for model in models:
        w4_sft(model, reps, warmup, peak["peak"] * 1e9, batch, length)


if __name__ == "__main__":
    main()
