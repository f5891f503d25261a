"""scikit-learn's bundled digits and its stratified split, without importing scikit-learn (about 2.5 CPU
seconds in every trial process): the file it ships, read as ``sklearn.datasets.load_digits`` reads it, and
the split ``train_test_split(X, y, test_size=f, stratify=y, random_state=seed)`` draws, step for step
with the same random draws (``tests/trial/test_data.py`` checks both against scikit-learn's).
"""
from __future__ import annotations

import gzip
import importlib.util
import math
from pathlib import Path

import numpy as np


def read_digits() -> tuple[np.ndarray, np.ndarray]:
    """(X, y): the 1,797 images as rows of 64 float64 pixels and their int labels, from scikit-learn's file."""
    spec = importlib.util.find_spec("sklearn")              # finds the package without running its imports
    path = Path(spec.submodule_search_locations[0]) / "datasets" / "data" / "digits.csv.gz"
    with gzip.open(path, mode="rt", encoding="utf-8") as f:
        data = np.loadtxt(f, delimiter=",")
    return data[:, :-1], data[:, -1].astype(int, copy=False)


def _approximate_mode(class_counts: np.ndarray, n_draws: int, rng: np.random.RandomState) -> np.ndarray:
    """How many items of each class a split draws (scikit-learn's ``_approximate_mode``): the floored
    shares, then one more for the largest remainders, ties drawn at random."""
    continuous = class_counts / class_counts.sum() * n_draws
    floored = np.floor(continuous)
    need_to_add = int(n_draws - floored.sum())
    if need_to_add > 0:
        remainder = continuous - floored
        for value in np.sort(np.unique(remainder))[::-1]:
            (inds,) = np.where(remainder == value)
            add_now = min(len(inds), need_to_add)
            floored[rng.choice(inds, size=add_now, replace=False)] += 1
            need_to_add -= add_now
            if need_to_add == 0:
                break
    return floored.astype(int)


def stratified_split(y: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train indices, test indices) of scikit-learn's ``train_test_split(..., test_size=test_fraction,
    stratify=y, random_state=seed)`` (its ``StratifiedShuffleSplit``)."""
    n_test = math.ceil(test_fraction * len(y))
    n_train = len(y) - n_test
    _, y_indices, class_counts = np.unique(y, return_inverse=True, return_counts=True)
    class_indices = np.split(np.argsort(y_indices, kind="stable"), np.cumsum(class_counts)[:-1])
    rng = np.random.RandomState(seed)
    n_i = _approximate_mode(class_counts, n_train, rng)
    t_i = _approximate_mode(class_counts - n_i, n_test, rng)
    train, test = [], []
    for i in range(len(class_counts)):
        members = class_indices[i].take(rng.permutation(class_counts[i]), mode="clip")
        train.extend(members[: n_i[i]])
        test.extend(members[n_i[i]: n_i[i] + t_i[i]])
    return rng.permutation(train), rng.permutation(test)
