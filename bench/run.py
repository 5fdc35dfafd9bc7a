"""Benchmark suite: fixed workloads timed side by side with the PyTorch stack on the same machine.

    python bench/run.py                        # every workload, both benchmark models (DESIGN.md §7)
    python bench/run.py --models small         # one model
    python bench/run.py --workloads W1,W3      # some workloads
    python bench/run.py --smoke                # seconds: tiny shapes, one repetition (CI runs this)

Workloads (DESIGN.md §7), each with oversight and with PyTorch (transformers GPT-2 + plain PyTorch):
  W1 reward-model step: 8 prompts x K=4 responses x 128 tokens, all 6 pairs per prompt, AdamW. comparisons/s.
  W2 sampling: batch 16, 32-token prompts, exactly 64 new tokens, temperature 1, KV cache. generated tokens/s.
  W3 one PPO iteration: 16 prompts x 32 tokens, 64 sampled tokens, reward-model score, per-token KL (β 0.02)
     to a frozen reference, GAE, 4 epochs of minibatch 8, clipped policy and value losses. s/iteration.
  W4 SFT step: batch 16 x 256 tokens. tokens/s.
W1, W3 and W4 also report model FLOP/s as a fraction of the machine's matmul peak (a 2048² matmul's fastest of
3 repetitions in each library measured — JAX's default YNNPACK, the oneDNN its training steps use, PyTorch —
the largest of them, measured again before every round of repetitions; the fraction is the median over repetitions
of each one's FLOP/s over the peak measured just before it: this VM's speed drifts by tens of percent within
minutes, so a fraction is only meaningful against a peak taken next to it).

Prints one JSON line per (workload, model, framework) with the median of the timed repetitions and the work
the repetition did (shapes, tokens, optimizer steps: equal on both sides), and one line per (workload, model)
with `ratio_oversight_over_pytorch`, the speed ratio measured in the same run (PyTorch seconds / oversight
seconds: > 1 means oversight is faster; for throughput figures it is the throughput ratio). The frameworks
alternate repetition by repetition, so machine drift hits both alike, and each implementation runs in its own
worker process, so neither inherits the other's allocator or thread state (in one process, a JAX SFT step
right after a PyTorch step ran 1.5-3.4 s slower than the next). Allocator settings apply to every process and
are recorded. After warm-up nothing may compile: every oversight program's cache size and its process's count
of JAX backend compilations are checked around the timed repetitions.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass

# glibc returning memory to the OS costs PyTorch's training steps 11-17% here, and XLA's more: its threads'
# malloc arenas unmap and refault ~2.8 GB per `small` SFT step (686k page faults, 1 s of system time; 3.2 s a
# step, 2.7 s with one arena). Every benchmark process, both frameworks, runs with this.
MALLOC_ENV = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": "100000000000", "MALLOC_ARENA_MAX": "1"}

MODELS = {  # DESIGN.md §7: GPT-2 architecture, random init, float32
    "tiny": dict(n_layers=4, d_model=256, n_heads=4, vocab_size=8192),
    "small": dict(n_layers=6, d_model=512, n_heads=8, vocab_size=16384),
    "smoke": dict(n_layers=1, d_model=64, n_heads=2, vocab_size=512),
}
# Position table of the W1-W3 models (conf/model/bench_*.yaml); W4 sizes it to its sequence length.
MAX_SEQ_LEN = 512
WORKLOADS = ("W1", "W2", "W3", "W4")


@dataclass(frozen=True)
class Shapes:
    # W1: reward-model step
    rm_prompts: int = 8
    rm_k: int = 4
    rm_len: int = 128
    # W2: sampling
    gen_batch: int = 16
    gen_prompt: int = 32
    gen_new: int = 64
    # W3: one PPO iteration
    ppo_prompts: int = 16
    ppo_prompt: int = 32
    ppo_new: int = 64
    ppo_epochs: int = 4
    ppo_minibatch: int = 8
    ppo_kl_coef: float = 0.02
    # W4: SFT step
    sft_batch: int = 16
    sft_len: int = 256


SMOKE_SHAPES = Shapes(
    rm_prompts=2,
    rm_len=16,
    gen_batch=2,
    gen_prompt=8,
    gen_new=8,
    ppo_prompts=4,
    ppo_prompt=8,
    ppo_new=8,
    ppo_minibatch=2,
    sft_batch=2,
    sft_len=32,
)


def emit(record: dict) -> None:
    print(json.dumps(record), flush=True)


# --- recompilation check -------------------------------------------------------------------------------------

_COMPILES = [0]  # backend compilations JAX has done in this process (any program, jitted or eager)


def _count_compiles() -> None:
    import jax.monitoring

    if getattr(_count_compiles, "registered", False):
        return

    def listener(event: str, duration: float, **kwargs) -> None:
        if event == "/jax/core/compile/backend_compile_duration":
            _COMPILES[0] += 1

    jax.monitoring.register_event_duration_secs_listener(listener)
    _count_compiles.registered = True


def time_alternating(impls: list, reps: int, warmup: int, before_round=None) -> dict[str, list[float]]:
    """Warm every implementation up, then time them in turn, rep by rep; raise if anything compiled since.
    `before_round()`, if given, runs before each round of repetitions (untimed)."""
    _count_compiles()
    for impl in impls:
        for _ in range(warmup):
            impl.run()
    compiled = {impl.name: impl.compiled() for impl in impls}
    compiles_before = _COMPILES[0]
    times: dict[str, list[float]] = {impl.name: [] for impl in impls}
    for _ in range(reps):
        if before_round is not None:
            before_round()
        for impl in impls:
            start = time.perf_counter()
            impl.run()
            times[impl.name].append(time.perf_counter() - start)
    for impl in impls:
        if impl.compiled() != compiled[impl.name]:
            raise RuntimeError(
                f"{impl.name}: recompiled after warm-up ({compiled[impl.name]} -> {impl.compiled()})"
            )
    if _COMPILES[0] != compiles_before:
        raise RuntimeError(
            f"JAX compiled {_COMPILES[0] - compiles_before} program(s) during the timed repetitions "
            "(recompiled after warm-up)"
        )
    return times


class Isolated:
    """An implementation built and run in a worker process of its own; method calls go over a pipe.

    The parent times `run()` around the round trip (about 0.1 ms, against repetitions of 0.1 s and more); the
    worker counts the minor page faults each `run()` took (`page_faults`, warm-up runs included): a step in
    which the heap grew faults its new memory in and runs seconds slower (RESULTS.md, "Allocator")."""

    def __init__(self, cls: type, *args):
        import multiprocessing

        # spawn: a fresh interpreter, with no JAX or torch state from the parent
        ctx = multiprocessing.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_serve, args=(child, cls.__name__, args), daemon=True)
        self._proc.start()
        child.close()
        self.name = self._reply(cls.__name__)  # the worker answers once it has built the implementation
        self.page_faults: list[int] = []

    def _reply(self, what: str):
        status, value = self._conn.recv()
        if status != "ok":
            raise RuntimeError(f"benchmark worker ({what}) failed:\n{value}")
        return value

    def _call(self, what: str):
        self._conn.send(what)
        return self._reply(f"{self.name}.{what}")

    def run(self) -> None:
        self.page_faults.append(self._call("run"))

    def compiled(self):
        return self._call("compiled")

    def __getattr__(self, method: str):  # work(), num_params(): zero-argument queries
        if method.startswith("_"):
            raise AttributeError(method)
        return lambda: self._call(method)

    def close(self) -> None:
        self._conn.send(None)
        self._proc.join(timeout=60)


def _serve(conn, cls_name: str, args: tuple) -> None:
    """Worker side of `Isolated`: build the implementation, then answer calls until told to stop."""
    import resource
    import traceback

    try:
        if cls_name.startswith("Torch"):
            import torch

            torch.set_num_threads(2)
        else:
            _count_compiles()
        impl = globals()[cls_name](*args)
        conn.send(("ok", impl.name))
    except Exception:
        conn.send(("error", traceback.format_exc()))
        return
    while (what := conn.recv()) is not None:
        try:
            if what == "run":  # answers the minor page faults the run took
                before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
                impl.run()
                value = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
            elif what == "compiled":  # the program caches and this process's backend compilations
                value = [impl.compiled(), _COMPILES[0]]
            else:
                value = getattr(impl, what)()
            conn.send(("ok", value))
        except Exception:
            conn.send(("error", traceback.format_exc()))


def compare(
    workload: str,
    model: str,
    specs: list[tuple],
    reps: int,
    warmup: int,
    figure: str,
    amount,
    flop=None,
    **extra,
):
    """Build each (class, *args) in its own worker (`Isolated`), time them alternately, report; stop the workers.

    `flop(impl)`: model FLOPs of one repetition; then the matmul peak is measured before every round too."""
    impls, peaks = [], []
    try:
        for cls, *args in specs:
            impls.append(Isolated(cls, *args))
        measure_peak = (lambda: peaks.append(matmul_peak(3)["peak"] * 1e9)) if flop else None
        times = time_alternating(impls, reps, warmup, measure_peak)
        report(workload, model, impls, times, figure, amount, flop, peaks, **extra)
    finally:
        for impl in impls:
            impl.close()


def report(
    workload: str,
    model: str,
    impls: list,
    times: dict,
    figure: str,
    amount: float | None,
    flop=None,
    peaks: tuple[float, ...] | list[float] = (),
    **extra,
):
    """One JSON line per framework and the ratio line. figure = amount / seconds (or seconds if amount is None).

    `extra[key](impl, seconds)` adds per-framework fields. With `flop(impl)` (model FLOPs of one repetition)
    and `peaks` (FLOP/s, the matmul peak measured before each round): model FLOP/s at the median time, and the
    fraction of peak as the median over repetitions of flop / seconds / the peak before it. The ratio is
    PyTorch seconds / oversight seconds against the fastest PyTorch variant (several are timed where the best
    configuration is not obvious).
    """
    medians = {impl.name: statistics.median(times[impl.name]) for impl in impls}
    for impl in impls:
        s = medians[impl.name]
        record = {
            "workload": workload,
            "model": model,
            "framework": impl.name,
            "seconds_median": s,
            "seconds_all": times[impl.name],
            figure: s if amount is None else amount / s,
            "work": impl.work(),
        }
        if hasattr(impl, "page_faults"):  # `Isolated` counts them: the timed repetitions come last
            record["page_faults_all"] = impl.page_faults[-len(times[impl.name]) :]
        if flop is not None:
            work = flop(impl)  # model FLOPs of one repetition (may ask the worker: once)
            record["model_flops_per_s"] = work / s
            per_rep = [work / t / p for t, p in zip(times[impl.name], peaks, strict=True)]
            record["fraction_of_peak"] = statistics.median(per_rep)
        record.update({key: fn(impl, s) for key, fn in extra.items()})
        emit(record)
    reference = min((n for n in medians if n.startswith("pytorch")), key=medians.get)
    emit(
        {
            "workload": workload,
            "model": model,
            "figure": figure,
            "reference": reference,
            "ratio_oversight_over_pytorch": medians[reference] / medians["oversight"],
            **({"matmul_peak_gflops_by_round": [p / 1e9 for p in peaks]} if flop is not None else {}),
        }
    )


# --- shared helpers ------------------------------------------------------------------------------------------


@functools.cache
def _matmul_operands(n: int = 2048):
    """The peak's jitted JAX matmuls (by library) and the operands, JAX and PyTorch, built and run once."""
    import jax
    import jax.numpy as jnp
    import torch

    from oversight.parallel import MeshConfig, make_mesh
    from oversight.training.loop import training_compiler_options

    a = jnp.ones((n, n), jnp.float32)
    # XLA's default product library (YNNPACK) and the one the training steps compile to (oneDNN, where there).
    fs = {"jax": jax.jit(lambda x: x @ x)}
    onednn = training_compiler_options(make_mesh(MeshConfig(), jax.devices()[:1]))
    if onednn:
        fs["jax_onednn"] = jax.jit(lambda x: x @ x, compiler_options=onednn)
    for f in fs.values():
        f(a).block_until_ready()
    t = torch.ones(n, n)
    t @ t
    return fs, a, t


