"""Supervised fine-tuning on a built-in task, scored by the task's gold checker.

    oversight experiment=sft                 # tiny model, arithmetic chains, about 2 minutes on 2 CPU cores

Trains next-token prediction on (prompt, reference solution) pairs, evaluates held-out loss and the gold
accuracy of greedy samples during training, and writes `results.jsonl` (gold accuracy with a Wilson 95%
interval, held-out loss). The SFT policy is the starting point of RLHF and of every oversight experiment.
"""

from __future__ import annotations

from dataclasses import dataclass

from experiments.common import task_splits, tokenize_problems, train_sft
from oversight.data.tokenizer import load_tokenizer
from oversight.models import build_model_config
from oversight.registry import Experiment, RunContext
from oversight.stats import proportion_row
from oversight.tasks import get_task


@dataclass
class SFTOptions:
    # Held-out prompts answered greedily and scored by the gold checker at each evaluation.
    eval_samples: int = 64
    # Generation budget per answer.
    max_new_tokens: int = 96


def run(ctx: RunContext) -> None:
    cfg, opts = ctx.cfg, ctx.options
    tokenizer = load_tokenizer(cfg.tokenizer)
    model_cfg = build_model_config(cfg.model, tokenizer)

    # Data: a training split and a held-out split with no prompt seen in training.
    task = get_task(cfg.task.name, **cfg.task.options)
    train_problems, eval_problems = task_splits(task, cfg)
    sft = train_sft(
        train_cfg=cfg.train,
        model_cfg=model_cfg,
        seed=cfg.seed,
        mesh=ctx.mesh,
        rules=cfg.mesh.rules,
        tokenizer=tokenizer,
        task=task,
        train_examples=tokenize_problems(train_problems, tokenizer),
        eval_examples=tokenize_problems(eval_problems, tokenizer),
        eval_problems=eval_problems,
        checkpoint_dir=ctx.run_dir / "checkpoints",
        tracker=ctx.tracker,
        eval_samples=opts.eval_samples,
        max_new_tokens=opts.max_new_tokens,
    )

    correct, n = sft.gold_accuracy(sft.state)
    loss = sft.eval_loss(sft.state)
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
