"""Pieces the experiments share: task splits, tokenising problems, gold scores, the SFT stage.

The SFT stage is what `experiments/sft.py` runs on its own and what RLHF (and every oversight experiment that
starts from a fine-tuned policy) runs first, so it lives here once.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import jax
import numpy as np
import optax
from flax import nnx

from oversight.models import ModelConfig
from oversight.parallel import shard_batch, state_shardings
from oversight.sampling import Sampler, SamplingConfig
from oversight.tasks.base import Problem, Task
from oversight.training.checkpoint import Checkpointer
from oversight.training.loop import TrainConfig, init_train_state, make_optimizer, make_train_step, train_loop
from oversight.training.sft import epoch_batches, pack_examples, sft_loss


def task_splits(task: Task, cfg) -> tuple[list[Problem], list[Problem]]:
    """(train, held-out) problems of `cfg.task`; no held-out prompt was seen in training."""
    train = task.sample(cfg.task.num_train, cfg.task.difficulty, seed=cfg.seed)
    seen = {p.prompt for p in train}
    held_out = [
        p
        for p in task.sample(cfg.task.num_eval, cfg.task.difficulty, seed=cfg.seed + 1_000_003)
        if p.prompt not in seen
    ]
    return train, held_out


def tokenize_problems(problems, tokenizer) -> tuple[list[list[int]], list[list[int]]]:
    """(prompts, responses) token lists: BOS + prompt, and the reference solution + EOS."""
    prompts = [[tokenizer.bos_id, *tokenizer.encode(p.prompt)] for p in problems]
    responses = [[*tokenizer.encode(p.solution), tokenizer.eos_id] for p in problems]
    return prompts, responses


def round_up(n: int, multiple: int = 16) -> int:
    return -(-n // multiple) * multiple


def gold_reward(task: Task, problem: Problem, text: str) -> float:
    """Graded gold reward: 1 for a correct answer, else the fraction of units passing scaled below 1 (as
    `GoldOverseer` scores), so an answer with fewer wrong units earns more and none ties a correct one."""
    ok = task.unit_checks(problem, text)
    return 1.0 if ok and all(ok) else sum(ok) / (len(ok) + 1)


def decode_responses(tokenizer, tokens: np.ndarray, mask: np.ndarray) -> list[str]:
    """Texts of sampled responses (B, N) up to and including their stop token (special tokens dropped)."""
    tokens, mask = np.asarray(tokens), np.asarray(mask).astype(bool)
    return [tokenizer.decode(t[m]) for t, m in zip(tokens, mask, strict=True)]


class RenamedTracker:
    """Passes every call through, renaming metric prefixes (e.g. the shared loop's `train/` to `rm/`), so the
    stages of one run land in separate dashboard sections."""

    def __init__(self, tracker, prefixes: dict[str, str]):
        self.tracker, self.prefixes = tracker, prefixes

    def _rename(self, key: str) -> str:
        for old, new in self.prefixes.items():
            if key.startswith(old):
                return new + key[len(old) :]
        return key

    def log(self, metrics: dict[str, float], step: int) -> None:
        self.tracker.log({self._rename(k): v for k, v in metrics.items()}, step=step)

    def summary(self, values: dict[str, Any]) -> None:
        self.tracker.summary(values)

    def table(self, name: str, rows: list[dict[str, Any]]) -> None:
        self.tracker.table(name, rows)

    def finish(self) -> None:  # the owner of the wrapped tracker finishes it
        pass


def train_state_from_model(model: nnx.Module, tx: optax.GradientTransformation, mesh, rules):
    """(graphdef, state, shardings) of (model, fresh optimizer) starting from `model`'s current weights —
    how a later stage (reward model, PPO) starts from an earlier stage's parameters."""
    model_graphdef, model_state = nnx.split(model)

    def make(model_state):
        m = nnx.merge(model_graphdef, model_state)
        return m, nnx.Optimizer(m, tx, wrt=nnx.Param)

    graphdef, abstract = nnx.split(nnx.eval_shape(make, model_state))
    shardings = state_shardings(abstract, mesh, rules)
    state = jax.jit(lambda s: nnx.split(make(s))[1], out_shardings=shardings)(model_state)
    return graphdef, state, shardings


class SFTStage(NamedTuple):
    graphdef: Any
    state: Any
    # () -> (correct, n): gold accuracy of greedy answers on the first `eval_samples` held-out problems
    gold_accuracy: Callable[[Any], tuple[int, int]]
    # state -> held-out next-token loss
    eval_loss: Callable[[Any], float]

    def model(self) -> nnx.Module:
        return nnx.merge(self.graphdef, self.state)[0]


def train_sft(
    *,
    train_cfg: TrainConfig,
    model_cfg: ModelConfig,
    seed: int,
    mesh,
    rules,
    tokenizer,
    task: Task,
    train_examples: tuple[list[list[int]], list[list[int]]],
    eval_examples: tuple[list[list[int]], list[list[int]]],
    eval_problems: list[Problem],
    checkpoint_dir: Path,
    tracker,
    eval_samples: int,
    max_new_tokens: int,
    step_offset: int = 0,
    metric_prefix: str = "eval/",
    desc: str = "sft",
) -> SFTStage:
    """Next-token training on (context, target) token pairs (`tokenize_problems` gives the plain SFT ones:
    prompt and reference solution), with the loss on `eval_examples` and the gold accuracy of greedy answers
    to `eval_problems` at each evaluation. Resumes from (or, when finished, restores) `checkpoint_dir`."""
    train_p, train_r = train_examples
    eval_p, eval_r = eval_examples
    answer_prompts = tokenize_problems(eval_problems, tokenizer)[0]
    longest = max(len(p) + len(r) for p, r in zip(train_p + eval_p, train_r + eval_r, strict=True))
    length = min(model_cfg.max_seq_len, round_up(longest))
    train_data = pack_examples(train_p, train_r, length, tokenizer.pad_id)
    eval_data = pack_examples(eval_p, eval_r, length, tokenizer.pad_id)

    tx = make_optimizer(train_cfg)
    graphdef, state, shardings = init_train_state(model_cfg, tx, seed, mesh, rules)
    step_fn = make_train_step(graphdef, sft_loss, shardings, mesh, rules)

    @jax.jit
    def _eval_loss(state, batch):
        model, _ = nnx.merge(graphdef, state)
        return sft_loss(model, batch)[0]

    def eval_loss(state) -> float:
        return float(_eval_loss(state, shard_batch(eval_data, mesh, rules)))

    sampler = Sampler(
        nnx.merge(graphdef, state)[0],
        SamplingConfig(max_new_tokens=max_new_tokens, temperature=0.0),
        stop_tokens=(tokenizer.eos_id,),
        pad_id=tokenizer.pad_id,
    )
    scored = eval_problems[:eval_samples]

    def gold_accuracy(state) -> tuple[int, int]:
        sampler.update(nnx.merge(graphdef, state)[0])
        out = sampler.sample(answer_prompts[: len(scored)], jax.random.key(0))
        texts = decode_responses(tokenizer, out.tokens, out.mask)
        correct = sum(bool(task.check(p, t).correct) for p, t in zip(scored, texts, strict=True))
        return correct, len(scored)

    def evaluate(state, step: int) -> dict[str, float]:
        correct, n = gold_accuracy(state)
        return {f"{metric_prefix}loss": eval_loss(state), f"{metric_prefix}gold_accuracy": correct / n}

    checkpointer = Checkpointer(checkpoint_dir, keep=train_cfg.keep_checkpoints)
    state = train_loop(
        state=state,
        step_fn=step_fn,
        batch_fn=epoch_batches(train_data, train_cfg.batch_size, seed),
        cfg=train_cfg,
        tracker=tracker,
        checkpointer=checkpointer,
        mesh=mesh,
        rules=rules,
        eval_fn=evaluate,
        desc=desc,
        step_offset=step_offset,
    )
    checkpointer.close()
    return SFTStage(graphdef, state, gold_accuracy, eval_loss)