def matmul_peak(reps: int) -> dict:
    """fp32 GFLOP/s of a 2048² matmul on 2 threads, by JAX (in each product library it uses) and by PyTorch,
    each its fastest of `reps` repetitions (a peak); the machine's peak is the largest. They alternate, as the
    workloads' frameworks do."""
    fs, a, t = _matmul_operands()
    n = a.shape[0]
    seconds = {name: [] for name in [*fs, "torch"]}
    for _ in range(reps):
        for name, f in fs.items():
            s = time.perf_counter()
            f(a).block_until_ready()
            seconds[name].append(time.perf_counter() - s)
        s = time.perf_counter()
        t @ t
        seconds["torch"].append(time.perf_counter() - s)
    out = {name: 2 * n**3 / min(s) / 1e9 for name, s in seconds.items()}
    out["peak"] = max(out.values())
    return out


def trunk_params(dims: dict) -> int:
    """Parameters every token's forward multiplies through: the blocks (not the embedding gather or LM head)."""
    d = dims["d_model"]
    # per block: attention 4d² + 4d, MLP 8d² + 5d, two LayerNorms 4d; plus the final LayerNorm
    return dims["n_layers"] * (12 * d * d + 13 * d) + 2 * d


def oversight_config(dims: dict, max_seq_len: int = MAX_SEQ_LEN, heads: tuple[str, ...] = ()):
    from oversight.models import ModelConfig

    return ModelConfig(family="gpt2", max_seq_len=max_seq_len, scalar_heads=heads, **dims)


