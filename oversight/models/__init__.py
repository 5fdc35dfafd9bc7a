"""Flax NNX decoder-only transformers (GPT-2 and Llama families) and Hugging Face checkpoint import."""

from __future__ import annotations

from flax import nnx

from oversight.errors import ConfigError
from oversight.models.config import ModelConfig
from oversight.models.transformer import KVCache, Transformer, positions_from_mask, trainable


def make_model(cfg: ModelConfig, seed: int) -> Transformer:
    return Transformer(cfg, rngs=nnx.Rngs(params=seed))


def check_vocab(cfg: ModelConfig, tokenizer, where: str = "model") -> None:
    """The model's embedding must cover every token id the tokenizer can produce."""
    if tokenizer.vocab_size > cfg.vocab_size:
        raise ConfigError(
            f"{where}: vocabulary size {cfg.vocab_size} is smaller than the tokenizer's {tokenizer.vocab_size}"
        )


def build_model_config(cfg: ModelConfig, tokenizer) -> ModelConfig:
    """The config a run uses: its own, or the architecture of `cfg.checkpoint`; checked against the tokenizer."""
    if cfg.checkpoint:
        from oversight.models.hf_import import read_model_config

        cfg = read_model_config(
            cfg.checkpoint,
            dtype=cfg.dtype,
            scalar_heads=cfg.scalar_heads,
            lora_rank=cfg.lora_rank,
            lora_alpha=cfg.lora_alpha,
            checkpoint=cfg.checkpoint,
        )
    check_vocab(cfg, tokenizer, where=f"model {cfg.checkpoint or ''}".strip())
    return cfg


__all__ = [
    "KVCache",
    "ModelConfig",
    "Transformer",
    "build_model_config",
    "check_vocab",
    "make_model",
    "positions_from_mask",
    "trainable",
]
