"""Experiments as sequences of named stages: the run context (task, tokenizer, named random streams, step
ledger, results table) and the stages built on the core (SFT, reward model, PPO)."""

from oversight.pipeline.context import Results, RunContext, Stage, StageTracker, StepLedger, stable_seed
from oversight.pipeline.ppo import PPOTrainer
from oversight.pipeline.reward_model import Comparisons, ComparisonsConfig, RewardModel, RewardModelConfig
from oversight.pipeline.stages import (
    SFTPolicy,
    Trainer,
    decode_responses,
    gold_reward,
    round_up,
    sample_responses,
    sft_stage,
    tokenize_problems,
    train_state_from_model,
)

__all__ = [
    "Comparisons",
    "ComparisonsConfig",
    "PPOTrainer",
    "Results",
    "RewardModel",
    "RewardModelConfig",
    "RunContext",
    "SFTPolicy",
    "Stage",
    "StageTracker",
    "StepLedger",
    "Trainer",
    "decode_responses",
    "gold_reward",
    "round_up",
    "sample_responses",
    "sft_stage",
    "stable_seed",
    "tokenize_problems",
    "train_state_from_model",
]
