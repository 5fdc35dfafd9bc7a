"""The Hugging Face importer: config mapping, tensor layout, placement, and its errors.

Checkpoints here are written with numpy + safetensors (no torch needed); tensor names are spelled the way
transformers writes them. Logits parity against the PyTorch reference is in test_parity.py.
"""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from flax import nnx
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec
from safetensors.numpy import save_file
from transformers import GPT2Config, LlamaConfig, MistralConfig, Qwen2Config

from oversight.models.hf_import import CheckpointError, load_hf_checkpoint, model_config_from_hf
from oversight.models.transformer import positions_from_mask

V, D, L, H, K, F, P = 37, 16, 2, 4, 2, 24, 12  # vocab, width, layers, heads, kv heads, mlp, positions
E = D // H


def gpt2_config(**kw) -> dict:
    cfg = GPT2Config(
        vocab_size=V, n_embd=D, n_layer=L, n_head=H, n_positions=P, bos_token_id=0, eos_token_id=0, **kw
    ).to_dict()
    cfg["architectures"] = ["GPT2LMHeadModel"]
    return cfg


def llama_config(**kw) -> dict:
    kw = {"tie_word_embeddings": False, **kw}
    cfg = LlamaConfig(
        vocab_size=V,
        hidden_size=D,
        intermediate_size=F,
        num_hidden_layers=L,
        num_attention_heads=H,
        num_key_value_heads=K,
        max_position_embeddings=64,
        bos_token_id=0,
        eos_token_id=0,
        **kw,
    ).to_dict()
    cfg["architectures"] = ["LlamaForCausalLM"]
    return cfg


def gpt2_tensors(rng: np.random.Generator, prefix: str = "transformer.") -> dict[str, np.ndarray]:
    def r(*shape):
        return rng.normal(0, 0.2, shape).astype(np.float32)

    t = {"wte.weight": r(V, D), "wpe.weight": r(P, D), "ln_f.weight": 1 + r(D), "ln_f.bias": r(D)}
    for i in range(L):
        p = f"h.{i}."
        t |= {
            p + "ln_1.weight": 1 + r(D), p + "ln_1.bias": r(D),
            p + "attn.c_attn.weight": r(D, 3 * D), p + "attn.c_attn.bias": r(3 * D),
            p + "attn.c_proj.weight": r(D, D), p + "attn.c_proj.bias": r(D),
            p + "ln_2.weight": 1 + r(D), p + "ln_2.bias": r(D),
            p + "mlp.c_fc.weight": r(D, 4 * D), p + "mlp.c_fc.bias": r(4 * D),
            p + "mlp.c_proj.weight": r(4 * D, D), p + "mlp.c_proj.bias": r(D),
        }  # fmt: skip
    return {prefix + k: v for k, v in t.items()}


@pytest.fixture
def llama_tensors(llama_weights):
    """`llama_tensors(rng, bias=False, tied=False)`: this module's small Llama, named as in a checkpoint file."""
    return partial(llama_weights, vocab=V, width=D, layers=L, heads=H, kv_heads=K, mlp=F)


