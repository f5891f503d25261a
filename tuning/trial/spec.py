"""The spec of one trial: four typed sections, loaded from YAML, validated when loaded (pydantic).

    data:      {name: digits, data_root: null, augment: null, ...}
    model:     {kind: vit, size: tiny, depth: 4, width: 64, ...}
    technique: {name: adamq3r, lr: 1.0e-3, lmbda: 1.0, target_rank: 0.1, period: 5, ...}
    train:     {epochs: 40, batch_size: 64, eval_every: 5, retentions: [...], seed: 0, ...}

Unknown keys and bad values raise ``SpecError`` naming the file (or the ``--set`` override), the
field, what is allowed and the value. The sweep spec (``tuning.spec.sweep``) reuses these sections.
"""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Union

import yaml
from pydantic import AfterValidator, Field, model_validator

from . import registry
from .specio import SpecError, Strict, apply_overrides, read_yaml, validate

__all__ = ["SpecError", "DataSpec", "ModelSpec", "TechniqueSpec", "TrainSpec", "TrialSpec", "TECHNIQUE_NAMES",
           "DATASET_NAMES", "MODEL_KINDS", "DEFAULT_RETENTIONS", "from_dict", "load", "dump"]

DEFAULT_RETENTIONS = (0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 1.0)
TECHNIQUE_NAMES = tuple(registry.list_techniques())     # the registries (tuning.trial.registry)
DATASET_NAMES = tuple(registry.list_datasets())
MODEL_KINDS = tuple(registry.list_model_kinds())

Positive = Annotated[int, Field(ge=1)]
NonNegative = Annotated[float, Field(ge=0)]
Fraction = Annotated[float, Field(gt=0, le=1)]
Lr = Annotated[float, Field(gt=0)]
EpsScheduleName = Literal["auto", "paper", "geometric", "linear", "warmup"]
SvdMode = Literal["warm", "exact"]
LoritaForm = Literal["input", "output"]


def _dataset(name: str) -> str:
    prefixes = [e.name for e in registry.DATASETS if e.prefix]
    if name.lower() not in DATASET_NAMES and not any(name.lower().startswith(f"{p}/") for p in prefixes):
        tasks = "".join(f" or {p}/<task>" for p in prefixes)
        raise ValueError(f"must be one of {list(DATASET_NAMES)}{tasks}, but got {name!r}")
    return name


def _factory(text: str) -> str:
    from .usercode import parse_factory

    parse_factory(text)
    return text


Factory = Annotated[str, AfterValidator(_factory)]
Kwargs = dict[str, Any]


def _rank(value: Union[int, float]) -> Union[int, float]:
    if (isinstance(value, int) and value >= 1) or (isinstance(value, float) and 0 < value <= 1):
        return value
    raise ValueError(f"must be a fraction in (0, 1] or an int rank >= 1, but got {value!r}")


TargetRank = Annotated[Union[int, float], AfterValidator(_rank)]


class DataSpec(Strict):
    """The dataset; a folder ``data_root`` for everything but the embedded digits."""

    name: Annotated[str, AfterValidator(_dataset)] = "digits"
    data_root: Optional[str] = None
    augment: Optional[Literal["none", "basic", "strong"]] = None
    download: bool = False
    image_size: Optional[Positive] = None       # resize (the paper's 224 px as an option)
    task: Optional[str] = None                  # GLUE task
    tokenizer: Optional[str] = None             # local tokenizer directory (GLUE)
    max_length: Positive = 128
    limit: Optional[Positive] = None            # keep the first N training items (smoke tests)
    classes: Optional[list[Annotated[int, Field(ge=0)]]] = Field(default=None, min_length=1)  # digits: a class subset, relabelled 0..
    factory: Optional[Factory] = Field(default=None, description=(
        "name python: 'package.module:callable' returning (train_set, val_set, num_classes); the module is found "
        "next to the spec file or on PYTHONPATH"))
    kwargs: Kwargs = Field(default_factory=dict, description="name python: keyword arguments of the data factory")
    code: Optional[str] = Field(default=None, description=(
        "the folder the factory's module is imported from first (then PYTHONPATH); null: the spec file's folder, "
        "which loading the spec writes here"))

    @model_validator(mode="after")
    def _factory_with_python(self):
        if self.name == "python" and self.factory is None:
            raise ValueError("factory must be set for name python ('package.module:callable' returning "
                             "(train_set, val_set, num_classes)), but it is not")
        if self.name != "python" and (self.factory is not None or self.kwargs or self.code):
            raise ValueError(f"factory, kwargs and code are read for name python only, but name is "
                             f"{self.name!r}")
        return self


