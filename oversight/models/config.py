"""Model hyperparameters: one dataclass for both families (GPT-2 and Llama)."""

from __future__ import annotations

from dataclasses import dataclass

from oversight.settings import check_fields, setting

# The run config's `kernels` setting (`oversight.models.kernels.kernel_path`): "auto" decides by platform,
# "cpu" and "plain" force a float path.
KERNEL_PATHS = ("auto", "cpu", "plain")

FAMILIES = ("gpt2", "llama")
DTYPES = ("float32", "bfloat16", "float16")


# Hashable: the model keeps its config as static data, which jit hashes. Do not mutate after construction.
@dataclass(unsafe_hash=True)
class ModelConfig:
    # "gpt2": learned positions, LayerNorm, GELU MLP, biases; "llama": RoPE, RMSNorm, SwiGLU, no MLP biases.
    family: str = setting("gpt2", choices=FAMILIES)
    # Embedding rows; at least the tokenizer's vocabulary (checked when a run starts; HF models often pad it).
    vocab_size: int = setting(101, ge=1)
    # Residual stream width D.
    d_model: int = setting(128, ge=1)
    # Number of transformer blocks.
    n_layers: int = setting(2, ge=1)
    # Query heads H.
    n_heads: int = setting(4, ge=1)
    # Key/value heads K (grouped-query attention when K < H); null = H.
    n_kv_heads: int | None = setting(None, ge=1)
    # Per-head width; null = d_model / n_heads.
    head_dim: int | None = setting(None, ge=1)
    # MLP hidden width F; null = 4 * d_model.
    d_ff: int | None = setting(None, ge=1)
    # Longest sequence (prompt + response) the model accepts; also the learned-position table size.
    max_seq_len: int = setting(256, ge=1)
    # Epsilon of LayerNorm / RMSNorm.
    norm_eps: float = setting(1e-5, gt=0)
    # RoPE base frequency (Llama family only).
    rope_theta: float = setting(10000.0, gt=0)
    # Share the input embedding with the LM head.
    tie_embeddings: bool = True
    # Biases on the q/k/v projections in the Llama family (Qwen2 has them). GPT-2 always has biases.
    attention_bias: bool = False
    # Dtype of activations and matmuls ("float32", "bfloat16"); parameters and losses stay float32.
    dtype: str = setting("float32", choices=DTYPES)
    # Scalar heads on the trunk, by name (e.g. ["reward"], ["value"], ["discriminator"]).
    scalar_heads: list[str] = setting(factory=list)
    # Standard deviation of the normal initialiser.
    init_std: float = setting(0.02, ge=0)
    # LoRA adapters of this rank beside every attention and MLP weight; training then updates only them and
    # the scalar heads, the base weights frozen (0: no adapters, every weight trains).
    lora_rank: int = setting(0, ge=0)
    # LoRA scale numerator: an adapter adds (alpha / rank) * x A B.
    lora_alpha: float = setting(16.0, gt=0)
    # Checkpoint to import: a Hugging Face folder, a GGUF file or a known name (smollm2-135m-instruct); its
    # architecture replaces the fields above.
    checkpoint: str | None = None

    def __post_init__(self) -> None:
        check_fields(self, "model.")
        if self.head_dim is None and self.d_model % self.n_heads:
            raise ValueError(f"model.d_model={self.d_model} is not divisible by n_heads={self.n_heads}")
        if self.n_heads % self.kv_heads:
            raise ValueError(f"model.n_heads={self.n_heads} is not a multiple of n_kv_heads={self.kv_heads}")
        self.scalar_heads = tuple(self.scalar_heads)

    # What the model is built with. The fields above keep what was set (None: derived), so
    # `dataclasses.replace(cfg, d_model=256, n_heads=8)` derives these again from the new width and heads.
    @property
    def kv_heads(self) -> int:
        """Key/value heads K."""
        return self.n_heads if self.n_kv_heads is None else self.n_kv_heads

    @property
    def head_width(self) -> int:
        """Per-head width E."""
        return self.d_model // self.n_heads if self.head_dim is None else self.head_dim

    @property
    def mlp_width(self) -> int:
        """MLP hidden width F."""
        return 4 * self.d_model if self.d_ff is None else self.d_ff

    def num_params(self) -> int:
        """Parameter count, embeddings included (what 6 * N * tokens FLOP estimates use)."""
        d, f, h, k, hd, v = (
            self.d_model,
            self.mlp_width,
            self.n_heads,
            self.kv_heads,
            self.head_width,
            self.vocab_size,
        )
        attn = d * hd * (h + 2 * k) + h * hd * d
        if self.family == "gpt2":
            block = attn + hd * (h + 2 * k) + d + 2 * d * f + f + d + 4 * d
            extra = self.max_seq_len * d + 2 * d
        else:
            block = attn + (hd * (h + 2 * k) if self.attention_bias else 0) + 3 * d * f + 2 * d
            extra = d
        lm_head = 0 if self.tie_embeddings else d * v
        if self.lora_rank:  # adapters (in + out) * rank beside q, k, v, o and the MLP's two or three weights
            mlp = (d + f) * (3 if self.family == "llama" else 2)
            block += self.lora_rank * (2 * d + 2 * h * hd + 2 * (d + k * hd) + mlp)
        return v * d + self.n_layers * block + extra + lm_head + len(self.scalar_heads) * (d + 1)