def write(folder: Path, config: dict | None, tensors: dict[str, np.ndarray] | None, shards: int = 1) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    if config is not None:
        (folder / "config.json").write_text(json.dumps(config))
    if tensors is not None:
        if shards == 1:
            save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
        else:
            names = list(tensors)
            weight_map = {}
            for s in range(shards):
                file = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
                part = {n: tensors[n] for n in names[s::shards]}
                save_file(part, str(folder / file), metadata={"format": "pt"})
                weight_map |= dict.fromkeys(part, file)
            index = {"metadata": {}, "weight_map": weight_map}
            (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    return folder


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def params(model) -> dict:
    return {p: np.asarray(v.get_value()) for p, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}


# ----- layout


def test_gpt2_layout(tmp_path, rng):
    t = gpt2_tensors(rng)
    model = load_hf_checkpoint(write(tmp_path / "ckpt", gpt2_config(), t))
    p = params(model)
    assert model.config.family == "gpt2" and model.config.tie_embeddings
    w = t["transformer.h.1.attn.c_attn.weight"]
    np.testing.assert_array_equal(p[("blocks", 1, "attn", "wq")], w[:, :D].reshape(D, H, E))
    np.testing.assert_array_equal(p[("blocks", 1, "attn", "wk")], w[:, D : 2 * D].reshape(D, H, E))
    np.testing.assert_array_equal(p[("blocks", 1, "attn", "wv")], w[:, 2 * D :].reshape(D, H, E))
    bias = t["transformer.h.1.attn.c_attn.bias"]
    np.testing.assert_array_equal(p[("blocks", 1, "attn", "bq")], bias[:D].reshape(H, E))
    np.testing.assert_array_equal(p[("blocks", 1, "attn", "bv")], bias[2 * D :].reshape(H, E))
    wo = t["transformer.h.0.attn.c_proj.weight"]
    np.testing.assert_array_equal(p[("blocks", 0, "attn", "wo")], wo.reshape(H, E, D))
    np.testing.assert_array_equal(p[("blocks", 0, "mlp", "w_in")], t["transformer.h.0.mlp.c_fc.weight"])
    np.testing.assert_array_equal(p[("pos_embed",)], t["transformer.wpe.weight"])
    np.testing.assert_array_equal(p[("final_norm", "bias")], t["transformer.ln_f.bias"])


def test_llama_layout_and_prefixes(tmp_path, rng, llama_tensors):
    t = llama_tensors(rng)
    model = load_hf_checkpoint(write(tmp_path / "ckpt", llama_config(rope_theta=5e4), t))
    p = params(model)
    cfg = model.config
    assert (cfg.family, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.d_ff) == ("llama", H, K, E, F)
    assert cfg.rope_theta == 5e4 and not cfg.tie_embeddings and not cfg.attention_bias
    pre = "model.layers.1."
    np.testing.assert_array_equal(p[("blocks", 1, "attn", "wq")], t[pre + "self_attn.q_proj.weight"].T
                                  .reshape(D, H, E))  # fmt: skip
    np.testing.assert_array_equal(p[("blocks", 1, "attn", "wk")], t[pre + "self_attn.k_proj.weight"].T
                                  .reshape(D, K, E))  # fmt: skip
    np.testing.assert_array_equal(p[("blocks", 1, "attn", "wo")], t[pre + "self_attn.o_proj.weight"].T
                                  .reshape(H, E, D))  # fmt: skip
    np.testing.assert_array_equal(p[("blocks", 1, "mlp", "w_gate")], t[pre + "mlp.gate_proj.weight"].T)
    np.testing.assert_array_equal(p[("blocks", 1, "mlp", "w_in")], t[pre + "mlp.up_proj.weight"].T)
    np.testing.assert_array_equal(p[("blocks", 1, "mlp", "w_out")], t[pre + "mlp.down_proj.weight"].T)
    np.testing.assert_array_equal(p[("lm_head",)], t["lm_head.weight"].T)

    # A base-model checkpoint (no "model." prefix) with leftover buffers loads to the same parameters.
    base = {k.removeprefix("model."): v for k, v in t.items()}
    base["layers.0.self_attn.rotary_emb.inv_freq"] = np.ones(E // 2, np.float32)
    again = load_hf_checkpoint(write(tmp_path / "base", llama_config(rope_theta=5e4), base))
    for path, value in params(again).items():
        np.testing.assert_array_equal(value, p[path], err_msg=str(path))


def test_gpt2_base_model_and_buffers(tmp_path, rng):
    t = gpt2_tensors(rng, prefix="")  # GPT2Model: no "transformer." prefix
    t["h.0.attn.bias"] = np.tril(np.ones((1, 1, P, P), np.float32))  # causal-mask buffers of old checkpoints
    t["h.0.attn.masked_bias"] = np.array(-1e4, np.float32)
    cfg = gpt2_config()
    cfg["architectures"] = ["GPT2Model"]
    model = load_hf_checkpoint(write(tmp_path / "ckpt", cfg, t))
    np.testing.assert_array_equal(params(model)[("embed",)], t["wte.weight"])


def test_sharded_equals_single_file(tmp_path, rng, llama_tensors):
    t = llama_tensors(rng)
    one = load_hf_checkpoint(write(tmp_path / "one", llama_config(), t))
    three = load_hf_checkpoint(write(tmp_path / "three", llama_config(), t, shards=3))
    assert len(list((tmp_path / "three").glob("*.safetensors"))) == 3
    p1, p3 = params(one), params(three)
    assert p1.keys() == p3.keys()
    for path in p1:
        np.testing.assert_array_equal(p1[path], p3[path])


@pytest.mark.parametrize("dtype", [ml_dtypes.bfloat16, np.float16])
def test_half_precision_checkpoint(tmp_path, rng, dtype, llama_tensors):
    t = llama_tensors(rng)
    half = {k: v.astype(dtype) for k, v in t.items()}
    model = load_hf_checkpoint(write(tmp_path / "ckpt", llama_config(), half))
    for path, value in params(model).items():
        assert value.dtype == np.float32, path
    embed = half["model.embed_tokens.weight"].astype(np.float32)
    np.testing.assert_array_equal(params(model)[("embed",)], embed)


def test_dtype_sets_compute_dtype(tmp_path, rng):
    model = load_hf_checkpoint(write(tmp_path / "ckpt", gpt2_config(), gpt2_tensors(rng)), dtype="bfloat16")
    assert model.config.dtype == "bfloat16"
    assert all(v.dtype == np.float32 for v in params(model).values())  # parameters stay float32


def test_tied_checkpoint_with_identical_lm_head_is_accepted(tmp_path, rng, llama_tensors):
    t = llama_tensors(rng, tied=True)
    t["lm_head.weight"] = t["model.embed_tokens.weight"].copy()
    model = load_hf_checkpoint(write(tmp_path / "ckpt", llama_config(tie_word_embeddings=True), t))
    assert model.lm_head is None


# ----- heads, place


def test_scalar_heads_get_fresh_init(tmp_path, rng):
    folder = write(tmp_path / "ckpt", gpt2_config(), gpt2_tensors(rng))
    model = load_hf_checkpoint(folder, scalar_heads=("reward", "value"), seed=3)
    assert set(model.heads) == {"reward", "value"}
    w = np.asarray(model.heads["reward"]["w"][...])
    assert w.shape == (D,) and np.isfinite(w).all() and 0.005 < w.std() < 0.05  # init_std 0.02
    assert float(model.heads["reward"]["b"][...]) == 0.0
    assert not np.array_equal(w, np.asarray(model.heads["value"]["w"][...]))
    same = load_hf_checkpoint(folder, scalar_heads=("reward", "value"), seed=3)
    other = load_hf_checkpoint(folder, scalar_heads=("reward", "value"), seed=4)
    np.testing.assert_array_equal(w, np.asarray(same.heads["reward"]["w"][...]))
    assert not np.array_equal(w, np.asarray(other.heads["reward"]["w"][...]))
    tokens = jnp.asarray([[1, 2, 3]])
    hidden, _ = model(tokens, positions_from_mask(jnp.ones_like(tokens)), jnp.ones_like(tokens))
    assert model.scalar(hidden, "reward").shape == (1, 3)


def test_place_called_once_per_parameter_and_used(tmp_path, rng):
    t = gpt2_tensors(rng)
    folder = write(tmp_path / "ckpt", gpt2_config(), t)
    calls: list[tuple] = []

    def place(path, arr):
        assert isinstance(arr, np.ndarray) and arr.dtype == np.float32 and arr.flags.c_contiguous
        calls.append((path, arr.copy()))
        return jnp.full(arr.shape, float(len(calls)), jnp.float32)  # a marker: which call made this value

    model = load_hf_checkpoint(folder, place=place, scalar_heads=("reward",))
    paths = [p for p, _ in calls]
    assert len(paths) == len(set(paths)), "place called twice for a path"
    got = params(model)
    assert set(paths) == set(got)
    for i, (path, arr) in enumerate(calls, start=1):
        assert got[path].shape == arr.shape
        np.testing.assert_array_equal(got[path], np.full(arr.shape, float(i)), err_msg=str(path))
    received = dict(calls)
    wk = t["transformer.h.0.attn.c_attn.weight"][:, D : 2 * D].reshape(D, H, E)
    np.testing.assert_array_equal(received[("blocks", 0, "attn", "wk")], wk)
    np.testing.assert_array_equal(received[("embed",)], t["transformer.wte.weight"])
    assert ("heads", "reward", "w") in received and ("heads", "reward", "b") in received


def test_place_into_a_sharding(tmp_path, rng, llama_tensors):
    """`place` can put each tensor straight onto a mesh; the model keeps those arrays and computes alike."""
    folder = write(tmp_path / "ckpt", llama_config(), llama_tensors(rng))
    mesh = Mesh(np.array(jax.devices()), ("x",), axis_types=(AxisType.Auto,))
    n = mesh.size

    def sharding(shape):
        return NamedSharding(mesh, PartitionSpec("x") if shape and shape[0] % n == 0 else PartitionSpec())

    sharded = load_hf_checkpoint(folder, place=lambda path, arr: jax.device_put(arr, sharding(arr.shape)))
    plain = load_hf_checkpoint(folder)
    for path, v in nnx.to_flat_state(nnx.state(sharded, nnx.Param)):
        assert v.get_value().sharding == sharding(v.get_value().shape), path
    tokens = jnp.asarray([[1, 2, 3, 4], [5, 6, 7, 8]])
    mask = jnp.ones_like(tokens)

    @nnx.jit
    def logits(model):
        hidden, _ = model(tokens, positions_from_mask(mask), mask)
        return model.logits(hidden)

    np.testing.assert_allclose(np.asarray(logits(sharded)), np.asarray(logits(plain)), atol=1e-5)


# ----- config mapping


def test_config_rope_theta_sources():
    assert model_config_from_hf(llama_config(rope_theta=12345.0)).rope_theta == 12345.0  # rope_parameters
    legacy = llama_config()
    del legacy["rope_parameters"]
    legacy |= {"rope_theta": 500.0, "rope_scaling": None}  # transformers 4 style
    assert model_config_from_hf(legacy).rope_theta == 500.0
    legacy["rope_scaling"] = {"type": "default", "rope_theta": 777.0}
    assert model_config_from_hf(legacy).rope_theta == 777.0
    del legacy["rope_theta"], legacy["rope_scaling"]
    assert model_config_from_hf(legacy).rope_theta == 10000.0


@pytest.mark.parametrize(
    "scaling",
    [
        {"rope_type": "llama3", "factor": 8.0},
        {"type": "linear", "factor": 2.0},
        {"rope_type": "yarn", "factor": 4.0},
    ],
)
def test_config_rejects_rope_scaling(scaling):
    legacy = llama_config()
    del legacy["rope_parameters"]
    legacy |= {"rope_theta": 1e4, "rope_scaling": scaling}
    kind = scaling.get("rope_type", scaling.get("type"))
    with pytest.raises(CheckpointError, match=f"rope scaling type '{kind}'"):
        model_config_from_hf(legacy)
    new_style = llama_config()
    new_style["rope_parameters"] = {"rope_theta": 1e4, "rope_type": kind, "factor": 2.0}
    with pytest.raises(CheckpointError, match=f"rope scaling type '{kind}'"):
        model_config_from_hf(new_style)


def test_config_mapping_per_family():
    g = model_config_from_hf(gpt2_config(n_inner=40, layer_norm_epsilon=1e-4))
    assert (g.family, g.vocab_size, g.d_model, g.n_layers, g.n_heads) == ("gpt2", V, D, L, H)
    assert (g.d_ff, g.max_seq_len, g.norm_eps, g.tie_embeddings) == (40, P, 1e-4, True)
    assert model_config_from_hf(gpt2_config()).d_ff == 4 * D
    assert model_config_from_hf(gpt2_config(activation_function="gelu_pytorch_tanh")).family == "gpt2"

    ll = model_config_from_hf(llama_config(head_dim=8, rms_norm_eps=1e-5))
    assert (ll.head_dim, ll.n_kv_heads, ll.norm_eps, ll.max_seq_len) == (8, K, 1e-5, 64)
    assert ll.tie_embeddings is False
    no_tie_key = llama_config()
    del no_tie_key["tie_word_embeddings"]
    assert model_config_from_hf(no_tie_key).tie_embeddings is False  # LlamaConfig's default
    no_tie_key = gpt2_config()
    del no_tie_key["tie_word_embeddings"]
    assert model_config_from_hf(no_tie_key).tie_embeddings is True  # GPT2Config's default

    sizes = dict(vocab_size=V, hidden_size=D, intermediate_size=F, num_hidden_layers=L, num_attention_heads=H,
                 num_key_value_heads=K)  # fmt: skip
    qcfg = Qwen2Config(**sizes, tie_word_embeddings=True, rope_theta=1e6).to_dict()
    qcfg["architectures"] = ["Qwen2ForCausalLM"]
    q = model_config_from_hf(qcfg)
    assert q.family == "llama" and q.attention_bias and q.tie_embeddings and q.rope_theta == 1e6

    mcfg = MistralConfig(**sizes, max_position_embeddings=4096, sliding_window=256).to_dict()
    mcfg["architectures"] = ["MistralForCausalLM"]
    m = model_config_from_hf(mcfg)
    # Within the window, sliding-window attention is full causal attention.
    assert m.family == "llama" and not m.attention_bias and m.max_seq_len == 256
    with pytest.raises(CheckpointError, match="sliding_window"):
        model_config_from_hf(mcfg, max_seq_len=1024)

    over = model_config_from_hf(llama_config(), dtype="bfloat16", scalar_heads=["value"], max_seq_len=32)
    assert (over.dtype, over.scalar_heads, over.max_seq_len) == ("bfloat16", ("value",), 32)


@pytest.mark.parametrize(
    ("config", "match"),
    [
        (lambda: gpt2_config(activation_function="relu"), "activation_function='relu'"),
        (lambda: gpt2_config(activation_function="gelu"), "activation_function='gelu'"),
        (lambda: gpt2_config(scale_attn_by_inverse_layer_idx=True), "scale_attn_by_inverse_layer_idx"),
        (lambda: llama_config(hidden_act="gelu"), "hidden_act='gelu'"),
        (lambda: llama_config(mlp_bias=True), "mlp_bias"),
        (lambda: llama_config(attention_bias=True), "attention_bias"),
    ],
)
def test_config_rejects_unsupported_features(config, match):
    with pytest.raises(CheckpointError, match=match):
        model_config_from_hf(config())


# ----- errors


def test_error_missing_folder_and_config(tmp_path, rng):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_hf_checkpoint(tmp_path / "nope")
    folder = write(tmp_path / "ckpt", None, gpt2_tensors(rng))
    with pytest.raises(CheckpointError, match="config.json") as e:
        load_hf_checkpoint(folder)
    assert str(folder) in str(e.value)


def test_error_malformed_config(tmp_path, rng):
    assert issubclass(CheckpointError, ValueError)
    folder = write(tmp_path / "ckpt", None, gpt2_tensors(rng))
    (folder / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="config.json is not valid JSON"):
        load_hf_checkpoint(folder)
    cfg = llama_config()
    del cfg["hidden_size"]
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="has no 'hidden_size'") as e:
        load_hf_checkpoint(folder)
    assert str(folder) in str(e.value)


def test_error_unsupported_architecture(tmp_path, rng):
    cfg = gpt2_config()
    cfg["architectures"] = ["BertForMaskedLM"]
    folder = write(tmp_path / "ckpt", cfg, gpt2_tensors(rng))
    with pytest.raises(CheckpointError) as e:
        load_hf_checkpoint(folder)
    msg = str(e.value)
    assert str(folder) in msg and "BertForMaskedLM" in msg
    assert all(a in msg for a in ("GPT2LMHeadModel", "LlamaForCausalLM", "Qwen2ForCausalLM"))
    cfg = {"model_type": "t5", "vocab_size": 10}
    with pytest.raises(CheckpointError, match="model_type='t5'"):
        load_hf_checkpoint(write(tmp_path / "t5", cfg, gpt2_tensors(rng)))


def test_error_unsupported_feature_names_folder(tmp_path, rng):
    folder = write(tmp_path / "ckpt", gpt2_config(activation_function="relu"), gpt2_tensors(rng))
    with pytest.raises(CheckpointError, match="activation_function") as e:
        load_hf_checkpoint(folder)
    assert str(folder) in str(e.value)


def test_error_missing_and_unexpected_tensors(tmp_path, rng, llama_tensors):
    t = llama_tensors(rng)
    del t["model.layers.1.mlp.up_proj.weight"], t["lm_head.weight"]
    folder = write(tmp_path / "missing", llama_config(), t)
    with pytest.raises(CheckpointError, match="missing tensors") as e:
        load_hf_checkpoint(folder)
    msg = str(e.value)
    assert str(folder) in msg and "model.layers.1.mlp.up_proj.weight" in msg and "lm_head.weight" in msg

    t = llama_tensors(rng)
    t["model.layers.0.self_attn.o_proj.bias"] = np.zeros(D, np.float32)
    t["score.weight"] = np.zeros((1, D), np.float32)
    folder = write(tmp_path / "unexpected", llama_config(), t)
    with pytest.raises(CheckpointError, match="unexpected tensors") as e:
        load_hf_checkpoint(folder)
    msg = str(e.value)
    assert str(folder) in msg and "model.layers.0.self_attn.o_proj.bias" in msg and "score.weight" in msg
    assert "missing tensors" not in msg

    # A Qwen2 config over a Llama checkpoint: the q/k/v biases are missing.
    qcfg = llama_config()
    qcfg["architectures"], qcfg["model_type"] = ["Qwen2ForCausalLM"], "qwen2"
    with pytest.raises(CheckpointError, match=r"missing tensors: model\.layers\.0\.self_attn\.q_proj\.bias"):
        load_hf_checkpoint(write(tmp_path / "qwen", qcfg, llama_tensors(rng)))


def test_error_shape_mismatch(tmp_path, rng, llama_tensors):
    t = llama_tensors(rng)
    t["model.layers.1.self_attn.k_proj.weight"] = np.zeros((H * E, D), np.float32)  # MHA weights, GQA config
    folder = write(tmp_path / "ckpt", llama_config(), t)
    with pytest.raises(CheckpointError, match="shape mismatch") as e:
        load_hf_checkpoint(folder)
    msg = str(e.value)
    assert str(folder) in msg and "model.layers.1.self_attn.k_proj.weight" in msg
    assert str((K * E, D)) in msg and str((H * E, D)) in msg


def test_error_missing_shard(tmp_path, rng, llama_tensors):
    folder = write(tmp_path / "ckpt", llama_config(), llama_tensors(rng), shards=2)
    (folder / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(CheckpointError, match="model-00002-of-00002.safetensors") as e:
        load_hf_checkpoint(folder)
    assert str(folder) in str(e.value) and "do not exist" in str(e.value)


def test_error_index_names_tensor_absent_from_shard(tmp_path, rng, llama_tensors):
    folder = write(tmp_path / "ckpt", llama_config(), llama_tensors(rng), shards=2)
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    index["weight_map"]["model.layers.0.mlp.up_proj.weight"] = "model-00002-of-00002.safetensors"
    first = {n for n, f in index["weight_map"].items() if f.startswith("model-00001")}
    assert "model.layers.0.mlp.up_proj.weight" not in first  # now listed in the wrong shard
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match="model.layers.0.mlp.up_proj.weight"):
        load_hf_checkpoint(folder)


def test_error_pickle_only_folder(tmp_path):
    folder = write(tmp_path / "ckpt", gpt2_config(), None)
    (folder / "pytorch_model.bin").write_bytes(b"not to be unpickled")
    with pytest.raises(CheckpointError, match="safetensors is required") as e:
        load_hf_checkpoint(folder)
    assert str(folder) in str(e.value)
    (folder / "pytorch_model.bin").unlink()
    with pytest.raises(CheckpointError, match="no weights found"):
        load_hf_checkpoint(folder)


def test_error_corrupt_safetensors(tmp_path):
    folder = write(tmp_path / "ckpt", gpt2_config(), None)
    (folder / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(CheckpointError, match="not a valid safetensors file"):
        load_hf_checkpoint(folder)


class _Tok:
    def __init__(self, n):
        self.vocab_size = n


def test_error_tokenizer_vocab_mismatch(tmp_path, rng):
    folder = write(tmp_path / "ckpt", gpt2_config(), gpt2_tensors(rng))
    with pytest.raises(CheckpointError, match="vocabulary size mismatch") as e:
        load_hf_checkpoint(folder, tokenizer=_Tok(V + 1))
    msg = str(e.value)
    assert str(folder) in msg and str(V + 1) in msg and str(V) in msg
    # HF embeddings are often padded beyond the tokenizer: smaller or equal is fine.
    load_hf_checkpoint(folder, tokenizer=_Tok(V))
    load_hf_checkpoint(folder, tokenizer=_Tok(V - 5))


def test_error_tied_config_but_different_lm_head(tmp_path, rng, llama_tensors):
    t = llama_tensors(rng)  # has its own lm_head.weight
    folder = write(tmp_path / "ckpt", llama_config(tie_word_embeddings=True), t)
    with pytest.raises(CheckpointError, match="tie_word_embeddings"):
        load_hf_checkpoint(folder)
