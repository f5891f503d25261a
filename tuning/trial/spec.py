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
from typing import Annotated, Any, Literal, Optional, Union

import yaml
from pydantic import AfterValidator, Field, model_validator

from q3r.targets import ALL_BUT_HEAD

from . import registry
from .metrics import BUILTIN, Metric, builtin_metric
from .specio import SpecError, Strict, apply_overrides, read_yaml, validate
from .usercode import check_reference

__all__ = ["SpecError", "DataSpec", "ModelSpec", "TechniqueSpec", "MetricSpec", "TrainSpec", "TrialSpec", "TECHNIQUE_NAMES",
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
LoraForm = Literal["factorized", "paper"]
PositiveFloat = Annotated[float, Field(gt=0)]


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

    name: Annotated[str, AfterValidator(_dataset)] = Field(
        "digits", description="dataset: digits (scikit-learn's embedded 8x8 digits), cifar10, cifar100, "
                              "imagefolder, glue, glue/<task>, or python (data.factory)")
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

    kind: Literal[MODEL_KINDS] = Field("vit", description="vit: a timm Vision Transformer built from scratch; "
                                      "hf: a local Hugging Face classifier (model.path); timm: any timm "
                                      "architecture by name; python: any callable returning an nn.Module")
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
    modules: list[str] = Field(default_factory=list,
                               description="the Linear layers to regularize and truncate: last name (qkv is split "
                                           "into q, k and v), dotted glob, or a preset (vit, hf-encoder); [] (the "
                                           "default): every nn.Linear but the classifier head")

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
    lora_form: LoraForm = Field("factorized", description="lora pre-training: factorized (the default: factors "
                                                          "that start at the best rank-r part of a fresh init, "
                                                          "with the bias) or paper (the paper code's LoRALinear: "
                                                          "x A B alpha / r, A and B from N(0, 0.01^2), no bias)")
    lora_alpha: Optional[PositiveFloat] = Field(None, description="lora: alpha of the scaling alpha / r; "
                                                                  "lora_form paper: in (0, 1], null: 1; peft "
                                                                  "adapters (finetune): null: 2 * rank")
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

    @model_validator(mode="after")
    def _lora_form(self):
        if self.name == "lora" and self.lora_form == "paper":
            if self.finetune:
                raise ValueError("lora_form paper is a pre-training form (it keeps no dense weight); fine-tuning "
                                 "trains peft adapters: use lora_form factorized")
            if self.lora_alpha is not None and self.lora_alpha > 1:
                raise ValueError(f"lora_alpha must be in (0, 1] for lora_form paper (the paper's code), but got "
                                 f"lora_alpha={self.lora_alpha!r}")
        return self


class MetricSpec(Strict):
    """The metric trials are scored and ranked by (``tuning.trial.metrics.Metric``)."""

    name: str = Field("accuracy", description=(
        "the metric: accuracy (top-1; Pearson correlation for a regression head) or val_loss (the validation "
        "loss, the training loss's formula), which the built-in recipe computes; reported as acc / acc@p for "
        "accuracy, else under its name (val_loss, val_loss@0.2)"))
    mode: Optional[Literal["max", "min"]] = Field(None, description=(
        "max: higher is better; min: lower is better (fronts, hypervolume, ASHA, the searcher, "
        "recommendations); null: the metric's own (accuracy max, val_loss min)"))

    @model_validator(mode="before")
    @classmethod
    def _name_alone(cls, data: Any) -> Any:
        """``metric: val_loss`` is ``metric: {name: val_loss}``."""
        return {"name": data} if isinstance(data, str) else data

    @model_validator(mode="after")
    def _valid(self):
        if self.name in BUILTIN:
            self.mode = builtin_metric(self.name, self.mode).mode
        Metric(self.name, self.mode or "max")        # a name MLflow and the report's keys can carry
        if self.mode is None:
            raise ValueError(f"mode must be set (max or min) for metric {self.name!r}, but it is not")
        return self

    def as_metric(self) -> Metric:
        return Metric(self.name, self.mode)


class TrainSpec(Strict):
    """How the trial trains and is scored."""

    epochs: Positive = Field(40, description="training epochs")
    batch_size: Positive = Field(64, description="examples per optimizer step")
    eval_every: Positive = Field(5, description="epochs between evaluations; each reports, checkpoints "
                                                "and lets ASHA judge the trial")
    retentions: list[Fraction] = Field(default_factory=lambda: list(DEFAULT_RETENTIONS), min_length=1,
                                       description="retention levels p in (0, 1] scored after truncation "
                                                   "(1.0 = no truncation)")
    metric: MetricSpec = Field(default_factory=MetricSpec, description=(
        f"what the trial is scored by at every retention level: {{name, mode}}, name one of {list(BUILTIN)}"))
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


def check_recipe_metric(metric: MetricSpec) -> None:
    """A ValueError unless the built-in recipe computes ``metric`` (``tuning.trial.metrics.BUILTIN``)."""
    try:
        builtin_metric(metric.name)
    except ValueError as e:
        raise ValueError(f"metric.{e}") from None


Function = Annotated[str, AfterValidator(check_reference)]
FUNCTION_MODULES = [ALL_BUT_HEAD]    # model.modules of a function spec unless it says


class TrialSpec(Strict):
    """One trial: ``data``, ``model``, ``technique``, ``train``; or the user's own training loop
    ``function`` with ``technique``, ``train`` and ``model.modules``."""

    data: DataSpec = Field(default_factory=DataSpec, description="the dataset")
    model: ModelSpec = Field(default_factory=ModelSpec, description="the model and the layers Q3R targets")
    technique: TechniqueSpec = Field(default_factory=TechniqueSpec,
                                     description="the technique and its hyperparameters")
    train: TrainSpec = Field(default_factory=TrainSpec, description="how the trial trains and is scored")
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
        if self.function is None:               # the user's loop reports any metric; the recipe computes its own
            check_recipe_metric(self.train.metric)
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
    return from_dict(resolve_code_dir(with_code_folder(raw, Path(path).parent), Path(path).parent), str(path),
                     origins)


def dump(spec: TrialSpec, path: Union[str, Path]) -> None:
    Path(path).write_text(yaml.safe_dump(spec.to_dict(), sort_keys=False))
