"""Image datasets: ``digits`` (scikit-learn's bundled 8x8 digits), CIFAR-10/100 read from the
python-version batches, and an ImageFolder tree (``train/`` and ``val/`` class folders).
"""
from __future__ import annotations

import pickle
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, TensorDataset

from .common import DatasetError, DatasetInfo
from .digits import read_digits, stratified_split


def load_digits(seed: int = 0, val_fraction: float = 0.2,
                classes: Optional[Sequence[int]] = None) -> tuple[TensorDataset, TensorDataset, DatasetInfo]:
    """scikit-learn's 1,797 8x8 digit images, standardised, split stratified by ``seed``.

    ``classes`` keeps only those digits, relabelled 0, 1, ... in the order given (a transfer task:
    pre-train on [0, 1, 2, 3, 4], fine-tune on [5, 6, 7, 8, 9]). The split and the standardisation
    are those of all ten digits, so both halves see the same preprocessing.
    """
    X, y = read_digits()
    train, val = stratified_split(y, val_fraction, seed)       # scikit-learn's split (data/digits.py)
    X_tr, X_va, y_tr, y_va = X[train], X[val], y[train], y[val]
    mean, std = X_tr.mean(), X_tr.std()
    num_classes = 10
    if classes is not None:
        classes = [int(c) for c in classes]
        if not classes or len(set(classes)) != len(classes) or not all(0 <= c <= 9 for c in classes):
            raise DatasetError(f"digits: data.classes must be distinct digits 0-9, but got {classes}")
        relabel = np.full(10, -1)
        relabel[classes] = np.arange(len(classes))
        keep_tr, keep_va = np.isin(y_tr, classes), np.isin(y_va, classes)
        X_tr, y_tr, X_va, y_va = X_tr[keep_tr], relabel[y_tr[keep_tr]], X_va[keep_va], relabel[y_va[keep_va]]
        num_classes = len(classes)

    def to_tensors(X, y):
        x = torch.tensor((X - mean) / std, dtype=torch.float32).view(-1, 1, 8, 8)   # (N, 1, 8, 8)
        return TensorDataset(x, torch.tensor(y, dtype=torch.long))

    return to_tensors(X_tr, y_tr), to_tensors(X_va, y_va), DatasetInfo("digits", 8, 1, num_classes)


# ----------------------------------------------------------------------------------------------- images

AUGMENTS = (None, "none", "basic", "strong")
CIFAR_MEAN = {"cifar10": (0.4914, 0.4822, 0.4465), "cifar100": (0.5071, 0.4865, 0.4409)}
CIFAR_STD = {"cifar10": (0.2470, 0.2435, 0.2616), "cifar100": (0.2673, 0.2564, 0.2762)}
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _check_augment(augment) -> Optional[str]:
    if augment not in AUGMENTS:
        raise DatasetError(f"unknown augment {augment!r}; use one of: none, basic, strong "
                           f"(data.augment in the config)")
    return None if augment == "none" else augment


def _need_root(data_root, name: str) -> Path:
    if data_root is None:
        raise DatasetError(f"dataset {name!r} needs a data folder but data_root is not set; "
                           f"set data.data_root in the config")
    return Path(data_root).expanduser()


def _image_transforms(augment, size: int, mean, std, *, resize: Optional[int], center_crop: bool,
                      basic_train: Callable[[], list]):
    """(train_transform, eval_transform) for ``augment`` at final side ``size``."""
    from torchvision import transforms as T

    base = []
    if resize is not None:
        base = [T.Resize(resize), T.CenterCrop(resize)] if center_crop else [T.Resize((resize, resize))]
    tail = [T.ToTensor(), T.Normalize(mean, std)]
    eval_tf = T.Compose(base + tail)
    if augment is None:
        return eval_tf, eval_tf
    if augment == "basic":
        return T.Compose(basic_train() + tail), eval_tf
    from timm.data import create_transform   # "strong": RandAugment + random erasing, as in DeiT/ViT recipes
    train_tf = create_transform(input_size=size, is_training=True, auto_augment="rand-m9-mstd0.5-inc1",
                                re_prob=0.25, mean=tuple(mean), std=tuple(std))
    return train_tf, eval_tf


class ArrayImageDataset(Dataset):
    """uint8 HWC images in memory -> (transform(PIL image), label)."""

    def __init__(self, images: np.ndarray, labels, transform=None):
        self.images, self.labels, self.transform = images, [int(v) for v in labels], transform

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        from PIL import Image

        img = Image.fromarray(self.images[i])
        return (self.transform(img) if self.transform is not None else img), self.labels[i]


_CIFAR = {  # name -> (folder, train files, test file, meta file, label key, class-names key, torchvision class)
    "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], "test_batch", "batches.meta",
                b"labels", b"label_names", "CIFAR10"),
    "cifar100": ("cifar-100-python", ["train"], "test", "meta", b"fine_labels", b"fine_label_names", "CIFAR100"),
}


