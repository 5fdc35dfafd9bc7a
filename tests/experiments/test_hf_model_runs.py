"""Every text experiment runs a few steps on what a user's own model looks like: a random-weight Hugging Face
Llama checkpoint with a byte-level BPE tokenizer and a chat template, instead of the built-in character model
and tokenizer. Each run must finish, record the imported architecture, and feed the model chat-formatted
prompts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import orbax.checkpoint as ocp
import pytest

from oversight.tasks import available_tasks, get_task

CHAT = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
D, L, H, K, F = 32, 1, 2, 1, 64


def _train_bpe(folder: Path) -> int:
    """A byte-level BPE trained on the built-in tasks' text, saved with its chat template; its vocabulary size."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    texts = []
    for name in available_tasks():
        for p in get_task(name).sample(40, 1, seed=0):
            texts += [p.prompt, p.solution]
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=480,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    core.train_from_iterator(texts, trainer)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token="<|im_start|>", eos_token="<|im_end|>", pad_token="<|endoftext|>"
    )
    tok.chat_template = CHAT
    tok.save_pretrained(folder)
    return len(tok)


def _random_llama(folder: Path, vocab: int, llama_weights) -> None:
    from safetensors.numpy import save_file

    config = {"architectures": ["LlamaForCausalLM"], "hidden_size": D, "num_hidden_layers": L,
              "num_attention_heads": H, "num_key_value_heads": K, "intermediate_size": F, "vocab_size": vocab,
              "max_position_embeddings": 1024, "tie_word_embeddings": True, "rms_norm_eps": 1e-5,
              "bos_token_id": 1, "eos_token_id": 2}  # fmt: skip
    (folder / "config.json").write_text(json.dumps(config))
    rng = np.random.default_rng(0)
    tensors = llama_weights(
        rng, vocab=vocab, width=D, layers=L, heads=H, kv_heads=K, mlp=F, tied=True, std=0.05
    )
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})


@pytest.fixture(scope="module")
def hf_model(tmp_path_factory, llama_weights) -> Path:
    folder = tmp_path_factory.mktemp("hf_model")
    _random_llama(folder, _train_bpe(folder), llama_weights)
    return folder


TRAIN = ["train.steps=4", "train.batch_size=8", "train.eval_every=4", "train.checkpoint_every=4"]
RUNS = {
    "sft": ["experiment=sft", "task.num_train=64", "task.num_eval=16", *TRAIN, "experiment.eval_samples=8"],
    "rlhf": [
        "experiment=rlhf", "task.num_train=128", "task.num_eval=16", *TRAIN, "experiment.sft_eval_samples=4",
        "experiment.max_new_tokens=16", "experiment.comparisons.prompts=16", "experiment.reward_model.train.steps=2",
        "experiment.reward_model.train.batch_size=4", "experiment.reward_model.train.warmup_steps=1",
        "experiment.ppo.iterations=2", "experiment.ppo.rollout_batch=8", "experiment.ppo.minibatches=2",
        "experiment.ppo.epochs=1", "experiment.ppo.eval_every=2", "experiment.ppo.checkpoint_every=2",
        "experiment.best_of_n.prompts=4", "experiment.best_of_n.max_n=2", "experiment.eval_prompts=8",
    ],
    "gdc_gap": [
        "experiment=gdc_gap", "task=addition", "task.num_train=64", "task.num_eval=48", *TRAIN,
        "experiment.eval_responses=16", "experiment.bon_problems=4", "experiment.bon_n=2",
    ],
    "critique_assist": [
        "experiment=critique_assist", "task=addition", "task.num_train=64", "task.num_eval=48", *TRAIN,
        "experiment.responses_per_set=8",
    ],
    "rrm": [
        "experiment=rrm", "task.num_train=64", "task.num_eval=48", "experiment.difficulties=[1,2,3]", *TRAIN,
        "experiment.num_comparisons=8", "experiment.eval_prompts=4", "experiment.best_of_n=2",
        "experiment.reward_model.train.steps=2", "experiment.overseer.budget=2", "experiment.overseer.miss_rate=0.5",
    ],
    "debate_text": [
        "experiment=debate_text", "experiment.eval_questions=8", "experiment.judge.questions=16",
        "experiment.judge.train.steps=4", "experiment.judge.train.warmup_steps=1",
        "experiment.judge.train.batch_size=8", "experiment.judge.model.d_model=16",
        "experiment.judge.model.n_layers=1", "experiment.rl.iterations=1", "experiment.rl.rollout_batch=4",
        "experiment.bootstrap=20", "experiment.judge.retrain_questions=4", "experiment.judge.retrain_steps=2",
        "experiment.rl.microbatches=2",
    ],
}  # fmt: skip
RUNS["rlhf_lora"] = [*RUNS["rlhf"], "model.lora_rank=4"]  # SFT, reward model and PPO on adapters, base frozen


@pytest.mark.parametrize("experiment", list(RUNS))
def test_experiment_runs_on_a_hugging_face_model_with_a_chat_template(
    experiment, hf_model, tmp_path, run_experiment
):
    run_dir = tmp_path / "run"
    model = ["model=hf", f"model.checkpoint={hf_model}", f"tokenizer={hf_model}"]
    run_experiment(run_dir, *model, *RUNS[experiment])
    rows = [json.loads(line) for line in (run_dir / "results.jsonl").read_text().splitlines()]
    assert rows and all(r["value"] is None or np.isfinite(r["value"]) for r in rows)
    summary = json.loads((run_dir / "summary.json").read_text())
    # the architecture built is the checkpoint's (config.yaml shows the schema's defaults for model=hf)
    assert (summary["model/family"], summary["model/d_model"], summary["model/n_layers"]) == ("llama", D, L)
    assert summary["model/checkpoint"] == str(hf_model)
    if experiment.endswith("_lora"):  # every stage's final weights hold the checkpoint's base weights
        from safetensors.numpy import load_file

        hf = load_file(str(hf_model / "model.safetensors"))
        for stage in ("sft", "rm", "ppo"):
            ckpt = run_dir / "checkpoints" / stage
            last = max(ckpt.iterdir(), key=lambda p: int(p.name)) / "state"
            model = ocp.StandardCheckpointer().restore(last.absolute())["0"]
            for m in (model["policy"], model["critic"]) if stage == "ppo" else (model,):
                np.testing.assert_array_equal(m["embed"]["value"], hf["model.embed_tokens.weight"])
                w_in = m["blocks"]["0"]["mlp"]["w_in"]["value"]
                np.testing.assert_array_equal(w_in, hf["model.layers.0.mlp.up_proj.weight"].T)
                assert np.any(m["blocks"]["0"]["mlp"]["lora_in"]["b"]["value"])  # the adapters trained


def test_prompts_go_through_the_chat_template(hf_model):
    from oversight.data.tokenizer import load_tokenizer
    from oversight.pipeline import tokenize_problems

    tok = load_tokenizer(str(hf_model))
    problem = get_task("arithmetic").sample(1, 1, seed=0)[0]
    prompts, responses = tokenize_problems([problem], tok)
    text = tok._tok.decode(prompts[0])
    assert text == f"<|im_start|>user\n{problem.prompt}<|im_end|>\n<|im_start|>assistant\n"
    assert responses[0][-1] == tok.eos_id == tok._tok.convert_tokens_to_ids("<|im_end|>")  # ends the turn
    assert len(prompts[0]) < len(text)  # BPE merges, not one token per character