def oversight_mesh():
    from oversight.parallel import MeshConfig, make_mesh

    return make_mesh(MeshConfig()), MeshConfig().rules


def optimizer_steps(state) -> int:
    """The optimizer's update counter in a (model, optimizer) train state."""
    return int(state[1]["step"][...])


def torch_gpt2_config(dims: dict, n_positions: int = MAX_SEQ_LEN):
    from transformers import GPT2Config

    return GPT2Config(
        vocab_size=dims["vocab_size"],
        n_positions=n_positions,
        n_embd=dims["d_model"],
        n_layer=dims["n_layers"],
        n_head=dims["n_heads"],
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=0,
        eos_token_id=0,
    )


def torch_adamw(params, lr: float, weight_decay: float):
    """Fused AdamW with oversight's settings: betas (0.9, 0.99), decay on matrices only."""
    import torch

    params = list(params)
    groups = [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.99), fused=True)


def torch_sample(model, prompt, new_tokens: int, temperature: float = 1.0):
    """Hand-written KV-cache sampling with a transformers GPT-2: prompt (B, P) -> tokens, logprobs (B, N).

    Call under torch.inference_mode(). Prefill computes logits at the last position only, and the N-th token
    needs no forward pass: the fewest model calls a KV-cache sampler can make.
    """
    import torch

    out = model(input_ids=prompt, use_cache=True, logits_to_keep=1)
    past, logits = out.past_key_values, out.logits[:, -1]  # (B, V)
    tokens, logprobs = [], []
    for t in range(new_tokens):
        logp = torch.log_softmax(logits.float() / temperature, dim=-1)  # (B, V)
        token = torch.multinomial(logp.exp(), 1)  # (B, 1)
        tokens.append(token)
        logprobs.append(logp.gather(-1, token))
        if t + 1 < new_tokens:
            out = model(input_ids=token, past_key_values=past, use_cache=True)
            past, logits = out.past_key_values, out.logits[:, -1]
    return torch.cat(tokens, 1), torch.cat(logprobs, 1)  # (B, N), (B, N)


