"""The digit images every zoo is made from: scikit-learn's bundled 8x8 digits (1,797 images).

The train/test split used to train zoo networks is fixed: 1,437 training and 360 test images,
stratified by class, drawn with seed 0 whatever the zoo's own seed is, so that accuracies of all
zoos are measured on the same held-out images.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
from torch import Tensor

NUM_IMAGES = 1797
TEST_SIZE = 360
SPLIT_SEED = 0


@lru_cache(maxsize=1)
def _load() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    return d.data.astype(np.float32) / 16.0, d.target.astype(np.int64)


def images() -> tuple[Tensor, Tensor]:
    """All 1,797 images as ``[1797, 64]`` float32 in ``[0, 1]`` and their labels ``[1797]`` long."""
    x, y = _load()
    return torch.from_numpy(x.copy()), torch.from_numpy(y.copy())


@lru_cache(maxsize=1)
def split_indices() -> tuple[np.ndarray, np.ndarray]:
    """The fixed (train, test) index arrays into :func:`images`: 1,437 and 360 indices."""
    from sklearn.model_selection import train_test_split

    _, y = _load()
    train, test = train_test_split(np.arange(len(y)), test_size=TEST_SIZE, stratify=y,
                                   random_state=SPLIT_SEED)
    return np.sort(train), np.sort(test)


def classification_split() -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(x_train [1437,1,8,8], y_train, x_test [360,1,8,8], y_test)`` for training zoo networks."""
    x, y = images()
    train, test = split_indices()
    x = x.view(-1, 1, 8, 8)
    return x[train], y[train], x[test], y[test]


def dataset(split: str) -> tuple[Tensor, Tensor]:
    """``(x [n, 1, 8, 8], y [n])`` of the fixed ``"train"`` or ``"test"`` split (the edit
    commands' ``--eval digits`` / ``--data digits``). Raises ValueError for another split."""
    x_train, y_train, x_test, y_test = classification_split()
    if split == "train":
        return x_train, y_train
    if split == "test":
        return x_test, y_test
    raise ValueError(f"unknown digits split '{split}'; use 'train' or 'test'")
