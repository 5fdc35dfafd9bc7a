"""LoRA adapters: a model with fresh adapters computes what its base does; a training step moves only the
adapters and the scalar heads (the optimizer holds state for nothing else); an imported checkpoint keeps its
weights under fresh adapters; the parameter count includes them."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from oversight.models import ModelConfig, Transformer, positions_from_mask, trainable
from oversight.parallel import MeshConfig, make_mesh
from oversight.training.loop import TrainConfig, init_train_state, make_optimizer, make_train_step
from oversight.training.sft import pack_examples, sft_loss

BASE = [
    ModelConfig(family="gpt2", vocab_size=40, d_model=32, n_layers=2, n_heads=4, scalar_heads=["reward"]),
    ModelConfig(family="llama", vocab_size=40, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=48,
                tie_embeddings=False, scalar_heads=["value"]),
]  # fmt: skip
RULES = MeshConfig().rules


def _with_lora(cfg: ModelConfig, rank: int = 4) -> ModelConfig:
    return dataclasses.replace(cfg, lora_rank=rank)


def _logits(model, tokens):
    mask = jnp.ones_like(tokens, bool)
    return np.asarray(model.logits(model(tokens, positions_from_mask(mask), mask)[0]))


def _lora_paths(model) -> set:
    return {p for p, _ in nnx.to_flat_state(nnx.state(model, nnx.LoRAParam))}


@pytest.mark.parametrize("cfg", BASE, ids=lambda c: c.family)
def test_fresh_adapters_compute_the_base_model(cfg):
    adapted = Transformer(_with_lora(cfg), rngs=nnx.Rngs(0))
    base = Transformer(cfg, rngs=nnx.Rngs(1))
    # the base weights of `adapted` copied into a model without adapters
    flat = dict(nnx.to_flat_state(nnx.state(adapted, nnx.Param)))
    nnx.update(
        base,
        nnx.from_flat_state({p: v for p, v in flat.items() if p in dict(nnx.to_flat_state(nnx.state(base)))}),
    )
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, 40, (2, 7)))
    np.testing.assert_array_equal(_logits(adapted, tokens), _logits(base, tokens))
    # q, k, v, o and the MLP's weights (3 in the Llama family, 2 in GPT-2) each get an adapter of A and B
    per_block = 4 + (3 if cfg.family == "llama" else 2)
    assert len(_lora_paths(adapted)) == 2 * per_block * cfg.n_layers


@pytest.mark.parametrize("cfg", BASE, ids=lambda c: c.family)
def test_parameter_count_includes_the_adapters(cfg):
    model = Transformer(_with_lora(cfg, rank=3), rngs=nnx.Rngs(0))
    assert (
        sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param))) == _with_lora(cfg, 3).num_params()
    )


@pytest.mark.parametrize("cfg", BASE, ids=lambda c: c.family)
def test_a_step_trains_only_the_adapters_and_heads(cfg):
    cfg = _with_lora(cfg)
    mesh = make_mesh(MeshConfig(data=1, fsdp=1, tensor=1), devices=jax.devices()[:1])
    tx = make_optimizer(TrainConfig(steps=1, learning_rate=1e-2, warmup_steps=0))
    graphdef, state, shardings = init_train_state(cfg, tx, 0, mesh, RULES)
    model, optimizer = nnx.merge(graphdef, state)
    before = {p: np.asarray(v.get_value()) for p, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}
    lora = _lora_paths(model)
    heads = {p for p in before if p[0] == "heads"}
    # AdamW moments for the adapters and heads only: the frozen base costs no optimizer memory
    moments = sum(x.size for x in jax.tree.leaves(nnx.state(optimizer, nnx.OptState)))
    trained = sum(before[p].size for p in lora | heads)
    assert trained < moments < 3 * trained

    rng = np.random.default_rng(0)
    data = pack_examples([list(rng.integers(1, 40, 4)) for _ in range(4)],
                         [list(rng.integers(1, 40, 3)) for _ in range(4)], 8, 0)  # fmt: skip

    def loss(
        model, batch
    ):  # the LM loss plus the scalar head, so both kinds of trainable parameter get a gradient
        lm, aux = sft_loss(model, batch)
        mask = batch["mask"]
        hidden, _ = model(batch["tokens"], positions_from_mask(mask), mask)
        return lm + model.scalar(hidden, cfg.scalar_heads[0]).mean() ** 2, aux

    step = make_train_step(graphdef, loss, shardings, mesh, RULES)
    state, _ = step(state, data)
    after = {
        p: np.asarray(v.get_value())
        for p, v in nnx.to_flat_state(nnx.state(nnx.merge(graphdef, state)[0], nnx.Param))
    }
    changed = {p for p in before if not np.array_equal(before[p], after[p])}
    b_matrices = {
        p for p in lora if p[-1] == "b"
    }  # B starts at 0 and gets the first gradient (A's is 0 then)
    assert b_matrices <= changed and heads & changed
    assert changed <= lora | heads


def test_trainable_is_every_parameter_without_adapters():
    assert trainable(Transformer(BASE[0], rngs=nnx.Rngs(0))) is nnx.Param


def test_an_imported_checkpoint_keeps_its_weights_under_fresh_adapters(tmp_path, llama_weights):
    from test_gguf_import import D, F, H, K, L, V, forward, write_gguf  # (tests/models is on the path)

    from oversight.models.hf_import import load_hf_checkpoint

    sizes = dict(vocab=V, width=D, layers=L, heads=H, kv_heads=K, mlp=F)  # the GGUF test's model
    path = write_gguf(
        tmp_path / "m.gguf", llama_weights(np.random.default_rng(0), **sizes, tied=True, prefix="")
    )
    plain, adapted = load_hf_checkpoint(path), load_hf_checkpoint(path, lora_rank=4, seed=3)
    ids = [5, 9, 13, 40, 2]
    np.testing.assert_array_equal(forward(adapted, ids), forward(plain, ids))
    b = [v.get_value() for p, v in nnx.to_flat_state(nnx.state(adapted, nnx.LoRAParam)) if p[-1] == "b"]
    a = [v.get_value() for p, v in nnx.to_flat_state(nnx.state(adapted, nnx.LoRAParam)) if p[-1] == "a"]
    assert b and all(not np.any(x) for x in b) and all(np.std(x) > 0 for x in a)
