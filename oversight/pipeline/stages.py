"""The stages experiments are built from: supervised fine-tuning, reward-model training, sampling and gold
scoring of responses. PPO is in `oversight.pipeline.ppo`.

Every trained stage runs the shared loop (`oversight.training.loop.train_loop`) under a name declared in the
run's step ledger, so it checkpoints to `checkpoints/<name>`, logs in its own dashboard section, resumes where
it was killed and is restored, not retrained, once finished.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from oversight.errors import ConfigError
from oversight.models import ModelConfig, trainable
from oversight.parallel import state_shardings
from oversight.pipeline.context import RunContext, Stage
from oversight.sampling import Sampler, SamplingConfig
from oversight.tasks.base import Problem, Task
from oversight.training.batched import batch_rows
from oversight.training.checkpoint import Checkpointer
from oversight.training.loop import (
    LossFn,
    TrainConfig,
    init_train_state,
    make_optimizer,
    make_train_step,
    train_loop,
)
from oversight.training.sft import epoch_batches, heldout_loss, pack_examples, response_nll, sft_loss


def round_up(n: int, multiple: int = 16) -> int:
    return -(-n // multiple) * multiple


def tokenize_problems(problems, tokenizer) -> tuple[list[list[int]], list[list[int]]]:
    """(prompts, responses) token lists: the prompt (`prompt_ids`: BOS + prompt, or the chat template's user turn),
    and the reference solution + EOS."""
    prompts = [tokenizer.prompt_ids(p.prompt) for p in problems]
    responses = [[*tokenizer.encode(p.solution), tokenizer.eos_id] for p in problems]
    return prompts, responses


def decode_responses(tokenizer, tokens: np.ndarray, mask: np.ndarray) -> list[str]:
    """Texts of sampled responses (B, N) up to and including their stop token (special tokens dropped)."""
    tokens, mask = np.asarray(tokens), np.asarray(mask).astype(bool)
    return [tokenizer.decode(t[m]) for t, m in zip(tokens, mask, strict=True)]


def gold_reward(task: Task, problem: Problem, text: str) -> float:
    """Graded gold reward: 1 for a correct answer, else the fraction of units passing scaled below 1 (as
    `GoldOverseer` scores), so an answer with fewer wrong units earns more and none ties a correct one."""
    ok = task.unit_checks(problem, text)
    return 1.0 if ok and all(ok) else sum(ok) / (len(ok) + 1)


def train_state_from_model(model: nnx.Module, tx: optax.GradientTransformation, mesh, rules):
    """(graphdef, state, shardings) of (model, fresh optimizer) starting from `model`'s current weights —
    how a later stage (reward model, PPO) starts from an earlier stage's parameters."""
    model_graphdef, model_state = nnx.split(model)

    def make(model_state):
        m = nnx.merge(model_graphdef, model_state)
        return m, nnx.Optimizer(m, tx, wrt=trainable(m))

    graphdef, abstract = nnx.split(nnx.eval_shape(make, model_state))
    shardings = state_shardings(abstract, mesh, rules)
    state = jax.jit(lambda s: nnx.split(make(s))[1], out_shardings=shardings)(model_state)
    return graphdef, state, shardings


class Trainer:
    """A model with its optimizer and its one jitted step: trains copies of one starting state, each in a
    stage of its own, without compiling the step again."""

    def __init__(self, graphdef, state, shardings, loss: LossFn, train_cfg: TrainConfig, ctx: RunContext):
        self.graphdef, self.init_state, self.train_cfg, self.ctx = graphdef, state, train_cfg, ctx
        self.step = make_train_step(graphdef, loss, shardings, ctx.mesh, ctx.rules, train_cfg.microbatches)

    @classmethod
    def from_model(cls, model: nnx.Module, loss: LossFn, train_cfg: TrainConfig, ctx: RunContext) -> Trainer:
        """Starting from `model`'s weights (a copy: the model is not changed)."""
        state = train_state_from_model(model, make_optimizer(train_cfg), ctx.mesh, ctx.rules)
        return cls(*state, loss, train_cfg, ctx)

    @classmethod
    def from_config(
        cls, model_cfg: ModelConfig, loss: LossFn, train_cfg: TrainConfig, ctx: RunContext, seed: int
    ) -> Trainer:
        """A fresh model (or `model_cfg.checkpoint`'s weights) initialised from `seed`."""
        tx = make_optimizer(train_cfg)
        return cls(*init_train_state(model_cfg, tx, seed, ctx.mesh, ctx.rules), loss, train_cfg, ctx)

    def restart_from(self, model: nnx.Module) -> None:
        """Start later stages from `model`'s current weights (same architecture) with a fresh optimizer."""
        self.init_state = train_state_from_model(
            model, make_optimizer(self.train_cfg), self.ctx.mesh, self.ctx.rules
        )[1]

    def fit(
        self,
        stage: Stage,
        data: dict[str, np.ndarray],
        seed: int,
        *,
        state=None,
        eval_fn: Callable[[Any, int], dict[str, float]] | None = None,
        desc: str | None = None,
        keep: int | None = None,
    ):
        """Train on `data` (batches drawn by `seed`) from `state` (default: the starting state, copied) in
        `stage`; resumes from, or once finished restores, the stage's checkpoints, and finishes the stage (its peak
        memory in the summary). Returns the final state."""
        cfg = self.train_cfg
        if stage.steps != cfg.steps:
            raise ValueError(f"stage {stage.name!r} has {stage.steps} steps, its training config {cfg.steps}")
        n = len(next(iter(data.values())))
        batch = min(cfg.batch_size, n)  # a data set smaller than one batch trains on all of it each step
        if batch % cfg.microbatches:
            raise ConfigError(
                f"stage {stage.name!r}: {n} training examples give batches of {batch}, which microbatches="
                f"{cfg.microbatches} does not divide; choose microbatches dividing {batch}"
            )
        start = jax.tree.map(jnp.copy, self.init_state) if state is None else state  # the step donates it
        checkpointer = Checkpointer(stage.checkpoint_dir, keep=keep or cfg.keep_checkpoints)
        state = train_loop(
            state=start,
            step_fn=self.step,
            batch_fn=epoch_batches(data, batch, seed),
            cfg=cfg,
            tracker=stage.tracker,
            checkpointer=checkpointer,
            mesh=self.ctx.mesh,
            rules=self.ctx.rules,
            eval_fn=eval_fn,
            desc=desc or stage.name,
            step_offset=stage.offset,
        )
        checkpointer.close()
        stage.finish()
        return state

    def model(self, state) -> nnx.Module:
        return nnx.merge(self.graphdef, state)[0]


class SFTPolicy:
    """A policy trained by next-token prediction, with its held-out loss and the gold accuracy of its greedy
    answers (what `sft_stage` returns)."""

    def __init__(self, trainer: Trainer, state, eval_data, scored: list[Problem], max_new_tokens: int):
        ctx = trainer.ctx
        self.trainer, self.state, self.scored = trainer, state, scored
        self._eval_data, self._ctx = eval_data, ctx
        self._prompts = tokenize_problems(scored, ctx.tokenizer)[0]
        self._sampler = Sampler(
            trainer.model(state),
            SamplingConfig(max_new_tokens=max_new_tokens, temperature=0.0),
            stop_tokens=(ctx.tokenizer.eos_id,),
            pad_id=ctx.tokenizer.pad_id,
        )
        graphdef = trainer.graphdef
        # Held-out rows per forward pass: the whole set at once would hold its (N, T, V) logits.
        n, length = eval_data["tokens"].shape
        self._eval_rows = min(batch_rows(trainer.model(state).config, length), n)

        @jax.jit
        def _eval_nll(state, batch):  # -> (B,), (B,)
            model, _ = nnx.merge(graphdef, state)
            return response_nll(model, batch)

        self._eval_nll = _eval_nll

    def model(self, state=None) -> nnx.Module:
        return self.trainer.model(self.state if state is None else state)

    def eval_loss(self, state=None) -> float:
        state = self.state if state is None else state
        ctx = self._ctx
        return heldout_loss(
            functools.partial(self._eval_nll, state),
            self._eval_data,
            self._eval_rows,
            mesh=ctx.mesh,
            rules=ctx.rules,
        )

    def gold_accuracy(self, state=None) -> tuple[int, int]:
        """(correct, n): greedy answers to the scored held-out problems that the task's gold checker accepts."""
        self._sampler.update(self.model(state))
        if not self.scored:
            return 0, 0
        out = self._sampler.sample(self._prompts, jax.random.key(0))
        texts = decode_responses(self._ctx.tokenizer, out.tokens, out.mask)
        task = self._ctx.task
        return sum(bool(task.check(p, t).correct) for p, t in zip(self.scored, texts, strict=True)), len(
            texts
        )


def sft_stage(
    ctx: RunContext,
    model_cfg: ModelConfig,
    train_examples: tuple[list[list[int]], list[list[int]]],
    eval_examples: tuple[list[list[int]], list[list[int]]],
    eval_problems: list[Problem],
    *,
    max_new_tokens: int,
    name: str = "sft",
    train_cfg: TrainConfig | None = None,
    metric_prefix: str = "sft/eval_",
    section: str | None = None,
) -> SFTPolicy:
    """Next-token training on (context, target) token pairs (`tokenize_problems` gives the plain SFT ones:
    prompt and reference solution), with the loss on `eval_examples` and the gold accuracy of greedy answers to
    `eval_problems` at each evaluation (`metric_prefix` + loss / gold_accuracy). `train_cfg` defaults to the
    run's `train` settings; the model is initialised from the stream `<name>/init`, batches from
    `<name>/batches`."""
    train_cfg = train_cfg or ctx.cfg.train
    tokenizer = ctx.tokenizer
    train_p, train_r = train_examples
    eval_p, eval_r = eval_examples
    longest = max(len(p) + len(r) for p, r in zip(train_p + eval_p, train_r + eval_r, strict=True))
    length = min(model_cfg.max_seq_len, round_up(longest))
    train_data = pack_examples(train_p, train_r, length, tokenizer.pad_id)
    eval_data = pack_examples(eval_p, eval_r, length, tokenizer.pad_id)

    trainer = Trainer.from_config(model_cfg, sft_loss, train_cfg, ctx, ctx.seed(f"{name}/init"))
    policy = SFTPolicy(trainer, trainer.init_state, eval_data, eval_problems, max_new_tokens)

    def evaluate(state, step: int) -> dict[str, float]:
        correct, n = policy.gold_accuracy(state)
        accuracy = {f"{metric_prefix}gold_accuracy": correct / n} if n else {}
        return {f"{metric_prefix}loss": policy.eval_loss(state), **accuracy}

    stage = ctx.stage(name, train_cfg.steps, prefix=section)
    policy.state = trainer.fit(stage, train_data, ctx.seed(f"{name}/batches"), eval_fn=evaluate)
    return policy


def sample_responses(
    sampler: Sampler, prompts: list[list[int]], key: jax.Array, tokenizer, per_prompt: int = 1, chunk: int = 0
) -> tuple[list[list[int]], np.ndarray, np.ndarray, list[str]]:
    """`per_prompt` samples of each prompt (prompt-major) in calls of `chunk` rows (0: one call), as (prompt
    tokens per row, response tokens (R, N), response mask (R, N), texts)."""
    rows = [p for p in prompts for _ in range(per_prompt)]
    chunk = chunk or len(rows)
    outs = [
        sampler.sample(rows[i : i + chunk], jax.random.fold_in(key, i)) for i in range(0, len(rows), chunk)
    ]
    tokens = np.concatenate([np.asarray(o.tokens) for o in outs])
    mask = np.concatenate([np.asarray(o.mask) for o in outs])
    return rows, tokens, mask, decode_responses(tokenizer, tokens, mask)
