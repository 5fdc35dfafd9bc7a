"""Read a GGUF file (llama.cpp's format) as a Hugging Face checkpoint: its config.json and its tensors.

`hf_import` loads a `.gguf` file through this module exactly as it loads a folder: `gguf_config_json`
gives the `config.json` transformers would write for the model, and `gguf_tensors` gives every tensor
under its Hugging Face name (prefix stripped), dequantised to float32 when read, in Hugging Face layout.
`save_hf_folder` writes the same as a checkpoint folder (config.json, model.safetensors, tokenizer files),
so a converted model loads without the `gguf` package and also in transformers.

Supported: the Llama architecture (`general.architecture = llama`: Llama, Mistral-style and SmolLM models
converted by llama.cpp) with every tensor type `gguf.quants.dequantize` knows (F32, F16, BF16, Q4_0 ... Q8_0,
the K-quants ...). llama.cpp stores Llama's q and k projections with the rows of each head permuted for its
interleaved rotary layout; `_unpermute` restores Hugging Face's (rotate-half) order.
"""

from __future__ import annotations

import functools
import json
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from oversight.errors import require

__all__ = ["gguf_config_json", "gguf_tensors", "is_gguf", "save_hf_folder"]

# GGUF tensor name (after "blk.N.") -> Hugging Face name (after "layers.N."), for the Llama architecture.
_LLAMA_BLOCK = {
    "attn_norm.weight": "input_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_output.weight": "self_attn.o_proj.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}
_LLAMA_TOP = {
    "token_embd.weight": "embed_tokens.weight",
    "output_norm.weight": "norm.weight",
    "output.weight": "lm_head.weight",
}
_BLOCK = re.compile(r"blk\.(\d+)\.(.+)")


def is_gguf(path: str | Path) -> bool:
    return Path(path).suffix.lower() == ".gguf"


def _error(message: str) -> Exception:
    from oversight.models.hf_import import CheckpointError

    return CheckpointError(message)


def _reader(path: Path):
    """The file's `GGUFReader` (memory-mapped). Parsing SmolLM2's metadata (~100k tokenizer strings) takes
    seconds and a run asks for the config several times, so readers are kept per (file, size, mtime)."""
    require("gguf", extra="gguf", feature="reading GGUF checkpoints")
    if not path.is_file():
        raise _error(f"GGUF file {path} does not exist")
    stat = path.stat()
    return _open_reader(str(path.resolve()), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=2)
def _open_reader(path: str, _size: int, _mtime_ns: int):
    import gguf

    try:
        return gguf.GGUFReader(path)
    except Exception as e:  # any parse failure becomes a clear error naming the file
        raise _error(f"{path} is not a valid GGUF file: {e}") from e


def _field(reader, key: str, default: Any = None) -> Any:
    field = reader.fields.get(key)
    return default if field is None else field.contents()


def gguf_config_json(path: str | Path, reader=None) -> dict:
    """The Hugging Face `config.json` (as a dict) of the GGUF file `path`.

    Raises `CheckpointError` naming the file for an architecture other than Llama, RoPE scaling, partial
    rotary embeddings, or a missing hyperparameter.
    """
    path = Path(path)
    reader = reader or _reader(path)
    arch = _field(reader, "general.architecture")
    if arch != "llama":
        raise _error(f"{path}: unsupported GGUF architecture {arch!r}; supported: 'llama'")

    def get(key: str, default: Any = None) -> Any:
        value = _field(reader, f"llama.{key}", default)
        if value is None:
            raise _error(f"{path}: GGUF metadata has no 'llama.{key}'")
        return value

    n_heads = int(get("attention.head_count"))
    d = int(get("embedding_length"))
    head_dim = int(_field(reader, "llama.attention.key_length", d // n_heads))
    rotary = int(_field(reader, "llama.rope.dimension_count", head_dim))
    if rotary != head_dim:
        raise _error(f"{path}: partial rotary embeddings ({rotary} of {head_dim} dims) are not supported")
    scaling = _field(reader, "llama.rope.scaling.type", "none")
    if scaling not in ("none", None):
        raise _error(f"{path}: rope scaling type {scaling!r} is not supported (only none)")
    names = {t.name for t in reader.tensors}
    tokens = reader.fields.get("tokenizer.ggml.tokens")
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": d,
        "num_hidden_layers": int(get("block_count")),
        "num_attention_heads": n_heads,
        "num_key_value_heads": int(get("attention.head_count_kv", n_heads)),
        "head_dim": head_dim,
        "intermediate_size": int(get("feed_forward_length")),
        "max_position_embeddings": int(get("context_length")),
        "rms_norm_eps": float(get("attention.layer_norm_rms_epsilon")),
        "rope_theta": float(get("rope.freq_base", 10000.0)),
        "vocab_size": int(_field(reader, "llama.vocab_size", len(tokens.data) if tokens else None) or 0),
        "tie_word_embeddings": "output.weight" not in names,
        "hidden_act": "silu",
    }
    for ours, key in (("bos_token_id", "bos_token_id"), ("eos_token_id", "eos_token_id")):
        value = _field(reader, f"tokenizer.ggml.{key}")
        if value is not None:
            config[ours] = int(value)
    return config


def _unpermute(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Undo llama.cpp's per-head row permutation of q/k: (heads, 2, half, in) -> (heads, half, 2, in) back."""
    rows, cols = w.shape
    return w.reshape(n_heads, rows // n_heads // 2, 2, cols).swapaxes(1, 2).reshape(rows, cols)


class _GGUFTensor:
    """One tensor of a GGUF file under its Hugging Face name; `read()` dequantises it to float32."""

    def __init__(self, file: Path, tensor, name: str, fix: Callable[[np.ndarray], np.ndarray] | None):
        self.file, self._tensor, self.name, self._fix = file, tensor, name, fix
        self.shape = tuple(int(n) for n in reversed(tensor.shape))  # ggml lists the fastest axis first
        self.dtype = "F32"  # what read() returns, whatever the stored type (tensor.tensor_type)

    def read(self) -> np.ndarray:
        import gguf

        t = self._tensor
        try:
            w = gguf.quants.dequantize(t.data, t.tensor_type)
        except NotImplementedError as e:
            raise _error(
                f"{self.file}: tensor {t.name!r} has unsupported GGUF type {t.tensor_type.name}"
            ) from e
        w = np.asarray(w, np.float32).reshape(self.shape)
        return self._fix(w) if self._fix is not None else w


def gguf_tensors(path: str | Path, config: dict, reader=None) -> dict[str, _GGUFTensor]:
    """Every tensor of the GGUF file `path` by its Hugging Face name (prefix stripped), e.g. `layers.0...`.

    A GGUF name this module does not know keeps its own name, so the importer reports it as unexpected.
    """
    path = Path(path)
    reader = reader or _reader(path)
    heads = {"q_proj": config["num_attention_heads"], "k_proj": config["num_key_value_heads"]}
    out: dict[str, _GGUFTensor] = {}
    for t in reader.tensors:
        fix = None
        if t.name in _LLAMA_TOP:
            name = _LLAMA_TOP[t.name]
        elif (m := _BLOCK.fullmatch(t.name)) and m.group(2) in _LLAMA_BLOCK:
            name = f"layers.{m.group(1)}.{_LLAMA_BLOCK[m.group(2)]}"
            proj = name.split(".")[-2]
            if proj in heads:
                fix = lambda w, n=heads[proj]: _unpermute(w, n)  # noqa: E731
        else:
            name = t.name
        out[name] = _GGUFTensor(path, t, name, fix)
    return out


def save_hf_folder(path: str | Path, out: str | Path) -> Path:
    """Write the GGUF file `path` as a Hugging Face checkpoint folder `out` (float32 weights + tokenizer).

    `out` must not exist. The folder is written under a temporary name beside it and renamed when complete,
    so `out` is either whole or absent; when another process converting the same file renames first, its
    folder is kept.
    """
    import shutil
    import tempfile

    from safetensors.numpy import save_file

    from oversight.data.tokenizer import HFTokenizer

    path, out = Path(path), Path(out)
    if out.exists():
        raise _error(f"{out} exists already; converting {path.name} writes a new folder")
    reader = _reader(path)
    config = gguf_config_json(path, reader)
    tensors = gguf_tensors(path, config, reader)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    umask = os.umask(0)
    os.umask(umask)
    try:
        weights = {("" if n == "lm_head.weight" else "model.") + n: t.read() for n, t in tensors.items()}
        save_file(weights, str(tmp / "model.safetensors"), metadata={"format": "pt", "source": path.name})
        del weights
        (tmp / "config.json").write_text(json.dumps({**config, "torch_dtype": "float32"}, indent=2) + "\n")
        HFTokenizer(path).save(tmp)
        for p in (tmp, *tmp.iterdir()):  # mkdtemp and safetensors make them private; the folder is a cache
            p.chmod((0o777 if p.is_dir() else 0o666) & ~umask)
        try:
            tmp.rename(out)
        except OSError:
            if not (out / "config.json").is_file():  # not a finished conversion by another process
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out
