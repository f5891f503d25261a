"""Datasets of one trial: ``digits`` (the embedded default, scikit-learn's bundled 8x8 digits),
CIFAR-10/100 from the python-version batches, an ImageFolder tree (``images``), and local GLUE
tasks (``glue``), and the user's own (``python``: a factory returning ``(train, val, num_classes)``).

``load_dataset(name, ...)`` returns ``(train_set, val_set, DatasetInfo)``; every problem with the
data on disk is raised as ``DatasetError`` saying what is wrong, where it looked and how to fix it.
"""
from __future__ import annotations

from typing import Optional

from torch.utils.data import Subset

from .common import DatasetError, DatasetInfo
from .images import load_cifar10, load_cifar100, load_digits, load_imagefolder, read_cifar
from .python import Datasets, load_python

__all__ = ["DATASETS", "DatasetError", "DatasetInfo", "Datasets", "load_dataset", "load_digits", "read_cifar"]


def _load_digits(*, seed=0, val_fraction=0.2, classes=None, **_):
    if not 0.0 < val_fraction < 1.0:
        raise DatasetError(f"val_fraction must be in (0, 1), got {val_fraction=} (data.val_fraction)")
    return load_digits(seed=seed, val_fraction=val_fraction, classes=classes)


def _load_glue(**kw):
    from .glue import load_glue        # transformers' tokenizer: imported when GLUE is asked for

    return load_glue(**kw)


DATASETS: dict = {          # name -> loader; the names: tuning.trial.registry.DATASETS
    "digits": _load_digits,
    "cifar10": load_cifar10,
    "cifar100": load_cifar100,
    "imagefolder": load_imagefolder,
    "glue": _load_glue,
    "python": load_python,
}


def load_dataset(name: str, *, data_root=None, seed: int = 0, augment=None, download: bool = False,
                 image_size: Optional[int] = None, val_fraction: float = 0.2, tokenizer=None,
                 task: Optional[str] = None, max_length: int = 128, limit: Optional[int] = None,
                 classes: Optional[list] = None, factory: Optional[str] = None, kwargs: Optional[dict] = None,
                 code: Optional[str] = None):
    """``(train_set, val_set, DatasetInfo)`` for ``name`` (a key of ``DATASETS``; ``glue/<task>`` also works);
    ``classes`` keeps a subset of the classes, relabelled in the order given (digits only)."""
    key = str(name).lower()
    if key.startswith("glue/"):
        key, task = "glue", task or key.split("/", 1)[1]
    if key not in DATASETS:
        raise DatasetError(f"unknown dataset {name!r}; known datasets: {', '.join(sorted(DATASETS))} "
                           f"(set data.name in the config)")
    if classes is not None and key != "digits":
        raise DatasetError(f"data.classes (a class subset) is supported for digits only, but the dataset is {name!r}")
    if limit is not None and (not isinstance(limit, int) or limit < 1):
        raise DatasetError(f"limit must be a positive integer or None, got {limit!r}")
    train, val, info = DATASETS[key](data_root=data_root, seed=seed, augment=augment, download=download,
                                     image_size=image_size, val_fraction=val_fraction, tokenizer=tokenizer,
                                     task=task, max_length=max_length, limit=limit,
                                     **({} if classes is None else {"classes": classes}),
                                     **({} if factory is None else {"factory": factory, "kwargs": kwargs, "code": code}))
    if limit is not None and limit < len(train):
        train = Subset(train, range(limit))
    return train, val, info
