"""A dataset from the user's own code: ``data: {name: python, factory: "package.module:callable"}``.

The factory is called with ``data.kwargs`` and returns the training and validation sets and the
number of classes: a ``Datasets(train, val, num_classes)`` or the plain tuple it is (a NamedTuple).
Each set is a ``torch.utils.data.Dataset`` (``__len__`` and ``__getitem__``) whose items are
``(x, label)`` pairs of a tensor and an int (or a 0-d long tensor), or dicts of tensors with a
``labels`` key (Hugging Face style, passed to the model as keyword arguments). ``x`` of shape
(C, H, W) makes an image dataset: ``in_chans`` = C and ``img_size`` = H for the models sized from it.
"""
from __future__ import annotations

from typing import Any, NamedTuple, Optional

import torch

from .common import DatasetError, DatasetInfo


class Datasets(NamedTuple):
    """What a data factory returns (a plain ``(train, val, num_classes)`` tuple is the same)."""

    train: Any
    val: Any
    num_classes: int


def _is_dataset(x) -> bool:
    return hasattr(x, "__len__") and hasattr(x, "__getitem__")


def describe(train, num_classes: int, name: str = "python") -> DatasetInfo:
    """The ``DatasetInfo`` of a user's dataset, from its first training item."""
    item = train[0]
    if isinstance(item, dict):
        return DatasetInfo(name, 0, 0, num_classes, kind="text")
    x = item[0] if isinstance(item, (tuple, list)) else item
    if isinstance(x, torch.Tensor) and x.ndim == 3:
        return DatasetInfo(name, int(x.shape[-2]), int(x.shape[0]), num_classes, kind="image")
    return DatasetInfo(name, 0, 0, num_classes, kind="tensor")


def load_python(*, factory: Optional[str] = None, kwargs: Optional[dict] = None, code: Optional[str] = None,
                **_) -> tuple[Any, Any, DatasetInfo]:
    """``(train_set, val_set, DatasetInfo)`` from the user's data factory (see the module docstring)."""
    from ..usercode import UserCodeError, import_factory

    if not factory:
        raise DatasetError("data.name python needs data.factory ('package.module:callable' returning "
                           "(train_set, val_set, num_classes))")
    fn = import_factory(factory, code, "data.factory")
    out = fn(**(kwargs or {}))
    if not (isinstance(out, tuple) and len(out) == 3):
        raise UserCodeError(f"data.factory {factory!r} returned a {type(out).__name__}; it must return "
                            f"(train_set, val_set, num_classes)")
    train, val, num_classes = out
    for what, value in (("train_set", train), ("val_set", val)):
        if not _is_dataset(value):
            raise UserCodeError(f"data.factory {factory!r}: its {what} is a {type(value).__name__}, not a dataset "
                                f"(an object with __len__ and __getitem__)")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise UserCodeError(f"data.factory {factory!r}: num_classes must be an int >= 1, but got {num_classes!r}")
    if len(train) == 0 or len(val) == 0:
        raise UserCodeError(f"data.factory {factory!r}: an empty {'train_set' if len(train) == 0 else 'val_set'}")
    return train, val, describe(train, num_classes)
