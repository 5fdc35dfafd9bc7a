"""Reward model: the K-way Bradley–Terry loss, reading the reward at the last real token, metrics, normalisation."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from oversight.models import ModelConfig, make_model
from oversight.overseers.rankings import Ranking
from oversight.training.reward_model import (
    RewardParams,
    expected_calibration_error,
    fit_normalization,
    fold_normalization,
    last_token_index,
    pack_rankings,
    pairwise_accuracy,
    process_reward,
    process_reward_model_loss,
    ranking_loss,
    ranks_from_scores,
    reward_model_loss,
    reward_scores,
    unit_scores,
)

# jitted once per shape: eager dispatch of each small op costs more than compiling the whole loss
loss_fn = jax.jit(ranking_loss)


def log_sigmoid(x: float) -> float:
    return -np.log1p(np.exp(-x))


def enumerated_loss(rewards, lengths, ranks=None, margin=0.0):
    """The loss written out: per prompt, the mean over its (better, worse) pairs; then the mean over prompts."""
    per_prompt = []
    for b, k in enumerate(lengths):
        # Ranking.pairs enumerates the C(k, 2) pairs of a best-first ranking, as the collector records them.
        ranking = Ranking("p", "x", tuple(str(i) for i in range(k)), tuple(range(k)), (0.0,) * k)
        losses = [
            -log_sigmoid(rewards[b, i] - rewards[b, j] - margin)
            for i, j in ranking.pairs()
            if ranks is None or ranks[b][i] < ranks[b][j]
        ]
        if losses:
            per_prompt.append(np.mean(losses))
    return np.mean(per_prompt)


@pytest.mark.parametrize("k", range(2, 10))
def test_k_way_loss_is_the_per_prompt_mean_over_enumerated_pairs(k):
    rng = np.random.default_rng(k)
    b = 5
    rewards = rng.normal(size=(b, k))
    lengths = [k, 2, max(2, k - 1), k, max(2, k // 2)]  # shorter rankings pad the tail
    valid = (np.arange(k)[None] < np.array(lengths)[:, None]).astype(np.int32)
    garbage = np.where(valid == 1, rewards, 1e3)  # padded slots must not matter
    loss, aux = loss_fn(jnp.asarray(garbage), jnp.asarray(valid))
    np.testing.assert_allclose(loss, enumerated_loss(rewards, lengths), rtol=1e-5)
    assert aux["pairs"] == sum(n * (n - 1) // 2 for n in lengths)
    # Each prompt is one element: this is not the mean over all pairs when prompts have different K.
    if len(set(lengths)) > 1:
        flat = np.mean([-log_sigmoid(rewards[i, x] - rewards[i, y]) for i, n in enumerate(lengths)
                        for x, y in itertools.combinations(range(n), 2)])  # fmt: skip
        assert abs(float(loss) - flat) > 1e-4
    with_margin, _ = loss_fn(jnp.asarray(rewards), jnp.asarray(valid), margin=0.5)
    np.testing.assert_allclose(with_margin, enumerated_loss(rewards, lengths, margin=0.5), rtol=1e-5)


def test_tied_responses_carry_no_preference():
    rewards = np.array([[2.0, 0.5, 0.7, -1.0], [1.0, 1.0, 1.0, 0.0]])
    ranks = [ranks_from_scores([1.0, 0.5, 0.5, 0.0]), ranks_from_scores([3.0, 3.0, 3.0, 3.0])]
    assert ranks == [[0, 1, 1, 2], [0, 0, 0, 0]]
    valid = jnp.ones((2, 4), jnp.int32)
    loss, aux = loss_fn(jnp.asarray(rewards), valid, jnp.asarray(ranks))
    # Prompt 2 is all ties: no pairs, and it drops out of the mean instead of counting as a zero loss.
    np.testing.assert_allclose(loss, enumerated_loss(rewards, [4, 4], ranks), rtol=1e-5)
    assert aux["pairs"] == 5


def test_loss_gradient_raises_better_responses():
    rewards = jnp.zeros((1, 4))
    grad = jax.jit(jax.grad(lambda r: ranking_loss(r, jnp.ones((1, 4)))[0]))(rewards)[0]
    # From zero rewards: d/dr_i = (#worse - #better) × (-σ(0)) / C(4, 2) for the i-th best.
    np.testing.assert_allclose(grad, np.array([-3, -1, 1, 3]) * 0.5 / 6, rtol=1e-6)


score = nnx.jit(reward_scores)


@pytest.fixture(scope="module")
def reward_model():
    # The shapes of the other training tests' models, so initialisation compiles once per session.
    cfg = ModelConfig(
        vocab_size=12, d_model=16, n_layers=1, n_heads=2, max_seq_len=16, scalar_heads=("reward",)
    )
    return make_model(cfg, 0)


def test_one_forward_pass_per_response_and_reward_read_at_the_last_real_token(reward_model):
    prompts = [[5, 6, 7], [8]]
    ranked = [[[3, 2], [4, 4, 2], [9]], [[3, 3, 3, 3, 2], [1, 2]]]
    batch = pack_rankings(prompts, ranked, k=3, length=8, pad_id=0)
    assert batch["tokens"].shape == (2, 3, 8)
    np.testing.assert_array_equal(batch["valid"], [[1, 1, 1], [1, 1, 0]])
    flat_tokens, flat_mask = batch["tokens"].reshape(6, 8), batch["mask"].reshape(6, 8)
    right = score(reward_model, jnp.asarray(flat_tokens), jnp.asarray(flat_mask))  # (6,)
    # The same rows left-padded (positions follow the mask) give the same rewards.
    lengths = flat_mask.sum(1)
    left_tokens = np.stack([np.roll(t, 8 - n) for t, n in zip(flat_tokens, lengths, strict=True)])
    left_mask = np.stack([np.roll(m, 8 - n) for m, n in zip(flat_mask, lengths, strict=True)])
    np.testing.assert_array_equal(last_token_index(jnp.asarray(left_mask)), np.full(6, 7))
    left = score(reward_model, jnp.asarray(left_tokens), jnp.asarray(left_mask))
    np.testing.assert_allclose(left[:5], right[:5], rtol=1e-5, atol=1e-6)

    # The training loss runs the K responses of every prompt as B*K rows and pairs them up afterwards.
    loss, aux = nnx.jit(reward_model_loss)(reward_model, {k: jnp.asarray(v) for k, v in batch.items()})
    want, _ = ranking_loss(right.reshape(2, 3), jnp.asarray(batch["valid"]))
    np.testing.assert_allclose(loss, want, rtol=1e-5)
    assert aux["pairs"] == 3 + 1


def test_pack_rankings_marks_ties_and_rejects_overlong_rows():
    batch = pack_rankings([[1]], [[[2], [3], [4]]], k=4, length=4, pad_id=0, scores=[[1.0, 0.5, 0.5]])
    np.testing.assert_array_equal(batch["ranks"][0, :3], [0, 1, 1])
    with pytest.raises(ValueError, match="ranking 0, response 1.*longer than the context of 4"):
        pack_rankings([[1, 2]], [[[3], [3, 4, 5]]], k=2, length=4, pad_id=0)
    with pytest.raises(ValueError, match="not best first"):
        pack_rankings([[1]], [[[2], [3]]], k=2, length=4, pad_id=0, scores=[[0.0, 1.0]])


def test_accuracy_and_calibration_on_held_out_comparisons():
    valid = jnp.ones((1, 3))
    rewards = jnp.array([[2.0, 0.0, 1.0]])  # pairs (0>1) right, (0>2) right, (1>2) wrong
    np.testing.assert_allclose(jax.jit(pairwise_accuracy)(rewards, valid), 2 / 3, rtol=1e-6)
    # Confidences σ(2), σ(1), σ(1) ≈ 0.881, 0.731, 0.731 fall in bins 7 and 4 of 10 over [0.5, 1]:
    # bin 7 is right with confidence 0.881; bin 4 is half right with mean confidence 0.731.
    s1, s2 = 1 / (1 + np.exp(-1)), 1 / (1 + np.exp(-2))
    want = (1 / 3) * abs(1 - s2) + (2 / 3) * abs(0.5 - s1)
    ece = jax.jit(expected_calibration_error)
    np.testing.assert_allclose(ece(rewards, valid), want, rtol=1e-5)
    # Perfectly separated, very confident rewards are calibrated.
    assert ece(jnp.array([[50.0, 0.0, -50.0]]), valid) < 1e-6


def test_normalisation_gives_reference_responses_mean_zero_and_std_one(reward_model):
    rng = np.random.default_rng(0)
    ref = jnp.asarray(rng.normal(3.0, 2.0, size=64), jnp.float32)
    fit = jax.jit(fit_normalization, static_argnames="scale")
    shift = fit(ref)
    np.testing.assert_allclose(shift.gain, 1.0)
    np.testing.assert_allclose(jnp.mean(shift.apply(ref)), 0.0, atol=1e-5)
    norm = fit(ref, scale=True)
    out = norm.apply(ref)
    assert out.dtype == jnp.float32
    np.testing.assert_allclose([out.mean(), out.std()], [0.0, 1.0], atol=1e-5)
    # Masked entries are ignored.
    padded = jnp.concatenate([ref, jnp.full(8, 1e4)])
    masked = fit(padded, jnp.concatenate([jnp.ones(64), jnp.zeros(8)]), scale=True)
    np.testing.assert_allclose([masked.gain, masked.bias], [norm.gain, norm.bias], rtol=1e-5)
    # Folding the normalisation into the head scores normalised rewards directly.
    tokens = jnp.array([[1, 2, 3, 0, 0, 0, 0, 0]] * 3 + [[4, 5, 0, 0, 0, 0, 0, 0]] * 3)
    mask = (tokens > 0).astype(jnp.int32)  # (6, 8): the shape of the test above, so no new compile
    before = score(reward_model, tokens, mask)
    model = nnx.clone(reward_model)
    fold_normalization(model, norm)
    np.testing.assert_allclose(score(model, tokens, mask), norm.apply(before), rtol=1e-5, atol=1e-6)


def test_process_reward_is_the_log_probability_that_every_real_unit_is_right():
    logits = jnp.asarray([[2.0, -1.0, 30.0], [0.5, 0.0, 0.0]])
    mask = jnp.asarray([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    want = [log_sigmoid(2.0) + log_sigmoid(-1.0), log_sigmoid(0.5)]
    np.testing.assert_allclose(process_reward(logits, mask), want, rtol=1e-6)


def test_process_reward_model_loss_ranks_responses_by_their_units_and_ignores_padding_units(reward_model):
    rng = np.random.default_rng(0)
    b, k, u, w = 2, 3, 4, 6
    views = rng.integers(3, 12, size=(b, k, u, w)).astype(np.int32)
    view_mask = (np.arange(w) < rng.integers(1, w + 1, size=(b, k, u, 1))).astype(np.int32)
    unit_mask = np.asarray(np.arange(u) < rng.integers(1, u + 1, size=(b, k, 1)), np.float32)
    batch = {
        "views": views,
        "view_mask": view_mask,
        "unit_mask": unit_mask,
        "valid": np.ones((b, k), np.int32),
        "ranks": np.asarray([[0, 1, 2], [0, 0, 1]], np.int32),
    }
    loss, aux = nnx.jit(process_reward_model_loss)(
        reward_model, {key: jnp.asarray(v) for key, v in batch.items()}
    )
    # written out: each unit scored alone as one row, summed in log-sigmoid over the response's real units
    rewards = np.zeros((b, k))
    for i, j, t in itertools.product(range(b), range(k), range(u)):
        if unit_mask[i, j, t]:
            s = score(reward_model, jnp.asarray(views[i, j, t][None]), jnp.asarray(view_mask[i, j, t][None]))
            rewards[i, j] += log_sigmoid(float(s[0]))
    want = enumerated_loss(rewards, [k, k], ranks=batch["ranks"])
    np.testing.assert_allclose(loss, want, rtol=1e-4)
    assert aux["pairs"] == 3 + 2
    # whatever a padding unit holds does not change the loss
    padded = {**batch, "views": np.where(unit_mask[..., None] > 0, views, 7)}
    again, _ = nnx.jit(process_reward_model_loss)(
        reward_model, {key: jnp.asarray(v) for key, v in padded.items()}
    )
    np.testing.assert_allclose(again, loss, rtol=1e-6)


def test_generative_unit_scores_add_the_log_likelihood_of_the_units_own_tokens(reward_model):
    from oversight.training.sft import token_logprobs

    views = jnp.asarray([[[1, 5, 6, 9, 4, 0], [1, 7, 9, 3, 0, 0]]], jnp.int32)  # (1, U=2, W=6)
    mask = (views > 0).astype(jnp.int32)
    unit = jnp.asarray(
        [[[0, 0, 0, 1, 1, 0], [0, 0, 0, 1, 0, 0]]], jnp.float32
    )  # the tokens after the context
    plain = nnx.jit(unit_scores)(reward_model, views, mask)
    generative = nnx.jit(unit_scores)(reward_model, views, mask, unit_tokens=unit)
    logp = token_logprobs(reward_model, views[0], mask[0])  # (U, W-1): token t+1 given 0..t
    want = plain[0] + jnp.asarray([logp[0, 2] + logp[0, 3], logp[1, 2]])
    np.testing.assert_allclose(generative[0], want, rtol=1e-5)


def test_generative_reward_adds_the_log_likelihood_of_the_response_tokens_only(reward_model):
    from oversight.training.sft import token_logprobs

    prompts = [[5, 6, 7], [8]]
    ranked = [[[3, 2], [4, 4, 2]], [[3, 3, 2], [1, 2]]]
    batch = pack_rankings(prompts, ranked, k=2, length=8, pad_id=0, generative=True)
    # The response tokens, not the prompt's: rows are prompt + response, right-padded.
    np.testing.assert_array_equal(batch["scored_tokens"][0, 1], [0, 0, 0, 1, 1, 1, 0, 0])
    np.testing.assert_array_equal(batch["scored_tokens"][1, 0], [0, 1, 1, 1, 0, 0, 0, 0])
    assert "scored_tokens" not in pack_rankings(prompts, ranked, k=2, length=8, pad_id=0)

    tokens, mask = (jnp.asarray(batch[key].reshape(4, 8)) for key in ("tokens", "mask"))
    scored = jnp.asarray(batch["scored_tokens"].reshape(4, 8))
    plain = score(reward_model, tokens, mask)
    generative = nnx.jit(reward_scores)(reward_model, tokens, mask, scored_tokens=scored)
    logp = np.asarray(token_logprobs(reward_model, tokens, mask))  # (4, 7): token t+1 given 0..t
    want = [plain[0] + logp[0, 2:4].sum(), plain[1] + logp[1, 2:5].sum()]  # prompt 0: 3 tokens, then response
    np.testing.assert_allclose(generative[:2], want, rtol=1e-5)
    assert np.all(np.asarray(generative) < np.asarray(plain))  # log-likelihoods are negative

    # The loss ranks the generative scores.
    loss, _ = nnx.jit(reward_model_loss)(reward_model, {k: jnp.asarray(v) for k, v in batch.items()})
    want_loss, _ = ranking_loss(generative.reshape(2, 2), jnp.asarray(batch["valid"]))
    np.testing.assert_allclose(loss, want_loss, rtol=1e-5)


def test_a_normalised_generative_reward_model_scores_gain_times_its_whole_score_plus_bias(reward_model):
    """Normalisation must scale the likelihood term too: folding the gain into the head alone would weigh
    head and likelihood differently from the ranking loss that trained them together, and miss mean 0, std 1."""
    rng = np.random.default_rng(3)
    tokens = jnp.asarray(rng.integers(1, 12, size=(6, 8)), jnp.int32)
    mask = jnp.ones_like(tokens)
    scored = jnp.asarray(np.tile([0, 0, 0, 1, 1, 1, 1, 1], (6, 1)), jnp.int32)  # 3 prompt tokens, 5 response
    generative = nnx.jit(reward_scores, static_argnames="head")
    raw = generative(reward_model, tokens, mask, "reward", scored)
    norm = fit_normalization(raw, scale=True)
    model = nnx.clone(reward_model)
    fold_normalization(model, norm)
    rm = RewardParams(nnx.split(model)[1], norm.gain)
    out = generative(nnx.merge(nnx.split(model)[0], rm.params), tokens, mask, "reward", scored, rm.lm_scale)
    np.testing.assert_allclose(out, norm.apply(raw), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose([np.mean(out), np.std(out)], [0.0, 1.0], atol=1e-4)