class ModelSpec(Strict):
    """The network: a timm ViT from scratch (``vit``), a local Hugging Face classifier (``hf``), any timm
    architecture by name (``timm``) or any Python callable returning an nn.Module (``python``)."""

    kind: Literal[MODEL_KINDS] = "vit"
    size: Literal["tiny", "small", "base"] = "tiny"
    patch_size: Optional[Positive] = None
    depth: Optional[Positive] = None
    width: Optional[Positive] = None
    heads: Optional[Positive] = None
    path: Optional[str] = None                  # hf: a local model directory (weights) or config.json
    init: Optional[str] = None                  # vit: start from these weights (a .safetensors or torch state dict)
    name: Optional[str] = Field(default=None, description=(
        "kind timm: the architecture, as timm.create_model takes it (built with pretrained=False)"))
    factory: Optional[Factory] = Field(default=None, description=(
        "kind python: 'package.module:callable' returning an nn.Module (a class is a callable); the module is "
        "found next to the spec file or on PYTHONPATH"))
    kwargs: Kwargs = Field(default_factory=dict, description=(
        "kind timm / python: keyword arguments of the architecture or factory; num_classes, in_chans and img_size "
        "are filled from the dataset where it takes them and kwargs does not set them"))
    code: Optional[str] = Field(default=None, description=(
        "the folder the factory's module is imported from first (then PYTHONPATH); null: the spec file's folder, "
        "which loading the spec writes here"))
    modules: list[str] = Field(default_factory=list)   # Linear names / globs / presets Q3R regularizes; [] (the
                                                # default): every nn.Linear but the classifier head (q3r.targets)

    @model_validator(mode="after")
    def _fields_of_the_kind(self):
        info = registry.MODEL_KINDS.get(self.kind)
        missing = [f for f in info.required if getattr(self, f) in (None, "")]
        if missing:
            raise ValueError(f"{missing[0]} must be set for kind {self.kind} ({info.summary}), but it is not")
        for f in ("name", "factory", "kwargs", "code"):
            if getattr(self, f) and f not in info.fields:
                kinds = [k.name for k in registry.MODEL_KINDS if f in k.fields]
                raise ValueError(f"{f} is read for kind {' or '.join(kinds)} only, but kind is {self.kind!r}")
        return self


class TechniqueSpec(Strict):
    """The technique and its hyperparameters (each technique reads the fields it uses)."""

    name: Literal[TECHNIQUE_NAMES] = "adamq3r"
    lr: Lr = 1e-3
    weight_decay: NonNegative = 0.0
    lmbda: NonNegative = 0.1
    target_rank: TargetRank = 0.2               # a fraction p, or an int rank (fine-tuning)
    period: Positive = 5
    depth: Positive = 2                         # lorita: factors per matrix
    alpha: NonNegative = 0.1                    # lorita: weight decay of the factors
    lorita_form: LoritaForm = "input"           # lorita: input-side factors (the authors') or output-side identities
    lora_rank: Optional[Positive] = None        # lora fine-tuning rank (pre-training uses r(target_rank))
    finetune: bool = False                      # regularize Delta W on frozen pretrained weights
    eps_schedule: EpsScheduleName = "auto"      # Q3R techniques: the eps rule; auto = warmup if finetune else paper
    eps_steps: Optional[Positive] = None        # "linear": reweightings to 1e-5 (null: those of the trial)
    eps_warmup: Optional[Positive] = None       # "warmup": optimizer steps in which eps follows sigma_{r+1}
                                                # (null: the whole trial), then the paper's rule
    svd: SvdMode = "warm"                       # Q3R techniques: warm-started subspace iteration or full SVDs