# --- W1: reward-model step -----------------------------------------------------------------------------------


class OversightRewardModel:
    """W1 with oversight: the shared jitted train step on `reward_model_loss` (one forward per response)."""

    name = "oversight"

    def __init__(self, dims: dict, s: Shapes):
        import jax
        import numpy as np

        from oversight.parallel import shard_batch
        from oversight.training.loop import TrainConfig, init_train_state, make_optimizer, make_train_step
        from oversight.training.reward_model import reward_model_loss

        cfg = oversight_config(dims, heads=("reward",))
        mesh, rules = oversight_mesh()
        tx = make_optimizer(TrainConfig(learning_rate=3e-4, grad_clip=0.0, weight_decay=0.01))
        graphdef, self.state, shardings = init_train_state(cfg, tx, 0, mesh, rules)
        self.step = make_train_step(graphdef, reward_model_loss, shardings, mesh, rules)
        b, k, t = s.rm_prompts, s.rm_k, s.rm_len
        rng = np.random.default_rng(0)
        # Rankings of K full-length (prompt + response) rows, best first; every pair is a comparison.
        batch = {
            "tokens": rng.integers(0, cfg.vocab_size, (b, k, t)).astype(np.int32),  # (B, K, T)
            "mask": np.ones((b, k, t), np.int32),
            "valid": np.ones((b, k), np.int32),
        }
        self.batch = shard_batch(batch, mesh, rules)
        self.runs, self.steps0, self.pairs = 0, optimizer_steps(self.state), 0
        self._jax = jax

    def run(self) -> None:
        self.state, metrics = self.step(self.state, self.batch)
        self.pairs = metrics["pairs"]
        self._jax.block_until_ready(metrics)
        self.runs += 1

    def compiled(self) -> int:
        return self.step._cache_size()

    def work(self) -> dict:
        return {
            "rows_x_tokens": list(self.batch["tokens"].shape),
            "comparisons": int(self.pairs),
            "optimizer_steps": (optimizer_steps(self.state) - self.steps0) / self.runs,
        }


class TorchRewardModel:
    """W1 with PyTorch: transformers GPT2Model + a linear scalar head, the K-way loss over all pairs."""

    name = "pytorch"

    def __init__(self, dims: dict, s: Shapes):
        import torch
        from transformers import GPT2Model

        torch.manual_seed(0)
        self.trunk = GPT2Model(torch_gpt2_config(dims)).train()
        self.head = torch.nn.Linear(dims["d_model"], 1)
        self.opt = torch_adamw([*self.trunk.parameters(), *self.head.parameters()], 3e-4, 0.01)
        self.b, self.k, t = s.rm_prompts, s.rm_k, s.rm_len
        self.tokens = torch.randint(0, dims["vocab_size"], (self.b * self.k, t))  # (B*K, T), best first per B
        self.pairs = torch.ones(self.k, self.k, dtype=torch.bool).triu(1)  # (K, K): i better than j for i < j
        self.runs = self.steps = self.comparisons = 0

    def loss(self):
        """The K-way Bradley–Terry loss of the batch and the number of comparisons in it."""
        import torch.nn.functional as F

        hidden = self.trunk(input_ids=self.tokens).last_hidden_state  # (B*K, T, D)
        rewards = self.head(hidden[:, -1]).view(self.b, self.k)  # the last real token: rows are full
        diff = rewards[:, :, None] - rewards[:, None, :]  # (B, K, K)
        pair_diff = diff[:, self.pairs]  # (B, 6): every prompt has all its pairs
        # Mean over a prompt's pairs, then over prompts (each prompt one batch element, as InstructGPT).
        return -F.logsigmoid(pair_diff).mean(dim=1).mean(), pair_diff.numel()

    def run(self) -> None:
        loss, comparisons = self.loss()
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        self.runs, self.steps, self.comparisons = self.runs + 1, self.steps + 1, comparisons

    def compiled(self) -> int:
        return 0

    def work(self) -> dict:
        return {
            "rows_x_tokens": [self.b, self.k, self.tokens.shape[1]],
            "comparisons": self.comparisons,
            "optimizer_steps": self.steps / self.runs,
        }


def w1_reward_model(model: str, s: Shapes, reps: int, warmup: int) -> None:
    dims = MODELS[model]
    comparisons = s.rm_prompts * s.rm_k * (s.rm_k - 1) // 2
    flop = 6 * trunk_params(dims) * s.rm_prompts * s.rm_k * s.rm_len  # no LM head in a reward model
    specs = [(OversightRewardModel, dims, s), (TorchRewardModel, dims, s)]
    compare(
        "W1_reward_model_step",
        model,
        specs,
        reps,
        warmup,
        "comparisons_per_s",
        comparisons,
        flop=lambda impl: flop,
    )


# --- W2: sampling --------------------------------------------------------------------------------------------


