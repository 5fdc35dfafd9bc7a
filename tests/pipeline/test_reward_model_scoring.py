"""The reward model's scoring passes run in batches of one shape: held-out metrics and sample rewards equal
those of one batch of every row, with a ragged last batch."""

from types import SimpleNamespace

import jax
import numpy as np
import pytest
from flax import nnx

from oversight.models import ModelConfig, make_model
from oversight.parallel import MeshConfig, make_mesh
from oversight.pipeline import RewardModel, RewardModelConfig
from oversight.training.reward_model import RewardParams, pack_rankings, ranking_rewards, reward_model_metrics

CFG = ModelConfig(
    family="gpt2", vocab_size=64, d_model=32, n_layers=1, n_heads=4, max_seq_len=32, scalar_heads=["reward"]
)
K, T, PROMPT, RESPONSE = 3, 16, 6, 8


def _rankings(n: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    prompts = [list(rng.integers(1, 64, rng.integers(1, PROMPT))) for _ in range(n)]
    responses = [[list(rng.integers(1, 64, rng.integers(1, RESPONSE))) for _ in range(K)] for _ in range(n)]
    scores = [sorted(rng.integers(0, 3, K).tolist(), reverse=True) for _ in range(n)]  # with ties
    return pack_rankings(prompts, responses, K, T, 0, scores=scores, generative=True)


# one batch; batches of 3 rankings (widest activation: the MLP's 2 x 128 per token)
@pytest.mark.parametrize("budget", [2**30, 3 * 4 * K * T * 256])
def test_heldout_metrics_and_scores_in_batches_equal_one_batch(monkeypatch, budget):
    monkeypatch.setattr("oversight.training.batched.ACTIVATION_BUDGET_BYTES", budget)
    model = make_model(CFG, seed=0)
    graphdef, params = nnx.split(model)
    gold, labeller = _rankings(7, 1), _rankings(7, 2)  # 7 rankings: batches of 3, 3, 1 + padding
    mesh = make_mesh(MeshConfig(data=1, fsdp=1, tensor=1), devices=jax.devices()[:1])
    ctx = SimpleNamespace(mesh=mesh, rules=MeshConfig().rules, tokenizer=SimpleNamespace(pad_id=0))
    comparisons = SimpleNamespace(heldout_gold=gold, heldout_labeller=labeller)
    rm = RewardModel(ctx, RewardModelConfig(generative=True), graphdef, comparisons, prompt_len=PROMPT)

    metrics = rm.heldout_metrics(params)
    assert rm._rows(params, T, K) == (3 if budget < 2**30 else 2**30 // (4 * K * T * 256))
    for name, data in (("gold", gold), ("labeller", labeller)):
        r = ranking_rewards(model, data)  # (B, K): one batch of every ranking
        for key, value in reward_model_metrics(r, data["valid"], data["ranks"]).items():
            assert metrics[f"rm/heldout_{key}_{name}"] == pytest.approx(float(value), rel=1e-5, abs=1e-6)

    rng = np.random.default_rng(3)
    prompts = [list(rng.integers(1, 64, rng.integers(1, PROMPT + 1))) for _ in range(7)]
    tokens = rng.integers(1, 64, (7, RESPONSE)).astype(np.int32)
    mask = (np.arange(RESPONSE)[None] < rng.integers(1, RESPONSE + 1, 7)[:, None]).astype(np.int32)
    unnormalised = RewardParams.unnormalised(params)
    batched = rm.score(unnormalised, prompts, tokens, mask)
    one = np.concatenate(
        [rm.score(unnormalised, [p], t[None], m[None]) for p, t, m in zip(prompts, tokens, mask, strict=True)]
    )
    np.testing.assert_allclose(batched, one, rtol=1e-5, atol=1e-5)
