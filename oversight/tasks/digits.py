"""Sparse-evidence image debate's world: scikit-learn's 8x8 digits, each question a true and a false label.

The hidden source is the image (64 pixels in [0, 1]); the two candidate answers are its true label and a
wrong one; the ground truth is the label. Evidence is the image's pixels (`oversight.protocols.PixelChannel`).
Irving, Christiano & Amodei (2018, §3.1) ran this game on MNIST; the digits ship inside scikit-learn, so
nothing is downloaded.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from oversight.protocols import Question

N_PIXELS = 64
N_CLASSES = 10


def load_split(test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x_train, y_train, x_test, y_test): the 1797 digits scaled to [0, 1], split by a seeded permutation."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)  # (1797, 64)
    y = digits.target.astype(np.int32)  # (1797,)
    order = np.random.default_rng(seed).permutation(len(y))
    n_test = int(round(test_fraction * len(y)))
    test, train = order[:n_test], order[n_test:]
    return x[train], y[train], x[test], y[test]


def make_questions(x: np.ndarray, y: np.ndarray, lies: Sequence[Sequence[int]]) -> list[Question]:
    """One question per image and false label: source the image, answers (true label, lie), id "i:lie".

    x: (N, 64); y: (N,); lies: the wrong label(s) claimed against each image.
    """
    return [
        Question(source=x[i], answers=(int(y[i]), int(lie)), correct=0, id=f"{i}:{lie}")
        for i, image_lies in enumerate(lies)
        for lie in image_lies
    ]