class OversightSampling:
    """W2 with oversight: `Sampler` (one jitted program: lax.scans over the decode steps with the KV cache)."""

    name = "oversight"

    def __init__(self, dims: dict, s: Shapes):
        import jax
        import numpy as np

        from oversight.models import make_model
        from oversight.sampling import Sampler, SamplingConfig

        cfg = oversight_config(dims)
        sampling = SamplingConfig(max_new_tokens=s.gen_new, temperature=1.0)
        # No stop token: every row generates exactly gen_new tokens, as on the PyTorch side.
        self.sampler = Sampler(
            make_model(cfg, 0), sampling, (), 0, batch_buckets=(s.gen_batch,), prompt_buckets=(s.gen_prompt,)
        )
        rng = np.random.default_rng(0)
        self.prompts = rng.integers(0, cfg.vocab_size, (s.gen_batch, s.gen_prompt)).tolist()
        self.key, self.runs, self.shape = jax.random.key(0), 0, None
        self._jax = jax

    def run(self) -> None:
        out = self.sampler.sample(self.prompts, self._jax.random.fold_in(self.key, self.runs))
        self._jax.block_until_ready(out)
        self.runs += 1
        self.shape = [int(out.mask.shape[0]), int(out.mask.sum(1).max())]

    def compiled(self) -> int:
        return self.sampler.num_compiled

    def work(self) -> dict:
        return {"prompt": [len(self.prompts), len(self.prompts[0])], "generated": self.shape}


class TorchGenerate:
    """W2 with transformers' `generate`: sampling at temperature 1, no top-k/top-p, exactly N new tokens."""

    name = "pytorch"

    def __init__(self, dims: dict, s: Shapes):
        import torch
        from transformers import GPT2LMHeadModel

        torch.manual_seed(0)
        self.model = GPT2LMHeadModel(torch_gpt2_config(dims)).eval()
        self.prompt = torch.randint(1, dims["vocab_size"], (s.gen_batch, s.gen_prompt))  # (B, P)
        self.new, self.shape = s.gen_new, None

    def run(self) -> None:
        import torch

        with torch.inference_mode():
            out = self.model.generate(
                input_ids=self.prompt,
                attention_mask=torch.ones_like(self.prompt),
                do_sample=True,
                temperature=1.0,
                top_k=0,
                top_p=1.0,
                min_new_tokens=self.new,
                max_new_tokens=self.new,
                use_cache=True,
                pad_token_id=0,
            )
        self.shape = [out.shape[0], out.shape[1] - self.prompt.shape[1]]

    def compiled(self) -> int:
        return 0

    def work(self) -> dict:
        return {"prompt": list(self.prompt.shape), "generated": self.shape}


class TorchSampleLoop(TorchGenerate):
    """W2 with a hand-written KV-cache loop over the transformers model (`torch_sample`): no generate overhead."""

    name = "pytorch_kv_loop"

    def run(self) -> None:
        import torch

        with torch.inference_mode():
            tokens, _ = torch_sample(self.model, self.prompt, self.new)
        self.shape = list(tokens.shape)


def w2_sampling(model: str, s: Shapes, reps: int, warmup: int) -> None:
    dims = MODELS[model]
    specs = [(OversightSampling, dims, s), (TorchGenerate, dims, s), (TorchSampleLoop, dims, s)]
    compare("W2_sampling", model, specs, reps, warmup, "tokens_per_s", s.gen_batch * s.gen_new)


# --- W3: one PPO iteration -----------------------------------------------------------------------------------


def ppo_flop(dims: dict, s: Shapes) -> float:
    """Model FLOPs of one PPO iteration: 2/token forward, 6/token forward+backward (attention scores aside)."""
    trunk, head = trunk_params(dims), dims["vocab_size"] * dims["d_model"]
    b, t, n = s.ppo_prompts, s.ppo_prompt + s.ppo_new, s.ppo_new
    sample = 2 * trunk * b * t + 2 * head * b * n
    score = 3 * 2 * trunk * b * t + 2 * 2 * head * b * n  # policy, reference (with LM head), reward model
    update = s.ppo_epochs * (6 * trunk * b * t + 6 * head * b * n)
    return sample + score + update


