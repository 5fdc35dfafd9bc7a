"""Logits parity with the PyTorch reference (transformers) on tiny random checkpoints the tests create.

Each architecture is saved with `save_pretrained` (safetensors; also in several shards), imported with
`load_hf_checkpoint`, and its float32 logits compared with transformers' eager float32 forward pass, on a full
batch and on a left-padded batch (attention mask plus position ids from the mask; real positions only).
"""

from __future__ import annotations

import copy

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from oversight.models import kernels
from oversight.models.hf_import import load_hf_checkpoint
from oversight.models.transformer import positions_from_mask

pytestmark = pytest.mark.parity
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

TOL = 1e-4
VOCAB, BATCH, LENGTH = 61, 3, 10
PADS = (0, 3, 6)  # left padding per row of the padded batch

COMMON = dict(vocab_size=VOCAB, initializer_range=0.1, bos_token_id=0, eos_token_id=0)
LLAMA = dict(hidden_size=48, intermediate_size=80, num_hidden_layers=2, num_attention_heads=6)
QWEN2 = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)
ARCHS = {  # name: (model class, config class, config arguments)
    # GPT-2: learned positions, LayerNorm, c_attn packing, MLP width not 4 * D.
    "gpt2": (
        "GPT2LMHeadModel",
        "GPT2Config",
        dict(n_embd=32, n_layer=2, n_head=4, n_inner=80, n_positions=24),
    ),
    # Llama: GQA (6 query heads, 2 kv heads), head_dim 12 so H * E != D, untied LM head, rope_theta 50000.
    "llama": (
        "LlamaForCausalLM",
        "LlamaConfig",
        dict(
            LLAMA,
            num_key_value_heads=2,
            head_dim=12,
            rope_theta=5e4,
            rms_norm_eps=1e-5,
            tie_word_embeddings=False,
        ),
    ),
    # Qwen2: q/k/v biases, GQA, tied and untied embeddings.
    "qwen2_tied": (
        "Qwen2ForCausalLM",
        "Qwen2Config",
        dict(QWEN2, num_key_value_heads=2, rope_theta=1e6, tie_word_embeddings=True),
    ),
    # Mistral-style: Llama tensors; a sliding window longer than the sequences is full causal attention.
    "mistral": (
        "MistralForCausalLM",
        "MistralConfig",
        dict(LLAMA, num_key_value_heads=3, sliding_window=16, rope_theta=1e6, tie_word_embeddings=False),
    ),
    "qwen2_untied": (
        "Qwen2ForCausalLM",
        "Qwen2Config",
        dict(QWEN2, num_key_value_heads=2, tie_word_embeddings=False),
    ),
}

MEASURED: dict[str, float] = {}  # max abs logits error per case, printed at the end of the module (-s)


def make_reference(arch: str, seed: int = 0):
    """A tiny random HF model in eval mode, with non-trivial norms and biases (HF inits them to 1 and 0)."""
    model_cls, config_cls, kwargs = ARCHS[arch]
    torch.manual_seed(seed)
    config = getattr(transformers, config_cls)(**COMMON, **kwargs, attn_implementation="eager")
    model = getattr(transformers, model_cls)(config).float().eval()
    assert model.config._attn_implementation == "eager"
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1 and ("norm" in name or ".ln_" in name or name.startswith("transformer.ln_f")):
                if name.endswith("weight"):
                    p.mul_(1 + 0.5 * torch.randn_like(p))
                else:
                    p.add_(0.5 * torch.randn_like(p))
            elif p.ndim == 1:  # linear / Conv1D biases
                p.add_(0.3 * torch.randn_like(p))
    return model


def batch(padded: bool):
    rng = np.random.default_rng(1)
    tokens = rng.integers(0, VOCAB, (BATCH, LENGTH))
    mask = np.ones((BATCH, LENGTH), np.int64)
    if padded:
        for row, pad in enumerate(PADS):
            mask[row, :pad] = 0
            tokens[row, :pad] = 0
    return tokens, mask


def reference_logits(model, tokens, mask) -> np.ndarray:
    positions = np.maximum(np.cumsum(mask, -1) - 1, 0)
    with torch.no_grad():
        out = model(
            input_ids=torch.tensor(tokens),
            attention_mask=torch.tensor(mask),
            position_ids=torch.tensor(positions),
        )
    return out.logits.float().numpy()


@nnx.jit
def _forward(model, tokens, mask):
    hidden, _ = model(tokens, positions_from_mask(mask), mask)
    return model.logits(hidden)


