"""Datasets. ``digits`` is the embedded default: scikit-learn's bundled 8x8 digits."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.data import TensorDataset


@dataclass(frozen=True)
class DatasetInfo:
    """What a model needs to know about the data."""

    name: str
    image_size: int
    channels: int
    num_classes: int


def load_digits(seed: int = 0, val_fraction: float = 0.2) -> tuple[TensorDataset, TensorDataset, DatasetInfo]:
    """scikit-learn's 1,797 8x8 digit images, standardised, split stratified by ``seed``."""
    from sklearn.datasets import load_digits as sk_digits
    from sklearn.model_selection import train_test_split

    X, y = sk_digits(return_X_y=True)
    X_tr, X_va, y_tr, y_va = train_test_split(X, y, test_size=val_fraction, stratify=y, random_state=seed)
    mean, std = X_tr.mean(), X_tr.std()

    def to_tensors(X, y):
        x = torch.tensor((X - mean) / std, dtype=torch.float32).view(-1, 1, 8, 8)   # (N, 1, 8, 8)
        return TensorDataset(x, torch.tensor(y, dtype=torch.long))

    return to_tensors(X_tr, y_tr), to_tensors(X_va, y_va), DatasetInfo("digits", 8, 1, 10)
