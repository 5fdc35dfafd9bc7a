"""The built-in character tokenizer and local Hugging Face tokenizers behind one interface."""

import json

import pytest

from oversight.data.tokenizer import CharTokenizer, HFTokenizer, TokenizerError, load_tokenizer
from oversight.models import ModelConfig, check_vocab


def test_char_tokenizer_round_trips_task_text_one_token_per_character():
    tok = CharTokenizer()
    text = "chain: 7 +5 *3\n7+5=12\n12*3=36\nanswer 36\tdef f(x): return x<=2"
    ids = tok.encode(text)
    assert len(ids) == len(text)
    assert tok.decode(ids) == text
    assert tok.vocab_size == 101 and {tok.pad_id, tok.bos_id, tok.eos_id} == {0, 1, 2}
    assert tok.decode([tok.bos_id, *ids, tok.eos_id, tok.pad_id]) == text  # specials are dropped


def test_char_tokenizer_maps_unknown_characters_to_unk():
    tok = CharTokenizer()
    assert tok.encode("é→") == [tok.unk_id, tok.unk_id]


def _save_word_level_tokenizer(folder):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<eos>": 1, "hello": 2, "world": 3, "oversight": 4, "[UNK]": 5}
    core = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=core, eos_token="<eos>", pad_token="<pad>", unk_token="[UNK]"
    )
    fast.save_pretrained(folder)


def test_hugging_face_tokenizer_loads_from_a_local_folder(tmp_path):
    _save_word_level_tokenizer(tmp_path)
    tok = load_tokenizer(str(tmp_path))
    assert isinstance(tok, HFTokenizer)
    assert tok.encode("hello oversight world") == [2, 4, 3]
    assert tok.decode([2, 4, 1]) == "hello oversight"
    assert (tok.vocab_size, tok.eos_id, tok.pad_id, tok.bos_id) == (6, 1, 0, 1)  # no bos: falls back to eos


def test_missing_tokenizer_folder_is_a_clear_error(tmp_path):
    with pytest.raises(TokenizerError, match="no_such_folder"):
        load_tokenizer(str(tmp_path / "no_such_folder"))


def test_model_vocabulary_smaller_than_the_tokenizer_is_an_error():
    check_vocab(ModelConfig(vocab_size=101), CharTokenizer())
    check_vocab(ModelConfig(vocab_size=128), CharTokenizer())  # padded embeddings are fine
    with pytest.raises(ValueError, match="vocabulary size 64 is smaller than the tokenizer's 101"):
        check_vocab(ModelConfig(vocab_size=64), CharTokenizer())


def test_prompt_ids_follow_the_chat_template_when_there_is_one(tmp_path):
    assert CharTokenizer().prompt_ids("1+2") == [1, *CharTokenizer().encode("1+2")]
    _save_word_level_tokenizer(tmp_path)
    plain = load_tokenizer(str(tmp_path))
    assert plain.chat_template is None and plain.prompt_ids("hello world") == [1, 2, 3]  # bos (= eos here)

    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    config["chat_template"] = "{% for m in messages %}{{ m['role'] }} {{ m['content'] }} {% endfor %}"
    config["chat_template"] += "{% if add_generation_prompt %}oversight{% endif %}"
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    chat = load_tokenizer(str(tmp_path))
    # "user hello world oversight": the role word is unknown to this vocabulary, the opening is "oversight"
    assert chat.prompt_ids("hello world") == [5, 2, 3, 4]
