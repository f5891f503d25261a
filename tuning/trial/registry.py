"""The names q3r-tune knows: techniques, model kinds and datasets, each declared once here.

As timm's model registry: a frozen info dataclass per entry, ``register`` and ``list_*``. The trial
spec's schema (``tuning.trial.spec``), the sweep's search space (``tuning.spec.space``), the report's
colours (``dashboards.style``) and ``q3r-tune demo`` read these entries; the code that builds an
entry registers itself under the same name (``techniques.register``, ``models.register``, the
loaders of ``data.DATASETS``), and a test checks both sides hold the same names. A new technique is
one ``TechniqueInfo`` here plus its builder; a new model kind or dataset, likewise.

Pure: no torch, so that the dashboards can read it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Generic, Iterator, Mapping, TypeVar

COMMON_PARAMS = ("lr", "weight_decay", "finetune")   # technique fields every technique's search space takes


@dataclass(frozen=True)
class TechniqueInfo:
    """A training technique: what it reads from the trial spec's ``technique`` section."""

    name: str
    summary: str
    params: tuple[str, ...] = ()        # TechniqueSpec fields it reads beyond COMMON_PARAMS: its search space
    extras: tuple[str, ...] = ()        # options ``build_technique`` passes through to it
    demo: Mapping = field(default_factory=dict)   # its hyperparameters in ``q3r-tune demo``


@dataclass(frozen=True)
class ModelKindInfo:
    """A ``model.kind``: how the network of a trial is built."""

    name: str
    summary: str
    fields: tuple[str, ...] = ()        # ModelSpec fields it reads (beyond kind, init and modules)
    required: tuple[str, ...] = ()      # ... of which these must be set


@dataclass(frozen=True)
class DatasetEntry:
    """A ``data.name``: where the training and validation sets come from."""

    name: str
    summary: str
    prefix: bool = False                # "glue/<task>" names a task of the "glue" dataset


I = TypeVar("I")


class Registry(Generic[I]):
    """Entries by name, in the order registered; ``get`` fails in one line naming the known ones."""

    def __init__(self, what: str):
        self.what = what
        self._entries: dict[str, I] = {}

    def register(self, info: I) -> I:
        if info.name in self._entries:
            raise ValueError(f"{self.what} {info.name!r} is registered twice")
        self._entries[info.name] = info
        return info

    def get(self, name: str) -> I:
        if name not in self._entries:
            raise ValueError(f"unknown {self.what} {name!r}; known: {self.names()}")
        return self._entries[name]

    def names(self) -> list[str]:
        return list(self._entries)

    def __contains__(self, name) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[I]:
        return iter(self._entries.values())


TECHNIQUES: Registry[TechniqueInfo] = Registry("technique")
MODEL_KINDS: Registry[ModelKindInfo] = Registry("model kind")
DATASETS: Registry[DatasetEntry] = Registry("dataset")

Q3R = ("lmbda", "target_rank", "period", "eps_schedule", "eps_steps", "eps_warmup", "svd")
Q3R_EXTRAS = ("eps_schedule", "svd", "power_iters", "oversample", "distributed")
# lmbda 5 in the demo: see the README's seed-averaged comparison
for _info in (
    TechniqueInfo("adamq3r", "AdamQ3R (the paper's Algorithm 2)", Q3R, Q3R_EXTRAS,
                  {"lmbda": 5.0, "target_rank": 0.1, "period": 5}),
    TechniqueInfo("adam_q3r_loss", "Adam on loss + lmbda * Q3R", Q3R, Q3R_EXTRAS,
                  {"lmbda": 5.0, "target_rank": 0.1, "period": 5}),
    TechniqueInfo("adamw", "the unregularized baseline", (), (), {"weight_decay": 0.05}),
    TechniqueInfo("lora", "rank-r(p) factors from scratch, or peft LoRA adapters when fine-tuning",
                  ("target_rank", "lora_rank", "lora_form", "lora_alpha"), ("lora_form", "lora_alpha", "lora_dropout"),
                  {"target_rank": 0.2}),
    TechniqueInfo("lorita", "products of depth matrices with weight decay alpha", ("depth", "alpha", "lorita_form"),
                  ("lorita_form",), {"depth": 2, "alpha": 0.1}),
):
    TECHNIQUES.register(_info)

for _info in (
    ModelKindInfo("vit", "a timm VisionTransformer from scratch, sized from the dataset",
                  ("size", "patch_size", "depth", "width", "heads")),
    ModelKindInfo("hf", "a Hugging Face sequence classifier from a local folder", ("path",), ("path",)),
    ModelKindInfo("timm", "any timm architecture by name, from scratch (pretrained=False)", ("name", "kwargs"),
                  ("name",)),
    ModelKindInfo("python", "any callable 'package.module:callable' that returns an nn.Module",
                  ("factory", "kwargs", "code"), ("factory",)),
):
    MODEL_KINDS.register(_info)

for _info in (
    DatasetEntry("digits", "scikit-learn's bundled 8x8 digits (embedded, the default)"),
    DatasetEntry("cifar10", "CIFAR-10 from the python-version batches in data_root"),
    DatasetEntry("cifar100", "CIFAR-100 from the python-version batches in data_root"),
    DatasetEntry("imagefolder", "an ImageFolder tree data_root/{train,val}/<class>/"),
    DatasetEntry("glue", "a local GLUE task (glue/<task>)", prefix=True),
    DatasetEntry("python", "any callable 'package.module:callable' returning (train, val, num_classes)"),
):
    DATASETS.register(_info)


def list_techniques() -> list[str]:
    return TECHNIQUES.names()


def list_model_kinds() -> list[str]:
    return MODEL_KINDS.names()


def list_datasets() -> list[str]:
    return DATASETS.names()