class OversightPPO:
    """W3 with oversight: the PPO pieces wired as experiments/rlhf.py wires them.

    Sampler rollout, one jitted scoring phase (policy log-probs and values, reference log-probs, reward-model
    score with the missing-stop penalty), one jitted advantages phase (per-token KL rewards, GAE, whitening),
    one jitted update (epochs x minibatches of `ppo_loss` steps in lax.scan, state donated), and the host
    reads of the statistics the experiment logs.
    """

    name = "oversight"

    def __init__(self, dims: dict, s: Shapes):
        import jax
        import numpy as np
        from flax import nnx

        from oversight.models import make_model
        from oversight.parallel import batch_sharding
        from oversight.sampling import Sampler, SamplingConfig
        from oversight.sampling.generate import left_pad
        from oversight.training.loop import TrainConfig, init_train_state, make_optimizer
        from oversight.training.ppo import (
            AdaptiveKLController,
            PPOConfig,
            make_ppo_update,
            make_rollout_phases,
            rollout_batch,
        )
        from oversight.training.reward_model import RewardParams

        self._jax, self._nnx, self._left_pad, self._rollout_batch = jax, nnx, left_pad, rollout_batch
        cfg = oversight_config(dims, heads=("reward", "value"))  # one architecture for every role
        mesh, rules = oversight_mesh()
        self.s, self.stop = s, ()  # no stop token: exactly ppo_new tokens per response
        ppo_cfg = PPOConfig(
            kl_coef=s.ppo_kl_coef, epochs=s.ppo_epochs, minibatches=s.ppo_prompts // s.ppo_minibatch
        )
        tx = make_optimizer(TrainConfig(learning_rate=1e-5, warmup_steps=0, grad_clip=0.0, weight_decay=0.0))
        # The policy with its value head, and its optimizer.
        self.graphdef, self.state, shardings = init_train_state(cfg, tx, 0, mesh, rules)
        model_graphdef, self.ref_params = nnx.split(make_model(cfg, 0))  # frozen reference = initial policy
        self.rm_params = RewardParams.unnormalised(nnx.split(make_model(cfg, 1))[1])
        self.kl_ctl = AdaptiveKLController.from_config(ppo_cfg)
        stop = self.stop

        score_rollout, advantages = make_rollout_phases(self.graphdef, model_graphdef, ppo_cfg, stop)

        b = s.ppo_prompts
        self.batch_sharding = batch_sharding(mesh, rules)
        self.score_rollout, self.advantages = score_rollout, advantages
        self.update = make_ppo_update(self.graphdef, ppo_cfg, b, shardings, mesh, rules)
        self.sampler = Sampler(
            nnx.merge(self.graphdef, self.state)[0],
            SamplingConfig(max_new_tokens=s.ppo_new, temperature=ppo_cfg.temperature),
            stop,
            0,
            batch_buckets=(b,),
            prompt_buckets=(s.ppo_prompt,),
        )
        rng = np.random.default_rng(0)
        self.prompts = rng.integers(1, cfg.vocab_size, (b, s.ppo_prompt)).tolist()
        self.key, self.runs, self.steps0, self.shape = jax.random.key(0), 0, optimizer_steps(self.state), None

    def run(self) -> None:
        jax, jnp = self._jax, self._jax.numpy
        key = jax.random.fold_in(self.key, self.runs)
        self.sampler.update(self._nnx.merge(self.graphdef, self.state)[0])
        out = self.sampler.sample(self.prompts, jax.random.fold_in(key, 0))
        p, pm = (jnp.asarray(x) for x in self._left_pad(self.prompts, self.s.ppo_prompt, 0))
        response, response_mask = out.tokens, out.mask
        scored = self.score_rollout(
            self.state, self.ref_params, self.rm_params, p, pm, response, response_mask
        )
        adv = self.advantages(scored, response_mask, jnp.float32(self.kl_ctl.value))
        rollout = self._rollout_batch(p, pm, response, response_mask, scored, adv)
        rollout = jax.device_put(rollout, self.batch_sharding)
        self.state, stats = self.update(self.state, rollout, jax.random.fold_in(key, 1))
        # The experiment reads the update's and the rollout's statistics every iteration.
        stats = {k: float(v) for k, v in jax.device_get(stats).items()}
        roll_stats = {k: float(v) for k, v in jax.device_get(adv["stats"]).items()}
        self.kl_ctl.update(roll_stats["objective/kl"], self.s.ppo_prompts)
        self.runs += 1
        self.shape = list(response.shape)

    def compiled(self) -> int:
        fns = (self.sampler._run, self.score_rollout, self.advantages, self.update)
        return sum(f._cache_size() for f in fns)

    def work(self) -> dict:
        return {
            "prompt": [self.s.ppo_prompts, self.s.ppo_prompt],
            "response": self.shape,
            "optimizer_steps": (optimizer_steps(self.state) - self.steps0) / self.runs,
            "minibatch": self.s.ppo_minibatch,
        }


