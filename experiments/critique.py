"""The critique model: one transformer trained jointly on the five tasks of Saunders et al. (2022).

G, D and C only compare when they come from the same weights, so one language model learns every task,
each told apart by the text that follows the response (all targets are trained by next-token loss):

    answer        <prompt>                                        -> <solution><eos>
    discriminate  <prompt><response>\\nflawed?                     -> y | n
    critique      <prompt><response>\\ncritique:                   -> <unit> <i>: <correction> | no flaw
    helpful       <prompt><response>\\ncritique: <c>\\nhelpful?      -> y | n
    refine        <prompt><response>\\ncritique: <c>\\nrefined:      -> <solution>

Responses are the task's reference solutions and copies of them with one injected flaw (half each); the
critique targets are gold critiques of the injected flaws ("no flaw" on clean responses); helpfulness is
trained on gold critiques and on gold-invalid ones (a real location with a wrong correction, a clean unit,
"no flaw" on a flawed response), labelled by `Task.check_critique`. Yes/no heads are read as
P(y) / (P(y) + P(n)) at the position after the question.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import NamedTuple

import jax
import numpy as np
from flax import nnx

from oversight.models import ModelConfig
from oversight.models.transformer import positions_from_mask
from oversight.pipeline import RunContext, decode_responses, sft_stage
from oversight.sampling import Sampler, SamplingConfig
from oversight.sampling.generate import left_pad
from oversight.tasks.base import Critique, LabelledResponse, Problem, Task
from oversight.training.batched import map_batches

HEADS = ("answer", "discriminate", "critique", "helpful", "refine")

FLAWED_Q = "\nflawed? "
CRITIQUE_Q = "\ncritique: "
HELPFUL_Q = "\nhelpful? "
REFINE_Q = "\nrefined: "
YES, NO = "y", "n"


def discriminate_context(problem: Problem, response: str) -> str:
    return problem.prompt + response + FLAWED_Q


def critique_context(problem: Problem, response: str) -> str:
    return problem.prompt + response + CRITIQUE_Q


def helpful_context(problem: Problem, response: str, critique: str) -> str:
    return critique_context(problem, response) + critique + HELPFUL_Q


def refine_context(problem: Problem, response: str, critique: str) -> str:
    return critique_context(problem, response) + critique + REFINE_Q


def gold_critique_text(task: Task, item: LabelledResponse) -> str:
    """What the critique head is cloned on: the injected flaw's pointer + correction, or "no flaw"."""
    return task.render_critique(item.flaw.critique() if item.flaw else Critique(None))


def invalid_critique(task: Task, item: LabelledResponse, rng: random.Random) -> str:
    """A critique gold rejects, of the kinds a weak critic writes: the right place with a wrong correction, a
    unit that is fine, or "no flaw" on a flawed response."""
    n_units = max(1, len(task.unit_checks(item.problem, item.response)))
    choices = ["clean_unit"]
    if item.flaw is not None:
        choices += ["wrong_correction", "no_flaw"]
    kind = rng.choice(choices)
    if kind == "no_flaw":
        return task.render_critique(Critique(None))
    if kind == "wrong_correction":
        return task.render_critique(Critique(item.flaw.location, item.flaw.flawed))
    # a unit other than the flaw, "corrected" to what another injected flaw would put there
    _, other = task.inject_flaw(item.problem, seed=rng.randrange(1 << 30))
    location = other.location if (item.flaw is None or other.location != item.flaw.location) else None
    if location is None:
        location = rng.choice([u for u in range(n_units) if u != item.flaw.location] or [n_units])
    return task.render_critique(Critique(location, other.flawed))


def training_examples(
    task: Task, problems: list[Problem], seed: int, heads: tuple[str, ...] = HEADS
) -> list[tuple[str, str]]:
    """(context, target) texts of every head for `problems`: per problem one answer example and, on a
    response that is flawed for half of the problems, one example of each other head."""
    unknown = set(heads) - set(HEADS)
    if unknown:
        raise ValueError(f"unknown critique-model heads {sorted(unknown)}; known: {list(HEADS)}")
    rng = random.Random(f"critique-examples/{task.name}/{seed}")
    examples: list[tuple[str, str]] = []
    for item in task.labelled_responses(problems, seed=seed):
        p, r = item.problem, item.response
        gold = gold_critique_text(task, item)
        if "answer" in heads:
            examples.append((p.prompt, p.solution))
        if "discriminate" in heads:
            examples.append((discriminate_context(p, r), YES if item.flaw else NO))
        if "critique" in heads:
            examples.append((critique_context(p, r), gold))
        if "helpful" in heads:
            # balanced: the gold critique half the time, a gold-invalid one otherwise
            critique = gold if rng.random() < 0.5 else invalid_critique(task, item, rng)
            valid = task.check_critique(p, r, critique).valid
            examples.append((helpful_context(p, r, critique), YES if valid else NO))
        if "refine" in heads and item.flaw is not None:
            examples.append((refine_context(p, r, gold), p.solution))
    return examples


def tokenize_examples(examples: list[tuple[str, str]], tokenizer) -> tuple[list[list[int]], list[list[int]]]:
    """The context as a prompt (`prompt_ids`), target + EOS (as `tokenize_problems` does for plain SFT)."""
    contexts = [tokenizer.prompt_ids(c) for c, _ in examples]
    targets = [[*tokenizer.encode(t), tokenizer.eos_id] for _, t in examples]
    return contexts, targets


# rows per compiled call of the yes/no read-out and the samplers: one program per (rows, bucketed length)
_CHUNK = 64


