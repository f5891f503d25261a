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
from typing import Annotated, Literal, Optional, Union

import yaml
from pydantic import AfterValidator, Field

from .specio import SpecError, Strict, apply_overrides, read_yaml, validate

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

    name: Annotated[str, AfterValidator(_dataset)] = Field(
        "digits", description="dataset: digits (scikit-learn's embedded 8x8 digits), cifar10, cifar100, "
                              "imagefolder, glue or glue/<task>")
    data_root: Optional[str] = Field(None, description="folder of the data (every dataset but digits)")
    augment: Optional[Literal["none", "basic", "strong"]] = Field(
        None, description="training augmentation: basic (crop and flip), strong (timm's RandAugment); "
                          "null or none: no augmentation")
    download: bool = Field(False, description="download CIFAR into data_root when it is missing")
    image_size: Optional[Positive] = Field(None, description="resize images to this side in pixels "
                                                             "(the paper's 224 px as an option); null: native")
    task: Optional[str] = Field(None, description="GLUE task (sst2, mnli, ...) when name is glue")
    tokenizer: Optional[str] = Field(None, description="local tokenizer directory (GLUE)")
    max_length: Positive = Field(128, description="tokens per example (GLUE)")
    limit: Optional[Positive] = Field(None, description="keep the first N training items (smoke tests); "
                                                        "null: all")
    classes: Optional[list[Annotated[int, Field(ge=0)]]] = Field(
        default=None, min_length=1, description="digits only: a subset of the classes, relabelled 0, 1, ... "
                                                "in the order given; null: all ten")


class ModelSpec(Strict):
    """A timm ViT from scratch (``vit``) or a local Hugging Face classifier (``hf``)."""

    kind: Literal["vit", "hf"] = Field("vit", description="vit: a timm Vision Transformer built from scratch; "
                                                          "hf: a local Hugging Face classifier (model.path)")
    size: Literal["tiny", "small", "base"] = Field("tiny", description="vit: timm's named size "
                                                                       "(width, depth, heads)")
    patch_size: Optional[Positive] = Field(None, description="vit: patch side in pixels; null: 2 for 8x8 "
                                                             "images, else 4")
    depth: Optional[Positive] = Field(None, description="vit: transformer blocks; null: the size's")
    width: Optional[Positive] = Field(None, description="vit: embedding width; null: the size's")
    heads: Optional[Positive] = Field(None, description="vit: attention heads; null: the size's "
                                                        "(4 when it does not divide the width)")
    path: Optional[str] = Field(None, description="hf: a local model directory (weights) or a config.json")
    init: Optional[str] = Field(None, description="vit: start from these weights (a .safetensors file or a "
                                                  "torch state dict); null: random initialisation")
    modules: list[str] = Field(default_factory=lambda: ["qkv", "proj", "fc1", "fc2"], min_length=1,
                               description="the Linear layers to regularize and truncate: last name ("
                                           "qkv is split into q, k and v), dotted glob, or a preset "
                                           "(vit, hf-encoder)")


