"""The spec of one trial: four typed sections, loaded from YAML, validated when loaded (pydantic).

    data:      {name: digits, data_root: null, augment: null, ...}
    model:     {kind: vit, size: tiny, depth: 4, width: 64, ...}
    technique: {name: adamq3r, lr: 1.0e-3, lmbda: 1.0, target_rank: 0.1, period: 5, ...}
    train:     {epochs: 40, batch_size: 64, eval_every: 5, retentions: [...], seed: 0, ...}
    function:  "my_loop:train"                  # instead of data and model: the user's own loop

Unknown keys and bad values raise ``SpecError`` naming the file (or the ``--set`` override), the
field, what is allowed and the value. The sweep spec (``tuning.spec.sweep``) reuses these sections.
"""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal, Optional, Union

import yaml
from pydantic import AfterValidator, Field, model_validator

from q3r.targets import ALL_BUT_HEAD

from .specio import SpecError, Strict, apply_overrides, read_yaml, validate
from .usercode import check_reference

__all__ = ["SpecError", "DataSpec", "ModelSpec", "TechniqueSpec", "TrainSpec", "TrialSpec", "TECHNIQUE_NAMES",
           "DEFAULT_RETENTIONS", "from_dict", "load", "dump"]

DEFAULT_RETENTIONS = (0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 1.0)
TECHNIQUE_NAMES = ("adamq3r", "adam_q3r_loss", "adamw", "lora", "lorita")   # the registry in techniques.py
DATASET_NAMES = ("digits", "cifar10", "cifar100", "imagefolder", "glue")    # the registry in data/__init__.py

Positive = Annotated[int, Field(ge=1)]
NonNegative = Annotated[float, Field(ge=0)]
Fraction = Annotated[float, Field(gt=0, le=1)]
Lr = Annotated[float, Field(gt=0)]
EpsScheduleName = Literal["auto", "paper", "geometric", "linear", "warmup"]
SvdMode = Literal["warm", "exact"]
LoritaForm = Literal["input", "output"]


def _dataset(name: str) -> str:
    if name.lower() not in DATASET_NAMES and not name.lower().startswith("glue/"):
        raise ValueError(f"must be one of {list(DATASET_NAMES)} or glue/<task>, but got {name!r}")
    return name


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


class ModelSpec(Strict):
    """A timm ViT from scratch (``vit``) or a local Hugging Face classifier (``hf``)."""

    kind: Literal["vit", "hf"] = "vit"
    size: Literal["tiny", "small", "base"] = "tiny"
    patch_size: Optional[Positive] = None
    depth: Optional[Positive] = None
    width: Optional[Positive] = None
    heads: Optional[Positive] = None
    path: Optional[str] = None                  # hf: a local model directory (weights) or config.json
    init: Optional[str] = None                  # vit: start from these weights (a .safetensors or torch state dict)
    modules: list[str] = Field(default_factory=lambda: ["qkv", "proj", "fc1", "fc2"], min_length=1)


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


Function = Annotated[str, AfterValidator(check_reference)]
FUNCTION_MODULES = [ALL_BUT_HEAD]    # model.modules of a function spec unless it says


class TrialSpec(Strict):
    """One trial: ``data``, ``model``, ``technique``, ``train``; or the user's own training loop
    ``function`` with ``technique``, ``train`` and ``model.modules``."""

    data: DataSpec = Field(default_factory=DataSpec)
    model: ModelSpec = Field(default_factory=ModelSpec)
    technique: TechniqueSpec = Field(default_factory=TechniqueSpec)
    train: TrainSpec = Field(default_factory=TrainSpec)
    function: Optional[Function] = Field(default=None, description=(
        "the user's own training loop, 'module:callable', called once per trial with the trial (see "
        "docs/byo-loop.md); instead of data and model, of which only model.modules applies"))
    code_dir: Optional[str] = Field(default=None, description=(
        "the folder searched first for function's module; null: the spec file's folder"))

    @model_validator(mode="before")
    @classmethod
    def _function_modules(cls, data):
        return with_function_defaults(data)

    @model_validator(mode="after")
    def _function_or_builtin(self):
        check_function_sections(self.function, self.data, self.model)
        return self

    def to_dict(self) -> dict:
        """The spec as plain data; ``function`` and ``code_dir`` only when a function is set."""
        return self.model_dump(exclude=None if self.function else {"function", "code_dir"})

    def advice(self) -> list[str]:
        """Settings that are allowed but probably not meant, each with its consequence (one line each)."""
        t = self.train
        if t.eval_every > t.epochs:
            return [f"train.eval_every ({t.eval_every}) > train.epochs ({t.epochs}): the trial is evaluated, "
                    f"reported and checkpointed only at its last epoch, and collapse_patience never applies"]
        return []

    def flat(self) -> dict:
        """{"technique.lmbda": 0.1, ...}: every field, for logging as parameters."""
        out = {}
        for s, sec in self.to_dict().items():
            out.update({f"{s}.{k}": v for k, v in sec.items()} if isinstance(sec, dict) else {s: sec})
        return out


def with_function_defaults(data):
    """A raw spec with ``function`` gets ``model.modules: [all-but-head]`` unless it names modules."""
    if isinstance(data, dict) and data.get("function") is not None:
        model = data.get("model")
        if model is None or (isinstance(model, dict) and "modules" not in model):
            data = {**data, "model": {**(model or {}), "modules": list(FUNCTION_MODULES)}}
    return data


def check_function_sections(function: Optional[str], data: DataSpec, model: ModelSpec) -> None:
    """A spec with ``function`` leaves ``data`` out and sets nothing of ``model`` but ``modules``."""
    if function is None:
        return
    if data != DataSpec():
        raise ValueError(f"data must be left out when function is set ({function!r} loads its own data), "
                         f"but got data: {data.model_dump(exclude_defaults=True)}")
    extra = ModelSpec(modules=model.modules) != model
    if extra:
        raise ValueError(f"model may only set modules when function is set ({function!r} builds its own model), "
                         f"but got model: {model.model_dump(exclude_defaults=True, exclude={'modules'})}")


def resolve_code_dir(raw: dict, folder: Union[str, Path]) -> dict:
    """``raw`` with ``code_dir`` absolute: relative to ``folder`` (the spec file's), which it defaults to."""
    if isinstance(raw, dict) and raw.get("function") is not None:
        code_dir = raw.get("code_dir")
        if code_dir is None or isinstance(code_dir, str):
            raw = {**raw, "code_dir": str((Path(folder) / (code_dir or ".")).resolve())}
    return raw


def from_dict(raw, source: str = "<dict>", origins: Optional[dict] = None) -> TrialSpec:
    """A validated ``TrialSpec`` from a dict of sections."""
    if raw is not None and not isinstance(raw, dict):
        raise SpecError(f"{source}: a trial spec must be a mapping of sections, but got {type(raw).__name__}")
    return validate(TrialSpec, raw or {}, source, origins)


def load(path: Union[str, Path], overrides=()) -> TrialSpec:
    """Read a trial spec from YAML, apply ``--set section.key=value`` overrides, validate."""
    raw, origins = apply_overrides(read_yaml(path, "trial spec"), overrides)
    return from_dict(resolve_code_dir(raw, Path(path).parent), str(path), origins)


def dump(spec: TrialSpec, path: Union[str, Path]) -> None:
    Path(path).write_text(yaml.safe_dump(spec.to_dict(), sort_keys=False))