@dataclass
class CritiqueModel:
    """Inference with every head of one trained model (greedy or sampled text, yes/no probabilities)."""

    model: nnx.Module
    tokenizer: object
    # generation budget of answers and refinements (critiques and yes/no answers are short)
    max_new_tokens: int
    critique_tokens: int = 32

    def __post_init__(self) -> None:
        self._samplers: dict[tuple[int, float], Sampler] = {}
        self._yes, self._no = self.tokenizer.encode(YES)[0], self.tokenizer.encode(NO)[0]
        graphdef, state = nnx.split(self.model)
        self._state = state
        yes, no = self._yes, self._no

        @jax.jit
        def yes_prob(state, tokens, mask):  # (B, T) left-padded -> (B,)
            model = nnx.merge(graphdef, state)
            hidden, _ = model(tokens, positions_from_mask(mask), mask)
            logits = model.next_token_logits(hidden[:, -1])  # (B, V)
            return jax.nn.sigmoid(logits[:, yes] - logits[:, no])

        self._yes_prob = yes_prob

    def _encode(self, texts: list[str]) -> list[list[int]]:
        return [self.tokenizer.prompt_ids(t) for t in texts]

    def yes_probability(self, contexts: list[str]) -> np.ndarray:
        """P(y) / (P(y) + P(n)) after each context (a question ending in "? "), shape (N,)."""
        ids = self._encode(contexts)
        length = 16 * -(-max(len(i) for i in ids) // 16)
        tokens, mask = left_pad(ids, length, self.tokenizer.pad_id)
        data = {"tokens": tokens, "mask": mask}
        return map_batches(lambda b: self._yes_prob(self._state, b["tokens"], b["mask"]), data, _CHUNK)

    def generate(
        self, contexts: list[str], key: jax.Array, temperature: float, max_new_tokens: int
    ) -> list[str]:
        """Continuations of `contexts` up to the stop token (greedy at temperature 0)."""
        sampler = self._samplers.get((max_new_tokens, temperature))
        if sampler is None:
            sampler = Sampler(
                self.model,
                SamplingConfig(max_new_tokens=max_new_tokens, temperature=temperature),
                stop_tokens=(self.tokenizer.eos_id,),
                pad_id=self.tokenizer.pad_id,
                batch_buckets=(_CHUNK,),
            )
            self._samplers[(max_new_tokens, temperature)] = sampler
        ids = self._encode(contexts)
        texts: list[str] = []
        for i, start in enumerate(range(0, len(ids), _CHUNK)):
            out = sampler.sample(ids[start : start + _CHUNK], jax.random.fold_in(key, i))
            texts += decode_responses(self.tokenizer, out.tokens, out.mask)
        return texts

    # --- the heads ------------------------------------------------------------------------------------

    def answers(self, problems: list[Problem], key: jax.Array, temperature: float = 1.0) -> list[str]:
        return self.generate([p.prompt for p in problems], key, temperature, self.max_new_tokens)

    def flaw_probability(self, problems: list[Problem], responses: list[str]) -> np.ndarray:
        """The discriminator: P(flawed) per response."""
        return self.yes_probability(
            [discriminate_context(p, r) for p, r in zip(problems, responses, strict=True)]
        )

    def critiques(
        self, problems: list[Problem], responses: list[str], key: jax.Array, temperature: float = 0.0
    ) -> list[str]:
        contexts = [critique_context(p, r) for p, r in zip(problems, responses, strict=True)]
        return self.generate(contexts, key, temperature, self.critique_tokens)

    def helpful_probability(
        self, problems: list[Problem], responses: list[str], critiques: list[str]
    ) -> np.ndarray:
        contexts = [helpful_context(p, r, c) for p, r, c in zip(problems, responses, critiques, strict=True)]
        return self.yes_probability(contexts)

    def refinements(
        self, problems: list[Problem], responses: list[str], critiques: list[str], key: jax.Array
    ) -> list[str]:
        contexts = [refine_context(p, r, c) for p, r, c in zip(problems, responses, critiques, strict=True)]
        return self.generate(contexts, key, 0.0, self.max_new_tokens)


class CritiqueRun(NamedTuple):
    """What the critique experiments start from: the task, its held-out problems, the trained model."""

    task: Task
    eval_problems: list[Problem]
    model_cfg: ModelConfig
    model: CritiqueModel


def train_critique_model(
    ctx: RunContext, max_new_tokens: int, held_out_needed: int, needed_by: str
) -> CritiqueRun:
    """The shared first stage of `gdc_gap` and `critique_assist`: the task's splits (at least
    `held_out_needed` held-out problems, else an error naming the options in `needed_by`), then the joint model
    trained on every head by the shared SFT stage (or restored from the run folder). Held-out loss is on the
    same mixture built from the held-out problems; gold accuracy is of greedy answers."""
    tokenizer, task = ctx.tokenizer, ctx.task
    model_cfg = ctx.model_config()
    train_problems, eval_problems = ctx.splits()
    if len(eval_problems) < held_out_needed:
        raise ValueError(
            f"{needed_by} need {held_out_needed} held-out problems but task.num_eval gives "
            f"{len(eval_problems)} (after removing prompts seen in training); raise task.num_eval"
        )
    train = training_examples(task, train_problems, ctx.seed("critique/train_examples"))
    held_out = training_examples(task, eval_problems, ctx.seed("critique/eval_examples"))
    stage = sft_stage(
        ctx,
        model_cfg,
        tokenize_examples(train, tokenizer),
        tokenize_examples(held_out, tokenizer),
        eval_problems[:64],
        max_new_tokens=max_new_tokens,
        name="critique",
        metric_prefix="eval/",
        section="train",
    )
    return CritiqueRun(
        task, eval_problems, model_cfg, CritiqueModel(stage.model(), tokenizer, max_new_tokens)
    )
