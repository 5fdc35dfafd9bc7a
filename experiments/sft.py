"""Supervised fine-tuning on a built-in task, scored by the task's gold checker.

    oversight experiment=sft                 # tiny model, arithmetic chains, about 2 minutes on 2 CPU cores

Trains next-token prediction on (prompt, reference solution) pairs, evaluates held-out loss and the gold
accuracy of greedy samples during training, and writes `results.jsonl` (gold accuracy with a Wilson 95%
interval, held-out loss). The SFT policy is the starting point of RLHF and of every oversight experiment.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import numpy as np
from flax import nnx

from oversight.data.tokenizer import load_tokenizer
from oversight.models import build_model_config
from oversight.parallel import shard_batch
from oversight.registry import Experiment, RunContext
from oversight.sampling import Sampler, SamplingConfig
from oversight.stats import proportion_row
from oversight.tasks import get_task
from oversight.training.checkpoint import Checkpointer
from oversight.training.loop import init_train_state, make_optimizer, make_train_step, train_loop
from oversight.training.sft import epoch_batches, pack_examples, sft_loss


@dataclass
class SFTOptions:
    # Held-out prompts answered greedily and scored by the gold checker at each evaluation.
    eval_samples: int = 64
    # Generation budget per answer.
    max_new_tokens: int = 96


def tokenize_problems(problems, tokenizer) -> tuple[list[list[int]], list[list[int]]]:
    prompts = [[tokenizer.bos_id, *tokenizer.encode(p.prompt)] for p in problems]
    responses = [[*tokenizer.encode(p.solution), tokenizer.eos_id] for p in problems]
    return prompts, responses


def run(ctx: RunContext) -> None:
    cfg, opts = ctx.cfg, ctx.options
    tokenizer = load_tokenizer(cfg.tokenizer)
    model_cfg = build_model_config(cfg.model, tokenizer)
    rules = cfg.mesh.rules

    # Data: a training split and a held-out split with no prompt seen in training.
    task = get_task(cfg.task.name, **cfg.task.options)
    train_problems = task.sample(cfg.task.num_train, cfg.task.difficulty, seed=cfg.seed)
    seen = {p.prompt for p in train_problems}
    eval_problems = [
        p
        for p in task.sample(cfg.task.num_eval, cfg.task.difficulty, seed=cfg.seed + 1_000_003)
        if p.prompt not in seen
    ]
    train_p, train_r = tokenize_problems(train_problems, tokenizer)
    eval_p, eval_r = tokenize_problems(eval_problems, tokenizer)
    longest = max(len(p) + len(r) for p, r in zip(train_p + eval_p, train_r + eval_r, strict=True))
    length = min(model_cfg.max_seq_len, -(-longest // 16) * 16)  # round up to a multiple of 16
    train_data = pack_examples(train_p, train_r, length, tokenizer.pad_id)
    eval_data = pack_examples(eval_p, eval_r, length, tokenizer.pad_id)

    # Model and optimizer, built directly in their shardings.
    tx = make_optimizer(cfg.train)

    graphdef, state, shardings = init_train_state(model_cfg, tx, cfg.seed, ctx.mesh, rules)
    step_fn = make_train_step(graphdef, sft_loss, shardings, ctx.mesh, rules)

    @jax.jit
    def eval_loss(state, batch):
        model, _ = nnx.merge(graphdef, state)
        return sft_loss(model, batch)[0]

    sampler = Sampler(
        nnx.merge(graphdef, state)[0],
        SamplingConfig(max_new_tokens=opts.max_new_tokens, temperature=0.0),
        stop_tokens=(tokenizer.eos_id,),
        pad_id=tokenizer.pad_id,
    )
    scored = eval_problems[: opts.eval_samples]

    def gold_accuracy(state) -> tuple[int, int]:
        sampler.update(nnx.merge(graphdef, state)[0])
        out = sampler.sample(eval_p[: len(scored)], jax.random.key(0))
        tokens, mask = np.asarray(out.tokens), np.asarray(out.mask)
        correct = 0
        for problem, toks, m in zip(scored, tokens, mask, strict=True):
            text = tokenizer.decode(toks[m.astype(bool)])
            correct += bool(task.check(problem, text).correct)
        return correct, len(scored)

    def evaluate(state, step: int) -> dict[str, float]:
        loss = float(eval_loss(state, shard_batch(eval_data, ctx.mesh, rules)))
        correct, n = gold_accuracy(state)
        return {"eval/loss": loss, "eval/gold_accuracy": correct / n}

    checkpointer = Checkpointer(ctx.run_dir / "checkpoints", keep=cfg.train.keep_checkpoints)
    state = train_loop(
        state=state,
        step_fn=step_fn,
        batch_fn=epoch_batches(train_data, cfg.train.batch_size, cfg.seed),
        cfg=cfg.train,
        tracker=ctx.tracker,
        checkpointer=checkpointer,
        mesh=ctx.mesh,
        rules=rules,
        eval_fn=evaluate,
        desc="sft",
    )
    checkpointer.close()

    correct, n = gold_accuracy(state)
    loss = float(eval_loss(state, shard_batch(eval_data, ctx.mesh, rules)))
    common = {"task": cfg.task.name, "difficulty": cfg.task.difficulty}
    rows = [
        proportion_row("sft/gold_accuracy", correct, n, **common),
        {
            "metric": "sft/eval_loss",
            "value": loss,
            "ci_low": None,
            "ci_high": None,
            "n": len(eval_problems),
            **common,
        },
    ]
    ctx.tracker.table("results", rows)
    ctx.tracker.summary({"sft/gold_accuracy": correct / n, "sft/eval_loss": loss})
    print(
        f"gold accuracy {correct}/{n} = {correct / n:.3f}   held-out loss {loss:.4f}   run folder {ctx.run_dir}"
    )


EXPERIMENT = Experiment(
    name="sft",
    description="Supervised fine-tuning on a built-in task; gold accuracy of greedy answers.",
    options=SFTOptions,
    run=run,
)