class TechniqueSpec(Strict):
    """The technique and its hyperparameters (each technique reads the fields it uses)."""

    name: Literal[TECHNIQUE_NAMES] = Field(
        "adamq3r", description="adamq3r (AdamQ3R), adam_q3r_loss (Adam on loss + lmbda * Q3R), adamw "
                               "(the baseline), lora (low-rank factors), lorita (products of depth factors)")
    lr: Lr = Field(1e-3, description="learning rate")
    weight_decay: NonNegative = Field(0.0, description="decoupled weight decay (AdamW's)")
    lmbda: NonNegative = Field(0.1, description="Q3R techniques: strength lambda of the regularizer; too "
                                                "large collapses accuracy to chance")
    target_rank: TargetRank = Field(0.2, description="the rank aimed at: a fraction p in (0, 1], rank "
                                                     "r(p) = floor(p d1 d2 / (d1 + d2)) per matrix, or an "
                                                     "int rank >= 1 (fine-tuning)")
    period: Positive = Field(5, description="Q3R techniques: optimizer steps between reweightings (T)")
    depth: Positive = Field(2, description="lorita: factors per matrix")
    alpha: NonNegative = Field(0.1, description="lorita: weight decay of the factors")
    lorita_form: LoritaForm = Field("input", description="lorita: input-side factors, freshly initialised "
                                                         "(the LoRITa authors'), or output-side identities "
                                                         "that start at the weight")
    lora_rank: Optional[Positive] = Field(None, description="lora: adapter rank when fine-tuning; null: "
                                                            "r(target_rank) (pre-training always uses it)")
    finetune: bool = Field(False, description="fine-tune pretrained weights: the Q3R techniques regularize "
                                              "the update Delta W on frozen weights, lora trains peft "
                                              "adapters, adamw and lorita train every weight")
    eps_schedule: EpsScheduleName = Field(
        "auto", description="Q3R techniques: the eps rule; paper (eq. 7), geometric, linear (the published "
                            "code's, to 1e-5), warmup (eps follows sigma_{r+1}); auto: warmup if finetune, "
                            "else paper")
    eps_steps: Optional[Positive] = Field(None, description="linear: reweightings until eps reaches 1e-5; "
                                                            "null: those of the trial")
    eps_warmup: Optional[Positive] = Field(None, description="warmup: optimizer steps in which eps follows "
                                                             "sigma_{r+1}, then the paper's rule; null: the "
                                                             "whole trial")
    svd: SvdMode = Field("warm", description="Q3R techniques: warm (warm-started subspace iteration) or "
                                             "exact (a full SVD at every reweighting)")


class TrainSpec(Strict):
    """How the trial trains and is scored."""

    epochs: Positive = Field(40, description="training epochs")
    batch_size: Positive = Field(64, description="examples per optimizer step")
    eval_every: Positive = Field(5, description="epochs between evaluations; each reports, checkpoints "
                                                "and lets ASHA judge the trial")
    retentions: list[Fraction] = Field(default_factory=lambda: list(DEFAULT_RETENTIONS), min_length=1,
                                       description="retention levels p in (0, 1] scored after truncation "
                                                   "(1.0 = no truncation)")
    seed: Annotated[int, Field(ge=0)] = Field(0, description="random seed (data split, initialisation, "
                                                             "batches)")
    threads: Positive = Field(1, description="torch CPU threads: the trial's CPU share")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto: cuda when available, else cpu")
    amp: bool = Field(True, description="bfloat16 autocast, on GPU only")
    grad_clip: Optional[Annotated[float, Field(gt=0)]] = Field(
        None, description="max gradient norm, on every device; null: no clipping")
    schedule: Literal["constant", "cosine"] = Field("constant", description="learning rate: constant (the "
                                                                            "paper) or warmup + cosine")
    warmup_epochs: Annotated[int, Field(ge=0)] = Field(0, description="cosine: epochs of linear warmup")
    collapse_patience: Positive = Field(2, description="evaluations at chance accuracy in a row before a "
                                                       "trial stops itself as collapsed")
    truncate: Literal["auto", "weight", "delta"] = Field(
        "auto", description="what scoring cuts to rank r(p): weight (W) or delta (the update W - W0 on "
                            "the initial weights); auto: delta if finetune")
    collapse_after: Annotated[float, Field(ge=0, le=1)] = Field(
        0.75, description="... and not before this fraction of the epochs is done")


class TrialSpec(Strict):
    """One trial: ``data``, ``model``, ``technique``, ``train``."""

    data: DataSpec = Field(default_factory=DataSpec, description="the dataset")
    model: ModelSpec = Field(default_factory=ModelSpec, description="the model and the layers Q3R targets")
    technique: TechniqueSpec = Field(default_factory=TechniqueSpec,
                                     description="the technique and its hyperparameters")
    train: TrainSpec = Field(default_factory=TrainSpec, description="how the trial trains and is scored")

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


def load(path: Union[str, Path], overrides=()) -> TrialSpec:
    """Read a trial spec from YAML, apply ``--set section.key=value`` overrides, validate."""
    raw, origins = apply_overrides(read_yaml(path, "trial spec"), overrides)
    return from_dict(raw, str(path), origins)


def dump(spec: TrialSpec, path: Union[str, Path]) -> None:
    Path(path).write_text(yaml.safe_dump(spec.to_dict(), sort_keys=False))
