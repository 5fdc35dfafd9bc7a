"""Supervised fine-tuning on a built-in task, scored by the task's gold checker.

    oversight experiment=sft                 # tiny model, arithmetic chains, about 2 minutes on 2 CPU cores

Trains next-token prediction on (prompt, reference solution) pairs, evaluates held-out loss and the gold
accuracy of greedy samples during training, and writes `results.jsonl` (gold accuracy with a Wilson 95%
interval, held-out loss). The SFT policy is the starting point of RLHF and of every oversight experiment.
"""

from __future__ import annotations

from dataclasses import dataclass

from oversight.pipeline import RunContext, sft_stage, tokenize_problems
from oversight.registry import Experiment
from oversight.settings import setting
from oversight.stats import proportion_row


@dataclass
class SFTOptions:
    # Held-out prompts answered greedily and scored by the gold checker at each evaluation.
    eval_samples: int = setting(64, ge=1)
    # Generation budget per answer.
    max_new_tokens: int = setting(96, ge=1)


def run(ctx: RunContext) -> None:
    opts, tok = ctx.options, ctx.tokenizer
    # Data: a training split and a held-out split with no prompt seen in training.
    train_problems, eval_problems = ctx.splits()
    sft = sft_stage(
        ctx,
        ctx.model_config(),
        tokenize_problems(train_problems, tok),
        tokenize_problems(eval_problems, tok),
        eval_problems[: opts.eval_samples],
        max_new_tokens=opts.max_new_tokens,
        metric_prefix="eval/",
        section="train",
    )
    correct, n = sft.gold_accuracy()
    loss = sft.eval_loss()
    ctx.results.add(
        proportion_row("sft/gold_accuracy", correct, n),
        {"metric": "sft/eval_loss", "value": loss, "ci_low": None, "ci_high": None, "n": len(eval_problems)},
    )
    ctx.results.write(ctx.tracker, ("sft",))
    print(
        f"gold accuracy {correct}/{n} = {correct / n:.3f}   held-out loss {loss:.4f}   run folder {ctx.run_dir}"
    )


EXPERIMENT = Experiment(
    name="sft",
    description="Supervised fine-tuning on a built-in task; gold accuracy of greedy answers.",
    options=SFTOptions,
    run=run,
)