def our_logits(model, tokens, mask) -> np.ndarray:
    return np.asarray(_forward(model, jnp.asarray(tokens, jnp.int32), jnp.asarray(mask, jnp.int32)))


def max_error(ref_model, model, padded: bool) -> float:
    tokens, mask = batch(padded)
    ref, ours = reference_logits(ref_model, tokens, mask), our_logits(model, tokens, mask)
    assert ours.shape == ref.shape == (BATCH, LENGTH, VOCAB)
    real = mask.astype(bool)
    assert np.isfinite(ours[real]).all()
    assert np.abs(ref[real]).max() > 1.0  # logits large enough for the tolerance to mean something
    return float(np.abs(ours[real] - ref[real]).max())


def assert_parity(ref_model, model, case: str) -> None:
    """Logits within TOL of the reference on the full and the left-padded batch; records both errors."""
    for padded in (False, True):
        name = f"{case}/{'left-padded' if padded else 'full'}"
        MEASURED[name] = err = max_error(ref_model, model, padded)
        assert err < TOL, f"{name}: max abs logits error {err:.3g}"


@pytest.mark.parametrize("sharded", [False, True], ids=["single", "sharded"])
@pytest.mark.parametrize("arch", list(ARCHS))
def test_logits_parity(tmp_path, arch, sharded):
    ref = make_reference(arch)
    if sharded:
        ref.save_pretrained(tmp_path, max_shard_size="20KB")
        assert (tmp_path / "model.safetensors.index.json").is_file()
        assert len(list(tmp_path.glob("model-*.safetensors"))) > 2
    else:
        ref.save_pretrained(tmp_path)
        assert (tmp_path / "model.safetensors").is_file()
    assert_parity(ref, load_hf_checkpoint(tmp_path), f"{arch}/{'sharded' if sharded else 'single'}")


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_bfloat16_checkpoint(tmp_path, arch):
    """A bf16 checkpoint imports to float32 parameters equal to the bf16 values: parity with HF on those."""
    ref = make_reference(arch)
    copy.deepcopy(ref).to(torch.bfloat16).save_pretrained(tmp_path)
    with torch.no_grad():  # the reference: float32 on the bf16-rounded weights, buffers (inv_freq) intact
        for p in ref.parameters():
            p.copy_(p.bfloat16().float())
    assert_parity(ref, load_hf_checkpoint(tmp_path), f"{arch}/bf16-checkpoint")


@pytest.mark.parametrize("arch", list(ARCHS))
def test_logits_parity_with_attention_in_causal_blocks(tmp_path, arch, monkeypatch):
    """The CPU kernels' block-skipping attention of long sequences (see `kernels.causal_blocks`), forced onto
    the 10-token batch: 3 query blocks, also across the left padding's fully masked rows."""
    monkeypatch.setattr(kernels, "_MIN_CAUSAL_BLOCK", 3)
    assert kernels.causal_blocks(LENGTH) == [(0, 3), (3, 6), (6, 10)]
    jax.clear_caches()  # `_forward` was compiled with one block by the tests above
    ref = make_reference(arch)
    ref.save_pretrained(tmp_path)
    with kernels.use_cpu_kernels(True):
        assert_parity(ref, load_hf_checkpoint(tmp_path), f"{arch}/causal-blocks")
    jax.clear_caches()


@pytest.mark.parametrize("arch", list(ARCHS))
def test_logits_parity_on_the_plain_path(tmp_path, arch):
    """The plain path (plain products, `jax.nn.dot_product_attention`), as on a GPU."""
    ref = make_reference(arch)
    ref.save_pretrained(tmp_path)
    with kernels.use_cpu_kernels(False):  # `_forward` traced again, with the plain path
        assert_parity(ref, load_hf_checkpoint(tmp_path), f"{arch}/plain")


def test_parity_is_sensitive(tmp_path):
    """Negative control: a wrong RoPE base (a plausible importer bug) is far outside the tolerance."""
    ref = make_reference("llama")
    ref.save_pretrained(tmp_path)
    wrong = load_hf_checkpoint(tmp_path, rope_theta=10000.0)
    assert max_error(ref, wrong, padded=True) > 100 * TOL


def teardown_module(module):
    if MEASURED:
        width = max(map(len, MEASURED))
        print("\nmax abs logits error vs transformers (float32):")
        for case, err in sorted(MEASURED.items()):
            print(f"  {case:<{width}}  {err:.2e}")