def _unpickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            return pickle.load(f, encoding="bytes")
    except Exception as e:   # truncated / not a pickle
        raise DatasetError(f"could not read CIFAR batch {path}: {type(e).__name__}: {e}; replace it with the "
                           f"python-version file (or delete the folder and set data.download: true)") from e


def read_cifar(root: Path, name: str, download: bool = False):
    """(train_images, train_labels, test_images, test_labels, class_names) from the python-version batches."""
    folder, train_files, test_file, meta_file, label_key, names_key, tv_cls = _CIFAR[name]
    base = root / folder
    needed = [base / f for f in train_files + [test_file, meta_file]]
    missing = [p for p in needed if not p.is_file()]
    if missing and download:
        import torchvision

        getattr(torchvision.datasets, tv_cls)(str(root), train=True, download=True)
        missing = [p for p in needed if not p.is_file()]
    if not base.is_dir():
        raise DatasetError(f"{name}: folder {base} not found; put the python-version batches ({folder}) "
                           f"there, or set data.download: true")
    if missing:
        raise DatasetError(f"{name}: missing {', '.join(str(p) for p in missing)} (looked in {base}); put the "
                           f"CIFAR python-version batches ({', '.join(train_files + [test_file, meta_file])}) "
                           f"there, or set data.download: true")

    def read(files):
        xs, ys = [], []
        for f in files:
            d = _unpickle(base / f)
            if b"data" not in d or label_key not in d:
                raise DatasetError(f"{base / f}: expected keys b'data' and {label_key!r}, found "
                                   f"{sorted(d)}; this is not a CIFAR python-version batch for {name}")
            x = np.asarray(d[b"data"], dtype=np.uint8)
            if x.ndim != 2 or x.shape[1] != 3072 or len(d[label_key]) != len(x):
                raise DatasetError(f"{base / f}: data has shape {x.shape} with {len(d[label_key])} labels; "
                                   f"expected (N, 3072) uint8 and N labels")
            xs.append(x.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
            ys.extend(int(v) for v in d[label_key])
        return np.ascontiguousarray(np.concatenate(xs)), ys

    x_tr, y_tr = read(train_files)
    x_te, y_te = read([test_file])
    meta = _unpickle(base / meta_file)
    names = [n.decode() if isinstance(n, bytes) else str(n) for n in meta.get(names_key, [])]
    return x_tr, y_tr, x_te, y_te, names


def _load_cifar(name: str, *, data_root=None, augment=None, download=False, image_size=None, **_):
    augment = _check_augment(augment)
    root = _need_root(data_root, name)
    x_tr, y_tr, x_te, y_te, names = read_cifar(root, name, download)
    num_classes = 10 if name == "cifar10" else 100
    size = image_size or 32

    def basic():
        from torchvision import transforms as T

        pre = [T.Resize((size, size))] if image_size else []
        return pre + [T.RandomCrop(size, padding=size // 8), T.RandomHorizontalFlip()]

    train_tf, eval_tf = _image_transforms(augment, size, CIFAR_MEAN[name], CIFAR_STD[name], resize=image_size,
                                          center_crop=False, basic_train=basic)
    return (ArrayImageDataset(x_tr, y_tr, train_tf), ArrayImageDataset(x_te, y_te, eval_tf),
            DatasetInfo(name, size, 3, num_classes))


def load_cifar10(**kw):
    return _load_cifar("cifar10", **kw)


def load_cifar100(**kw):
    return _load_cifar("cifar100", **kw)


def load_imagefolder(*, data_root=None, augment=None, image_size=None, **_):
    """``data_root/train/<class>/*`` and ``data_root/val/<class>/*`` (torchvision ImageFolder)."""
    from torchvision import transforms as T
    from torchvision.datasets import ImageFolder

    augment = _check_augment(augment)
    root = _need_root(data_root, "imagefolder")
    size = image_size or 224
    for split in ("train", "val"):
        if not (root / split).is_dir():
            raise DatasetError(f"imagefolder: missing folder {root / split}; lay the images out as "
                               f"{root}/train/<class>/<image> and {root}/val/<class>/<image>")
    train_tf, eval_tf = _image_transforms(
        augment, size, IMAGENET_MEAN, IMAGENET_STD, resize=size, center_crop=True,
        basic_train=lambda: [T.RandomResizedCrop(size), T.RandomHorizontalFlip()])
    sets = {}
    for split, tf in (("train", train_tf), ("val", eval_tf)):
        try:
            sets[split] = ImageFolder(str(root / split), transform=tf)
        except (FileNotFoundError, RuntimeError) as e:
            raise DatasetError(f"imagefolder: {root / split} holds no usable images ({e}); put images in "
                               f"{root / split}/<class>/") from e
    if sets["train"].classes != sets["val"].classes:
        raise DatasetError(f"imagefolder: class folders differ between {root / 'train'} "
                           f"({sets['train'].classes}) and {root / 'val'} ({sets['val'].classes}); "
                           f"give both splits the same class sub-folders")
    return sets["train"], sets["val"], DatasetInfo("imagefolder", size, 3, len(sets["train"].classes))
