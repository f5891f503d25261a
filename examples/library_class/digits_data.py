"""A data factory for route 2: scikit-learn's 8x8 digits as (train_set, val_set, num_classes).

Any function (or class) works the same way: it takes the spec's ``data.kwargs`` and returns two
``torch.utils.data.Dataset`` objects whose items are ``(image, label)`` pairs, an image a float tensor
of shape (channels, height, width), and the number of classes.
"""
import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch.utils.data import TensorDataset


def digits(val_fraction: float = 0.2, seed: int = 0):
    X, y = load_digits(return_X_y=True)
    X_tr, X_va, y_tr, y_va = train_test_split(X, y, test_size=val_fraction, stratify=y, random_state=seed)
    mean, std = X_tr.mean(), X_tr.std()

    def to_set(X, y):
        x = torch.tensor((X - mean) / std, dtype=torch.float32).view(-1, 1, 8, 8)   # (N, 1, 8, 8)
        return TensorDataset(x, torch.tensor(np.asarray(y), dtype=torch.long))

    return to_set(X_tr, y_tr), to_set(X_va, y_va), 10
