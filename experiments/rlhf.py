"""RLHF end to end (the InstructGPT recipe) on a built-in task, scored by the task's gold checker throughout.

    oversight experiment=rlhf                  # see conf/experiment/rlhf.yaml for the time

Stages (each checkpointed under `checkpoints/<stage>/`, on one global step count, so a killed run resumes in
the stage it was in and a finished stage is restored instead of retrained):

1. `sft`: next-token training on reference solutions, on the training prompts not kept for RL
   (`rl_fraction`; InstructGPT's stages use disjoint prompt sets).
2. comparisons: K samples per RL prompt from the SFT policy, ranked by a capacity-limited simulated labeller
   (`labeller`); ties (the labeller found the same number of flaws) carry no preference.
3. `rm`: a copy of the SFT trunk with a `reward` head, trained on the K-way rankings (all pairs of a prompt are
   one batch element); with `reward_model.generative` its score adds its own log-likelihood of the response.
   Held-out accuracy on gold-ordered pairs of held-out rankings, next to the labeller's own agreement with gold
   on those pairs (the labeller is the reward model's ceiling).
4. normalisation: bias (and gain) so SFT samples score mean 0 (std 1), folded into the reward head.
5. best-of-N (N = 1..max_n) of SFT samples against the reward model: gold and proxy reward against
   KL = log N - (N-1)/N (the bound for distinct samples) and against the KL over each prompt's empirical
   distribution of its samples (`overopt/kl_empirical`: the SFT policy often repeats an answer).
6. `ppo` on the RL prompts (`oversight.pipeline.ppo`); every `ppo.eval_every` iterations: gold, proxy and KL of
   policy samples on held-out prompts, and the gold win rate of PPO answers over SFT answers.
7. with `rounds` > 1, InstructGPT's iteration: the current policy's samples ranked by the labeller, the reward
   model trained on all rankings so far (`rm_<round>`), PPO continued (`ppo_<round>`).

Results (`results.jsonl`, each with a 95% interval and n): `labeller/gold_agreement`, `rm/accuracy_gold`,
`rm/accuracy_labeller`, `sft/gold_reward`, `ppo/gold_reward`, `gold/win_rate`, and the over-optimisation
points `overopt/gold` and `overopt/proxy` (columns `method` = best_of_n | ppo, `kl`, `N` or `step`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import jax.numpy as jnp
import numpy as np
from flax import nnx

from oversight.overseers import HumanCapacity
from oversight.pipeline import (
    Comparisons,
    ComparisonsConfig,
    PPOTrainer,
    RewardModel,
    RewardModelConfig,
    RunContext,
    gold_reward,
    round_up,
    sample_responses,
    sft_stage,
    tokenize_problems,
)
from oversight.registry import Experiment
from oversight.sampling import Sampler, SamplingConfig
from oversight.settings import check_fields, setting
from oversight.stats import bootstrap_row, proportion_row
from oversight.training.best_of_n import best_of_n_kl, best_of_n_kl_empirical
from oversight.training.ppo import PPOConfig
from oversight.training.reward_model import fit_normalization


@dataclass
class BestOfNConfig:
    # Held-out prompts with `max_n` SFT samples each (32 could not place the peak of gold over N).
    prompts: int = setting(128, ge=1)
    # Largest N (a power of two); N = 1, 2, 4, ..., max_n.
    max_n: int = setting(64, ge=1)

    def __post_init__(self) -> None:
        if self.max_n & (self.max_n - 1):
            raise ValueError(f"best_of_n.max_n={self.max_n} must be a power of two")


@dataclass
class RLHFOptions:
    # Generation budget per response (rollouts, comparisons, evaluation).
    max_new_tokens: int = setting(48, ge=1)
    # Held-out prompts answered greedily for the SFT stage's gold accuracy.
    sft_eval_samples: int = setting(32, ge=1)
    # Share of the distinct training prompts kept out of SFT for the comparisons and PPO (0 = every stage uses
    # every prompt): a policy that has memorised a prompt's answer in SFT offers neither informative
    # comparisons nor room for PPO on it.
    rl_fraction: float = setting(0.5, ge=0, lt=1)
    # The simulated labeller who ranks the comparisons.
    labeller: HumanCapacity = field(default_factory=HumanCapacity)
    comparisons: ComparisonsConfig = field(default_factory=ComparisonsConfig)
    reward_model: RewardModelConfig = field(default_factory=RewardModelConfig)
    ppo: PPOConfig = field(default_factory=PPOConfig)
    # RM/PPO rounds (InstructGPT iterated): after round 1, each round ranks samples of the current policy on
    # the training comparison prompts, trains the reward model on all rankings so far, and runs PPO on.
    rounds: int = setting(1, ge=1)
    # Held-out prompts for PPO evaluation (win rate, gold, proxy, KL); at most task.num_eval.
    eval_prompts: int = setting(512, ge=1)
    best_of_n: BestOfNConfig = field(default_factory=BestOfNConfig)

    def __post_init__(self) -> None:
        check_fields(self, "experiment.")


def mean_row(metric: str, values, **extra) -> dict:
    """A results row for a mean (in float64) with its percentile-bootstrap 95% interval."""
    return bootstrap_row(metric, np.asarray(values, np.float64), np.mean, **extra)


def split_for_rl(problems: list, rl_fraction: float) -> tuple[list, list]:
    """(SFT problems, comparison and PPO problems): the last `rl_fraction` of the distinct prompts, in order of
    first appearance, go to the second list and no prompt is in both. With 0 both lists are `problems`."""
    if rl_fraction == 0:
        return problems, problems
    distinct = list(dict.fromkeys(p.prompt for p in problems))
    rl_prompts = set(distinct[len(distinct) - int(round(rl_fraction * len(distinct))) :])
    if not rl_prompts or len(rl_prompts) == len(distinct):
        raise ValueError(f"experiment.rl_fraction={rl_fraction} leaves no prompts for SFT or for RL")
    rl = [p for p in problems if p.prompt in rl_prompts]
    return [p for p in problems if p.prompt not in rl_prompts], list({p.prompt: p for p in rl}.values())


def run(ctx: RunContext) -> None:
    cfg, opts, tok, task, results = ctx.cfg, ctx.options, ctx.tokenizer, ctx.task, ctx.results
    # One architecture for every role: policy (+ value head), reference, reward model (reward head).
    heads = list(dict.fromkeys([*cfg.model.scalar_heads, "reward", "value"]))
    model_cfg = ctx.model_config(dataclasses.replace(cfg.model, scalar_heads=heads))
    train_problems, eval_problems = ctx.splits()
    sft_problems, rl_problems = split_for_rl(train_problems, opts.rl_fraction)

    # 1. SFT
    sft = sft_stage(
        ctx,
        model_cfg,
        tokenize_problems(sft_problems, tok),
        tokenize_problems(eval_problems, tok),
        eval_problems[: opts.sft_eval_samples],
        max_new_tokens=opts.max_new_tokens,
    )
    results.add(proportion_row("sft/gold_accuracy_greedy", *sft.gold_accuracy()))
    sft_model = sft.model()

    # Fixed shapes: every prompt is left-padded to one length, every response is max_new_tokens long.
    prompt_len = round_up(max(len(p) for p in tokenize_problems(train_problems + eval_problems, tok)[0]))
    if prompt_len + opts.max_new_tokens > model_cfg.max_seq_len:
        raise ValueError(
            f"prompts ({prompt_len}) + max_new_tokens exceed max_seq_len {model_cfg.max_seq_len}"
        )
    sampling = SamplingConfig(max_new_tokens=opts.max_new_tokens, temperature=opts.ppo.temperature)

    def sampler(model, batch: int) -> Sampler:
        return Sampler(
            model, sampling, (tok.eos_id,), tok.pad_id, batch_buckets=(batch,), prompt_buckets=(prompt_len,)
        )

    def sample(model_sampler, problems, stream: str, per_prompt: int = 1, chunk: int = 0):
        prompts = tokenize_problems(problems, tok)[0]
        return sample_responses(model_sampler, prompts, ctx.key(stream), tok, per_prompt, chunk)

    # 2. comparisons ranked by the simulated labeller; 3. the reward model on them; 4. its normalisation
    k = opts.comparisons.k
    chunk = 256 // k * k
    sft_sampler = sampler(sft_model, chunk)
    compare_problems = rl_problems[: opts.comparisons.prompts]
    norm_samples = sample(sft_sampler, compare_problems, "comparisons/samples", k, chunk)
    comparisons = Comparisons(
        ctx,
        opts.comparisons,
        opts.labeller,
        compare_problems,
        norm_samples[3],
        prompt_len + opts.max_new_tokens,
        opts.reward_model.generative,
    )
    reward_model = RewardModel(ctx, opts.reward_model, nnx.split(sft_model)[0], comparisons, prompt_len)
    reward_model.fit(sft_model, comparisons.train_data(), "rm")
    rm_params = reward_model.normalise(norm_samples)

    # 5. best-of-N of SFT samples against the reward model
    bon_problems = eval_problems[: opts.best_of_n.prompts]
    nmax = opts.best_of_n.max_n
    prompts, tokens, mask, texts = sample(sft_sampler, bon_problems, "best_of_n/samples", nmax, chunk)
    proxy = reward_model.score(rm_params, prompts, tokens, mask).reshape(len(bon_problems), nmax)
    repeated = [p for p in bon_problems for _ in range(nmax)]
    golds = np.asarray([gold_reward(task, p, t) for p, t in zip(repeated, texts, strict=True)])
    by_prompt = [texts[i * nmax : (i + 1) * nmax] for i in range(len(bon_problems))]
    for n in [2**i for i in range(int(np.log2(nmax)) + 1)]:
        # Disjoint groups of N samples per prompt: each group's best by proxy is one best-of-N draw.
        p, g = proxy.reshape(len(bon_problems), nmax // n, n), golds.reshape(len(bon_problems), nmax // n, n)
        pick = p.argmax(-1)[..., None]
        extra = {"method": "best_of_n", "N": n, "kl": float(best_of_n_kl(n)), "step": None}
        results.add(mean_row("overopt/gold", np.take_along_axis(g, pick, -1)[..., 0].mean(1), **extra))
        results.add(mean_row("overopt/proxy", np.take_along_axis(p, pick, -1)[..., 0].mean(1), **extra))
        # `kl` above is the bound for distinct samples; the SFT policy repeats itself, so also the KL of
        # best-of-N over each prompt's empirical distribution of its max_n samples.
        kl = [best_of_n_kl_empirical(t, s, n) for t, s in zip(by_prompt, proxy, strict=True)]
        results.add(mean_row("overopt/kl_empirical", kl, **extra))

    # 6. PPO, evaluated on held-out prompts against the SFT policy's answers
    gold_norm = None
    if opts.ppo.reward == "gold":  # the ceiling arm: gold normalised as the reward model is, on its samples
        norm_problems = [q for q in compare_problems for _ in range(k)]
        golds = [gold_reward(task, q, t) for q, t in zip(norm_problems, norm_samples[3], strict=True)]
        gold_norm = fit_normalization(jnp.asarray(golds, jnp.float32), scale=True)
        ctx.tracker.summary(
            {"ppo/gold_norm_gain": float(gold_norm.gain), "ppo/gold_norm_bias": float(gold_norm.bias)}
        )
    ppo = PPOTrainer(ctx, opts.ppo, sft_model, reward_model.model, prompt_len=prompt_len, sampler=sampler,
                     rounds=opts.rounds, rm_generative=opts.reward_model.generative,
                     gold_normalisation=gold_norm)  # fmt: skip
    eval_set = eval_problems[: opts.eval_prompts]
    eval_sampler = sampler(sft_model, len(eval_set))
    sft_gold = np.asarray(
        [
            gold_reward(task, p, t)
            for p, t in zip(eval_set, sample(eval_sampler, eval_set, "eval/sft")[3], strict=True)
        ]
    )
    results.add(mean_row("sft/gold_reward", sft_gold))
    results.add(proportion_row("sft/gold_accuracy", int((sft_gold == 1).sum()), len(eval_set)))

    def evaluate(state, iteration: int) -> dict:
        eval_sampler.update(ppo.policy(state))
        prompts, tokens, mask, texts = sample(eval_sampler, eval_set, "eval/ppo")
        scored = ppo.score(reward_model.params, prompts, tokens, mask, state)
        return policy_evaluation(task, tok, eval_set, texts, tokens, mask, scored, sft_gold, iteration)

    gold = lambda problems, texts: [gold_reward(task, p, t) for p, t in zip(problems, texts, strict=True)]  # noqa: E731
    ev = ppo.run_round(ctx.stage("ppo", opts.ppo.iterations), rm_params, rl_problems, evaluate, gold)
    # 7. further rounds: the current policy's samples ranked and added to the earlier rankings, the reward model
    # trained on from where it was, PPO on.
    for round_no in range(2, opts.rounds + 1):
        texts = sample(
            sampler(ppo.policy(), chunk),
            comparisons.train_problems,
            f"comparisons/samples_{round_no}",
            k,
            chunk,
        )[3]
        comparisons.add_rankings(texts)
        reward_model.fit(reward_model.model, comparisons.train_data(), f"rm_{round_no}", round_no)
        rm_params = reward_model.normalise(norm_samples, round_no)
        ev = ppo.run_round(
            ctx.stage(f"ppo_{round_no}", opts.ppo.iterations),
            rm_params,
            rl_problems,
            evaluate,
            gold,
            round_no,
        )

    if ev is None:  # a resumed run that had already finished PPO: re-measure the final policy
        ev = evaluate(ppo.state, opts.rounds * opts.ppo.iterations)
    results.add(*ppo.history)
    results.add(mean_row("ppo/gold_reward", ev["gold"]))
    results.add(proportion_row("ppo/gold_accuracy", int((ev["gold"] == 1).sum()), len(eval_set)))
    results.add(mean_row("gold/win_rate", ev["win"]))
    wins, losses = int((ev["win"] == 1).sum()), int((ev["win"] == 0).sum())
    results.add(proportion_row("gold/win_rate_decisive", wins, wins + losses))
    summary = results.write(ctx.tracker, ("rm", "labeller", "sft", "ppo", "gold"))
    win = results.value("gold/win_rate")
    rm_gold = summary["rm/accuracy_gold"]
    rm_gold = "n/a (no held-out pair that gold orders)" if not np.isfinite(rm_gold) else f"{rm_gold:.3f}"
    print(
        f"labeller agreement with gold {summary['labeller/gold_agreement']:.3f}   RM accuracy on gold pairs "
        f"{rm_gold}   gold reward SFT {summary['sft/gold_reward']:.3f} -> PPO "
        f"{summary['ppo/gold_reward']:.3f}   win rate {win['value']:.3f} [{win['ci_low']:.3f}, {win['ci_high']:.3f}]"
        f"   run folder {ctx.run_dir}"
    )


def policy_evaluation(task, tok, problems, texts, tokens, mask, scored, sft_gold, iteration: int) -> dict:
    """Gold, proxy and KL of policy samples on held-out prompts and their gold win rate over the SFT answers
    (ties 1/2): logged metrics and the over-optimisation rows at `iteration`."""
    g = np.asarray([gold_reward(task, p, t) for p, t in zip(problems, texts, strict=True)])
    win = np.where(g > sft_gold, 1.0, np.where(g == sft_gold, 0.5, 0.0))
    proxy, kl = np.asarray(scored["proxy"]), np.asarray(scored["kl"])
    stopped = np.mean([tok.eos_id in t[m.astype(bool)] for t, m in zip(tokens, mask, strict=True)])
    extra = {"method": "ppo", "N": None, "kl": float(kl.mean()), "step": iteration}
    return {
        "gold": g,
        "win": win,
        "rows": [mean_row("overopt/gold", g, **extra), mean_row("overopt/proxy", proxy, **extra)],
        "metrics": {
            "gold/reward": float(g.mean()),
            "gold/accuracy": float((g == 1).mean()),
            "gold/win_rate": float(win.mean()),
            "gold/proxy_reward": float(np.mean(scored["proxy"])),  # the device mean, as logged in training
            "gold/kl": float(np.mean(scored["kl"])),
            "gold/stop_fraction": float(stopped),
        },
    }


EXPERIMENT = Experiment(
    name="rlhf",
    description="SFT -> simulated-labeller rankings -> reward model -> PPO, scored by gold; best-of-N over-optimisation.",
    options=RLHFOptions,
    run=run,
)
