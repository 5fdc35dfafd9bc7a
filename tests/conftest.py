"""Test-wide setup. XLA flags must be set before JAX first initialises its backend, so this runs first."""

import importlib.util
import os
import sys
from pathlib import Path

import pytest

# Eight CPU devices, to test sharding on a laptop or CI machine.
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def bench_script():
    """`bench_script("run")`: a script of bench/ (not a package) loaded as a module, once per session."""
    root = Path(__file__).resolve().parents[1] / "bench"

    def load(name: str):
        module_name = f"bench_{name}"
        if module_name not in sys.modules:
            spec = importlib.util.spec_from_file_location(module_name, root / f"{name}.py")
            module = importlib.util.module_from_spec(spec)
            sys.modules[module_name] = module  # dataclasses look their module up there
            spec.loader.exec_module(module)
        return sys.modules[module_name]

    return load


@pytest.fixture(scope="session")
def llama_weights():
    """`llama_weights(rng, vocab=, width=, layers=, heads=, kv_heads=, mlp=)`: random weights of a Llama
    checkpoint as transformers names and lays them out ((out, in) matrices; `prefix` before each decoder name,
    "model." in a checkpoint file). Options: `tied` (no lm_head), `bias` (q/k/v biases, as Qwen2 has), `std`."""
    import numpy as np

    def make(
        rng, *, vocab, width, layers, heads, kv_heads, mlp, tied=False, bias=False, prefix="model.", std=0.2
    ):
        def r(*shape):
            return rng.normal(0, std, shape).astype(np.float32)

        e = width // heads
        t = {f"{prefix}embed_tokens.weight": r(vocab, width), f"{prefix}norm.weight": 1 + r(width)}
        if not tied:
            t["lm_head.weight"] = r(vocab, width)
        for i in range(layers):
            p = f"{prefix}layers.{i}."
            t |= {
                p + "input_layernorm.weight": 1 + r(width), p + "post_attention_layernorm.weight": 1 + r(width),
                p + "self_attn.q_proj.weight": r(heads * e, width), p + "self_attn.k_proj.weight": r(kv_heads * e, width),
                p + "self_attn.v_proj.weight": r(kv_heads * e, width), p + "self_attn.o_proj.weight": r(width, heads * e),
                p + "mlp.gate_proj.weight": r(mlp, width), p + "mlp.up_proj.weight": r(mlp, width),
                p + "mlp.down_proj.weight": r(width, mlp),
            }  # fmt: skip
            if bias:
                t |= {p + "self_attn.q_proj.bias": r(heads * e), p + "self_attn.k_proj.bias": r(kv_heads * e),
                      p + "self_attn.v_proj.bias": r(kv_heads * e)}  # fmt: skip
        return t

    return make
