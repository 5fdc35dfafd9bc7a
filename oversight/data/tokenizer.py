"""Tokenizers: a built-in character tokenizer for the synthetic tasks, and local Hugging Face tokenizers.

Both expose the same small interface (`Tokenizer`), so tasks, training and sampling never care which
one they hold. Nothing here reaches a network: Hugging Face tokenizers load from a local folder only.
"""

from __future__ import annotations

import string
from pathlib import Path
from typing import Protocol

from oversight.errors import UserError


class TokenizerError(UserError, ValueError):
    """A tokenizer folder that is missing or unusable here."""


class Tokenizer(Protocol):
    vocab_size: int
    pad_id: int
    bos_id: int
    eos_id: int

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids) -> str: ...

    def prompt_ids(self, text: str) -> list[int]: ...


class CharTokenizer:
    """One token per character: printable ASCII, newline and tab, plus <pad>, <bos>, <eos>, <unk>.

    Exact and tiny (vocabulary 101), which is what the synthetic tasks need: every digit, operator and
    pointer is its own token, so a flaw at character i is a flaw at token i.
    """

    SPECIALS = ("<pad>", "<bos>", "<eos>", "<unk>")

    def __init__(self) -> None:
        chars = "\n\t" + "".join(c for c in string.printable if c.isprintable())
        self._itos = list(self.SPECIALS) + list(chars)
        self._stoi = {c: i for i, c in enumerate(chars, start=len(self.SPECIALS))}
        self.vocab_size = len(self._itos)
        self.pad_id, self.bos_id, self.eos_id, self.unk_id = 0, 1, 2, 3

    def encode(self, text: str) -> list[int]:
        return [self._stoi.get(c, self.unk_id) for c in text]

    def decode(self, ids) -> str:
        return "".join(self._itos[i] for i in ids if int(i) >= len(self.SPECIALS))

    def prompt_ids(self, text: str) -> list[int]:
        """The ids a response to the prompt `text` follows: <bos> and the prompt."""
        return [self.bos_id, *self.encode(text)]


class HFTokenizer:
    """A Hugging Face tokenizer from a local folder (`tokenizer.json` / `tokenizer_config.json`) or a GGUF file.

    A GGUF file carries its tokenizer (vocabulary, merges, special tokens, chat template) in its metadata;
    transformers' GGUF converter builds the same fast tokenizer from it (the `gguf` package reads the file).
    """

    def __init__(self, path: str | Path) -> None:
        from transformers import AutoTokenizer

        path = Path(path)
        if path.suffix.lower() == ".gguf":
            if not path.is_file():
                raise TokenizerError(f"GGUF file {path} does not exist")
            from oversight.errors import require

            require("gguf", extra="gguf", feature="reading a tokenizer from a GGUF file")
            self._tok = AutoTokenizer.from_pretrained(
                str(path.parent), gguf_file=path.name, local_files_only=True, trust_remote_code=False
            )
        elif not path.is_dir():
            from oversight.models.pretrained import named_models

            raise TokenizerError(
                f"tokenizer folder {path} does not exist (nor is it a named pretrained model: {named_models()})"
            )
        else:
            self._tok = AutoTokenizer.from_pretrained(
                str(path), local_files_only=True, trust_remote_code=False
            )
        self.vocab_size = len(self._tok)
        eos = self._tok.eos_token_id
        if eos is None:
            raise TokenizerError(f"tokenizer in {path} defines no eos token; generation needs one to stop")
        self.eos_id = eos
        self.bos_id = self._tok.bos_token_id if self._tok.bos_token_id is not None else eos
        self.pad_id = self._tok.pad_token_id if self._tok.pad_token_id is not None else eos
        self.chat_template: str | None = self._tok.chat_template

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False)

    def decode(self, ids) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=True)

    def prompt_ids(self, text: str) -> list[int]:
        """The ids a response to the prompt `text` follows: with a chat template (an instruct model), the
        template's rendering of one user turn holding `text` and the assistant's turn opening (so the
        response's end, eos, closes that turn); without one, bos and the prompt."""
        if self.chat_template is None:
            return [self.bos_id, *self.encode(text)]
        turn = [{"role": "user", "content": text}]
        return list(
            self._tok.apply_chat_template(turn, add_generation_prompt=True, tokenize=True)["input_ids"]
        )

    def save(self, folder: str | Path) -> None:
        """Write tokenizer.json, tokenizer_config.json (and the chat template) into `folder`."""
        self._tok.save_pretrained(str(folder))


def load_tokenizer(name_or_path: str) -> Tokenizer:
    """`"char"` gives the built-in character tokenizer; anything else is a local Hugging Face folder, a GGUF
    file or a named pretrained model (`oversight.models.pretrained`)."""
    if name_or_path == "char":
        return CharTokenizer()
    from oversight.models.pretrained import resolve_checkpoint

    return HFTokenizer(resolve_checkpoint(name_or_path))