class TorchPPO:
    """W3 with plain PyTorch (no TRL) following the same recipe on transformers GPT-2 models.

    Policy GPT2LMHeadModel + a linear value head on its final hidden states (shared trunk), a frozen copy as
    reference, a GPT2Model + linear head as reward model; rollout by `torch_sample`, then the same scoring,
    per-token KL rewards, GAE (γ 1, λ 0.95), whitening and epochs x minibatches of clipped losses, fused AdamW.
    """

    name = "pytorch"

    def __init__(self, dims: dict, s: Shapes):
        import copy

        import torch
        from transformers import GPT2LMHeadModel, GPT2Model

        torch.manual_seed(0)
        self.s, d = s, dims["d_model"]
        self.policy = GPT2LMHeadModel(torch_gpt2_config(dims)).train()
        self.value_head = torch.nn.Linear(d, 1)
        self.ref = copy.deepcopy(self.policy).eval().requires_grad_(False)
        self.rm = GPT2Model(torch_gpt2_config(dims)).eval().requires_grad_(False)
        self.rm_head = torch.nn.Linear(d, 1).requires_grad_(False)
        self.opt = torch_adamw([*self.policy.parameters(), *self.value_head.parameters()], 1e-5, 0.0)
        self.prompt = torch.randint(1, dims["vocab_size"], (s.ppo_prompts, s.ppo_prompt))  # (B, P)
        self.gamma, self.lam, self.clip, self.clip_value, self.vf_coef = 1.0, 0.95, 0.2, 0.2, 0.1
        self.runs = self.steps = 0
        self.shape = None

    def outputs(self, model, tokens, value_head=None, with_entropy=False):
        """Per-response-token log-prob, entropy and value (B, N) from one forward over prompt + response."""
        import torch

        p, n = self.s.ppo_prompt, self.s.ppo_new
        hidden = model.transformer(input_ids=tokens).last_hidden_state[:, p - 1 : p - 1 + n]  # (B, N, D)
        logits = model.lm_head(hidden).float()  # (B, N, V), temperature 1
        logp_all = torch.log_softmax(logits, dim=-1)
        logp = logp_all.gather(-1, tokens[:, p:, None])[..., 0]  # (B, N)
        entropy = -(logp_all.exp() * logp_all).sum(-1) if with_entropy else None
        values = value_head(hidden)[..., 0] if value_head is not None else None
        return logp, entropy, values

    def run(self) -> None:
        import torch

        s = self.s
        with torch.inference_mode():
            response, _ = torch_sample(self.policy, self.prompt, s.ppo_new)  # (B, N)
        tokens = torch.cat([self.prompt, response], dim=1)  # (B, P+N)
        with torch.no_grad():
            old_logp, _, old_values = self.outputs(self.policy, tokens, self.value_head)
            ref_logp, _, _ = self.outputs(self.ref, tokens)
            # Reward-model score at the last token, minus the missing-stop penalty (no response has a stop).
            score = self.rm_head(self.rm(input_ids=tokens).last_hidden_state[:, -1])[:, 0] - 1.0  # (B,)
            kl = old_logp - ref_logp  # (B, N)
            rewards = -s.ppo_kl_coef * kl
            rewards[:, -1] += score
            advantages = torch.zeros_like(rewards)
            next_value = next_adv = torch.zeros(s.ppo_prompts)
            for t in reversed(range(s.ppo_new)):
                delta = rewards[:, t] + self.gamma * next_value - old_values[:, t]
                next_adv = delta + self.gamma * self.lam * next_adv
                next_value = old_values[:, t]
                advantages[:, t] = next_adv
            returns = advantages + old_values
            advantages = (advantages - advantages.mean()) * torch.rsqrt(advantages.var(correction=0) + 1e-8)
        for _ in range(s.ppo_epochs):
            for idx in torch.randperm(s.ppo_prompts).view(-1, s.ppo_minibatch):
                logp, entropy, values = self.outputs(self.policy, tokens[idx], self.value_head, True)
                logratio = logp - old_logp[idx]
                ratio = logratio.exp()
                adv = advantages[idx]
                pg_loss = torch.max(-adv * ratio, -adv * ratio.clamp(1 - self.clip, 1 + self.clip)).mean()
                v_old, ret = old_values[idx], returns[idx]
                v_clipped = v_old + (values - v_old).clamp(-self.clip_value, self.clip_value)
                vf_loss = 0.5 * torch.max((values - ret).square(), (v_clipped - ret).square()).mean()
                loss = pg_loss + self.vf_coef * vf_loss
                loss.backward()
                self.opt.step()
                self.opt.zero_grad(set_to_none=True)
                self.steps += 1
                with torch.no_grad():  # some of the statistics the oversight side logs
                    stats = [entropy.mean(), ((ratio - 1) - logratio).mean(), (ratio - 1).abs().gt(self.clip)]
                    self.stats = [float(x.float().mean()) for x in (*stats, kl.sum(1))]
        self.runs += 1
        self.shape = list(response.shape)

    def compiled(self) -> int:
        return 0

    def work(self) -> dict:
        return {
            "prompt": list(self.prompt.shape),
            "response": self.shape,
            "optimizer_steps": self.steps / self.runs,
            "minibatch": self.s.ppo_minibatch,
        }


def w3_ppo(model: str, s: Shapes, reps: int, warmup: int) -> None:
    dims = MODELS[model]
    flop = ppo_flop(dims, s)
    specs = [(OversightPPO, dims, s), (TorchPPO, dims, s)]
    compare(
        "W3_ppo_iteration",
        model,
        specs,
        reps,
        warmup,
        "seconds_per_iteration",
        None,
        flop=lambda impl: flop,
    )


# --- W4: SFT step --------------------------------------------------------------------------------------------


