"""Evidence channels: agents *request* evidence, the channel checks it against the hidden source.

`PixelChannel` reads a requested pixel's true value (so every reveal is verified); `QuoteChannel` marks a
quote verified only if it occurs in the passage after `normalise` (a paraphrase is unverified). Judges see
the resulting `Evidence` records, never the source.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np


def normalise(text: str) -> str:
    """Text as quote verification compares it: Unicode-folded, lower-case, punctuation as spaces, one space.

    Curly and straight quotes, dashes and case differences between a quote and its passage are formatting,
    not content, so they must not make a verbatim quote fail (Khan et al. 2024 normalise the same way).
    """
    if not isinstance(text, str):
        raise TypeError(f"normalise expects a string, got {type(text).__name__}")
    text = unicodedata.normalize("NFKC", text).casefold()
    chars = (" " if unicodedata.category(c)[0] in "PS" else c for c in text)  # punctuation and symbols
    return " ".join("".join(chars).split())


def verify_quote(quote: str, passage: str) -> bool:
    """True when the quote occurs word-for-word in the passage after `normalise` (whole words only)."""
    q = normalise(quote)
    return bool(q) and f" {q} " in f" {normalise(passage)} "


@dataclass(frozen=True)
class Evidence:
    # "pixel" or "quote".
    kind: str
    # pixel: (index, value read from the source); quote: the text as the agent gave it.
    content: Any
    # Checked against the source. Judges should discount unverified evidence.
    verified: bool


class EvidenceChannel(Protocol):
    """Checks an agent's evidence request against the hidden source."""

    def check(self, source: Any, request: Any) -> Evidence: ...

    def cost(self, request: Any) -> int:
        """Characters the request uses from a turn's length budget."""
        ...


class QuoteChannel:
    """Quotes from a hidden passage, each marked verified or unverified (a paraphrase is unverified)."""

    def check(self, source: Any, request: Any) -> Evidence:
        if not isinstance(request, str):
            raise TypeError(f"a quote request must be a string, got {type(request).__name__}: {request!r}")
        if not isinstance(source, str):
            raise TypeError(f"QuoteChannel needs a passage (str) as the source, got {type(source).__name__}")
        return Evidence("quote", request, verify_quote(request, source))

    def cost(self, request: Any) -> int:
        return len(request)


class PixelChannel:
    """Pixel reveals: the agent names a pixel, the channel reads its true value, so every reveal is verified.

    With `nonzero_only` (Irving et al. 2018 revealed only nonzero pixels, the judge is trained on those) a
    request for a zero pixel is a rule violation and raises.
    """

    def __init__(self, nonzero_only: bool = True):
        self.nonzero_only = nonzero_only

    def check(self, source: Any, request: Any) -> Evidence:
        image = np.asarray(source).reshape(-1)  # (P,)
        if isinstance(request, bool) or not isinstance(request, int | np.integer):
            raise TypeError(f"a pixel request must be an integer index, got {type(request).__name__}")
        i = int(request)
        if not 0 <= i < image.size:
            raise ValueError(f"pixel request {i} is outside the image's {image.size} pixels")
        if self.nonzero_only and image[i] == 0:
            raise ValueError(
                f"pixel request {i} names a zero pixel; this channel reveals nonzero pixels only"
            )
        return Evidence("pixel", (i, float(image[i])), True)

    def cost(self, request: Any) -> int:
        return 0