class TrainSpec(Strict):
    """How the trial trains and is scored."""

    epochs: Positive = 40
    batch_size: Positive = 64
    eval_every: Positive = 5
    retentions: list[Fraction] = Field(default_factory=lambda: list(DEFAULT_RETENTIONS), min_length=1)
    seed: Annotated[int, Field(ge=0)] = 0
    threads: Positive = 1                       # torch CPU threads: the trial's CPU share
    device: Literal["auto", "cpu", "cuda"] = "auto"
    amp: bool = True                            # bfloat16 autocast, on GPU only
    grad_clip: Optional[Annotated[float, Field(gt=0)]] = None  # max gradient norm, on every device; null: none
    schedule: Literal["constant", "cosine"] = "constant"     # constant (the paper) or warmup + cosine
    warmup_epochs: Annotated[int, Field(ge=0)] = 0
    collapse_patience: Positive = 2             # evaluations at chance accuracy before a trial stops itself
    truncate: Literal["auto", "weight", "delta"] = "auto"    # what scoring cuts to rank r(p): W, or the
                                                # update W - W0 on the initial weights; auto: delta if finetune
    collapse_after: Annotated[float, Field(ge=0, le=1)] = 0.75  # ... and not before this fraction of the epochs


class TrialSpec(Strict):
    """One trial: ``data``, ``model``, ``technique``, ``train``."""

    data: DataSpec = Field(default_factory=DataSpec)
    model: ModelSpec = Field(default_factory=ModelSpec)
    technique: TechniqueSpec = Field(default_factory=TechniqueSpec)
    train: TrainSpec = Field(default_factory=TrainSpec)

    def to_dict(self) -> dict:
        return self.model_dump()

    def advice(self) -> list[str]:
        """Settings that are allowed but probably not meant, each with its consequence (one line each)."""
        t = self.train
        if t.eval_every > t.epochs:
            return [f"train.eval_every ({t.eval_every}) > train.epochs ({t.epochs}): the trial is evaluated, "
                    f"reported and checkpointed only at its last epoch, and collapse_patience never applies"]
        return []

    def flat(self) -> dict:
        """{"technique.lmbda": 0.1, ...}: every field, for logging as parameters."""
        return {f"{s}.{k}": v for s, sec in self.to_dict().items() for k, v in sec.items()}


def from_dict(raw, source: str = "<dict>", origins: Optional[dict] = None) -> TrialSpec:
    """A validated ``TrialSpec`` from a dict of sections."""
    if raw is not None and not isinstance(raw, dict):
        raise SpecError(f"{source}: a trial spec must be a mapping of sections, but got {type(raw).__name__}")
    return validate(TrialSpec, raw or {}, source, origins)


def with_code_folder(raw: dict, folder: Union[str, Path]) -> dict:
    """``raw`` with ``code`` set, in each section that names a factory, to ``folder`` (the spec file's),
    or resolved against it where it is relative: the factory imports the same from anywhere later."""
    for section in ("model", "data"):
        sec = raw.get(section)
        if isinstance(sec, dict) and sec.get("factory"):
            code = sec.get("code")
            if code is None or (isinstance(code, str) and not Path(code).is_absolute()):
                raw[section] = {**sec, "code": str((Path(folder) / (code or ".")).resolve())}
    return raw


def load(path: Union[str, Path], overrides=()) -> TrialSpec:
    """Read a trial spec from YAML, apply ``--set section.key=value`` overrides, validate."""
    raw, origins = apply_overrides(read_yaml(path, "trial spec"), overrides)
    return from_dict(with_code_folder(raw, Path(path).parent), str(path), origins)


def dump(spec: TrialSpec, path: Union[str, Path]) -> None:
    Path(path).write_text(yaml.safe_dump(spec.to_dict(), sort_keys=False))