class OversightSFT:
    """W4 with oversight: one jitted SFT step (forward, backward, AdamW) on batch × length tokens."""

    name = "oversight"

    def __init__(self, dims: dict, batch: int, length: int):
        import jax
        import numpy as np

        from oversight.parallel import shard_batch
        from oversight.training.loop import TrainConfig, init_train_state, make_optimizer, make_train_step
        from oversight.training.sft import sft_loss

        self.cfg = oversight_config(dims, max_seq_len=length)
        mesh, rules = oversight_mesh()
        tx = make_optimizer(TrainConfig(grad_clip=0.0, weight_decay=0.01))
        graphdef, self.state, shardings = init_train_state(self.cfg, tx, 0, mesh, rules)
        self.step = make_train_step(graphdef, sft_loss, shardings, mesh, rules)
        rng = np.random.default_rng(0)
        ones = np.ones((batch, length), np.int32)
        tokens = rng.integers(0, self.cfg.vocab_size, (batch, length)).astype(np.int32)
        self.batch = shard_batch({"tokens": tokens, "mask": ones, "loss_mask": ones}, mesh, rules)
        self.runs, self.steps0 = 0, optimizer_steps(self.state)
        self._jax = jax

    def run(self) -> None:
        self.state, metrics = self.step(self.state, self.batch)
        self._jax.block_until_ready(metrics)
        self.runs += 1

    def compiled(self) -> int:
        return self.step._cache_size()

    def num_params(self) -> int:
        return self.cfg.num_params()

    def work(self) -> dict:
        return {
            "batch_x_tokens": list(self.batch["tokens"].shape),
            "optimizer_steps": (optimizer_steps(self.state) - self.steps0) / self.runs,
        }


class TorchSFT:
    """W4 with the PyTorch stack: transformers GPT-2, fused AdamW, the same tokens."""

    name = "pytorch"

    def __init__(self, dims: dict, batch: int, length: int):
        import torch
        from transformers import GPT2LMHeadModel

        torch.manual_seed(0)
        self.model = GPT2LMHeadModel(torch_gpt2_config(dims, length)).train()
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=3e-4, weight_decay=0.01, fused=True)
        self.tokens = torch.randint(0, dims["vocab_size"], (batch, length))
        self._params = sum(p.numel() for p in self.model.parameters())
        self.runs = self.steps = 0

    def run(self) -> None:
        loss = self.model(input_ids=self.tokens, labels=self.tokens).loss
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        self.runs, self.steps = self.runs + 1, self.steps + 1

    def compiled(self) -> int:
        return 0

    def num_params(self) -> int:
        return self._params

    def work(self) -> dict:
        return {"batch_x_tokens": list(self.tokens.shape), "optimizer_steps": self.steps / self.runs}


def w4_sft(model: str, s: Shapes, reps: int, warmup: int) -> None:
    dims = MODELS[model]
    batch, length = s.sft_batch, s.sft_len
    specs = [(OversightSFT, dims, batch, length), (TorchSFT, dims, batch, length)]
    compare(
        "W4_sft_step",
        model,
        specs,
        reps,
        warmup,
        "tokens_per_s",
        batch * length,
        flop=lambda impl: 6 * impl.num_params() * batch * length,
        params=lambda impl, sec: impl.num_params(),
    )


RUNNERS = {"W1": w1_reward_model, "W2": w2_sampling, "W3": w3_ppo, "W4": w4_sft}


def parse_workloads(text: str) -> list[str]:
    chosen = [w.strip().upper() for w in text.split(",") if w.strip()]
    unknown = [w for w in chosen if w not in WORKLOADS]
    if unknown or not chosen:
        raise argparse.ArgumentTypeError(f"unknown workload(s) {unknown or text!r}; choose from {WORKLOADS}")
    return [w for w in WORKLOADS if w in chosen]


def cpu_description() -> str:
    """The CPU's model name, family/model and widest vector extension, from /proc/cpuinfo (Linux)."""
    try:
        with open("/proc/cpuinfo") as f:
            info = dict(line.split(":", 1) for line in f.read().split("\n\n")[0].splitlines() if ":" in line)
    except OSError:
        return platform.processor() or "unknown"
    info = {k.strip(): v.strip() for k, v in info.items()}
    flags = info.get("flags", "").split()
    vector = next((isa for isa in ("avx512f", "avx2", "avx") if isa in flags), "none")
    return f"{info.get('model name', '?')} (family {info.get('cpu family', '?')}, model {info.get('model', '?')}, {vector})"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", nargs="+", default=["tiny", "small"], choices=sorted(MODELS))
    parser.add_argument(
        "--workloads", type=parse_workloads, default=list(WORKLOADS), help="comma-separated, e.g. W1,W3"
    )
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
    models, reps, warmup, shapes = args.models, args.reps, args.warmup, Shapes()
    if args.smoke:
        models, reps, warmup, shapes = ["smoke"], 1, 1, SMOKE_SHAPES
    peak = matmul_peak(max(reps, 5))
    emit(
        {
            "machine": platform.processor() or platform.machine(),
            # The same machine kind has been seen on different CPUs (figures differ ~3x): name it in every run.
            "cpu": cpu_description(),
            "cpus": os.cpu_count(),
            "malloc": {k: os.environ.get(k) for k in MALLOC_ENV},
            "matmul_gflops": peak,
            "workloads": args.workloads,
            # Other processes' load makes PyTorch's OpenMP barriers wait for descheduled threads: on a loaded
            # 2-core machine its many small ops (decode loops) slow down ~10x, so quote figures only if ~0.
            "loadavg": os.getloadavg(),
            "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
    )
    for workload in args.workloads:
        for model in models:
            RUNNERS[workload](model, shapes, reps, warmup)
    emit({"loadavg_at_end": os.getloadavg()})


if __name__ == "__main__":
    main()
