"""The configuration of one trial: typed sections, loaded from YAML, validated when loaded.

    data:      {name: digits, data_root: null, augment: null, ...}
    model:     {kind: vit, size: tiny, depth: 4, width: 64, ...}
    technique: {name: adamq3r, lr: 1.0e-3, lmbda: 1.0, target_rank: 0.1, period: 5, ...}
    train:     {epochs: 40, batch_size: 64, eval_every: 5, retentions: [...], seed: 0, ...}

Unknown keys and bad values raise ``ConfigError`` naming the source, the field and the value.
``--set technique.lmbda=0.5`` style overrides go through ``apply_overrides``.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union, get_args, get_origin, get_type_hints

import yaml

DEFAULT_RETENTIONS = (0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 1.0)


class ConfigError(ValueError):
    """A malformed trial configuration; the message names where, which field and what value."""


@dataclass
class DataConfig:
    name: str = "digits"
    data_root: Optional[str] = None
    augment: Optional[str] = None          # None, "basic" or "strong"
    download: bool = False
    image_size: Optional[int] = None       # resize (the paper's 224 px as an option)
    task: Optional[str] = None             # GLUE task
    tokenizer: Optional[str] = None        # local tokenizer directory (GLUE)
    max_length: int = 128
    limit: Optional[int] = None            # keep the first N training items (smoke tests)


@dataclass
class ModelConfig:
    kind: str = "vit"                      # "vit" (timm, from scratch) or "hf" (Hugging Face classifier)
    size: str = "tiny"                     # tiny, small, base
    patch_size: Optional[int] = None
    depth: Optional[int] = None
    width: Optional[int] = None
    heads: Optional[int] = None
    path: Optional[str] = None             # hf: a local model directory (weights) or config.json
    modules: list = field(default_factory=lambda: ["qkv", "proj", "fc1", "fc2"])


@dataclass
class TechniqueConfig:
    name: str = "adamq3r"                  # adamq3r, adam_q3r_loss, adamw, lora, lorita
    lr: float = 1e-3
    weight_decay: float = 0.0
    lmbda: float = 0.1
    target_rank: Union[int, float] = 0.2   # a fraction p, or an int rank (fine-tuning)
    period: int = 5
    depth: int = 2                         # lorita: factors per matrix
    alpha: float = 0.1                     # lorita: weight decay of the factors
    lora_rank: Optional[int] = None        # lora fine-tuning rank (pre-training uses r(target_rank))
    finetune: bool = False                 # regularize Delta W on frozen pretrained weights
    eps_schedule: str = "paper"            # Q3R techniques: eps never rises ("paper") or "geometric" decay
    svd: str = "warm"                      # Q3R techniques: warm-started subspace iteration or "exact" SVDs


@dataclass
class TrainConfig:
    epochs: int = 40
    batch_size: int = 64
    eval_every: int = 5
    retentions: list = field(default_factory=lambda: list(DEFAULT_RETENTIONS))
    seed: int = 0
    threads: int = 1                       # torch CPU threads: the trial's CPU share
    device: str = "auto"                   # auto, cpu, cuda
    amp: bool = True                       # bfloat16 autocast, on GPU only
    grad_clip: Optional[float] = 1.0       # on GPU only; null turns it off
    schedule: str = "constant"             # constant (the paper) or cosine (warmup + cosine)
    warmup_epochs: int = 0
    collapse_patience: int = 2             # evaluations at chance accuracy before a trial stops itself


@dataclass
class TrialConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    technique: TechniqueConfig = field(default_factory=TechniqueConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def flat(self) -> dict:
        """{"technique.lmbda": 0.1, ...}: every field, for logging as parameters."""
        return {f"{s}.{k}": v for s, sec in self.to_dict().items() for k, v in sec.items()}


CHOICES = {
    "model.kind": ("vit", "hf"),
    "model.size": ("tiny", "small", "base"),
    "data.augment": (None, "none", "basic", "strong"),
    "train.device": ("auto", "cpu", "cuda"),
    "train.schedule": ("constant", "cosine"),
    "technique.eps_schedule": ("paper", "geometric"),
    "technique.svd": ("warm", "exact"),
}
POSITIVE = {"train.epochs", "train.batch_size", "train.eval_every", "train.threads", "technique.period",
            "technique.depth", "data.max_length"}
NON_NEGATIVE = {"technique.lr", "technique.weight_decay", "technique.lmbda", "technique.alpha", "train.warmup_epochs"}


def _coerce(value: Any, hint: Any, where: str) -> Any:
    """Check ``value`` against a field's type hint; ints are accepted where floats are."""
    origin, args = get_origin(hint), get_args(hint)
    if origin is Union:
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, arg, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0])
    if hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif hint is str:
        if isinstance(value, str):
            return value
    elif hint is list or origin is list:
        if isinstance(value, (list, tuple)):
            return list(value)
    else:
        return value
    name = getattr(hint, "__name__", str(hint))
    raise ConfigError(f"{where} must be {name}, but got {value!r}")


def _section(cls, raw: Any, where: str):
    if raw is None:
        return cls()
    if not isinstance(raw, dict):
        raise ConfigError(f"{where} must be a mapping, but got {raw!r}")
    hints = get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; known: {sorted(known)}")
    return cls(**{k: _coerce(v, hints[k], f"{where}.{k}") for k, v in raw.items()})


def _validate(cfg: TrialConfig, source: str) -> None:
    flat = cfg.flat()
    for key, choices in CHOICES.items():
        if flat[key] not in choices:
            raise ConfigError(f"{source}: {key} must be one of {[c for c in choices if c]}, but got {flat[key]!r}")
    for key in POSITIVE:
        if flat[key] < 1:
            raise ConfigError(f"{source}: {key} must be >= 1, but got {flat[key]!r}")
    for key in NON_NEGATIVE:
        if flat[key] < 0:
            raise ConfigError(f"{source}: {key} must be >= 0, but got {flat[key]!r}")
    rank = cfg.technique.target_rank
    if isinstance(rank, float) and not 0 < rank <= 1:
        raise ConfigError(f"{source}: technique.target_rank must be a fraction in (0, 1] or an int rank, but got {rank!r}")
    for p in cfg.train.retentions:
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 < p <= 1:
            raise ConfigError(f"{source}: train.retentions must hold fractions in (0, 1], but got {p!r}")
    if not cfg.train.retentions:
        raise ConfigError(f"{source}: train.retentions must not be empty")


def from_dict(raw: Any, source: str = "<dict>") -> TrialConfig:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: a trial spec must be a mapping of sections, but got {type(raw).__name__}")
    sections = {f.name: f.type for f in dataclasses.fields(TrialConfig)}
    unknown = sorted(set(raw) - set(sections))
    if unknown:
        raise ConfigError(f"{source}: unknown section(s) {unknown}; known: {sorted(sections)}")
    hints = get_type_hints(TrialConfig)
    cfg = TrialConfig(**{name: _section(hints[name], raw.get(name), f"{source}: {name}") for name in sections})
    _validate(cfg, source)
    return cfg


def parse_override(text: str) -> tuple[str, Any]:
    """"technique.lmbda=0.5" -> ("technique.lmbda", 0.5); the value is read as YAML."""
    key, sep, value = text.partition("=")
    if not sep or "." not in key:
        raise ConfigError(f"--set takes section.key=value, but got {text!r}")
    return key.strip(), yaml.safe_load(value)


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    raw = {k: dict(v or {}) for k, v in (raw or {}).items()}
    for text in overrides:
        key, value = parse_override(text)
        section, _, name = key.partition(".")
        raw.setdefault(section, {})[name] = value
    return raw


def load(path: Union[str, Path], overrides: list[str] = ()) -> TrialConfig:
    """Read a trial spec from YAML, apply ``--set`` overrides, validate."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"no trial spec at {path}")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if raw is not None and not isinstance(raw, dict):
        raise ConfigError(f"{path}: a trial spec must be a mapping of sections, but got {type(raw).__name__}")
    return from_dict(apply_overrides(raw or {}, list(overrides)), str(path))


def dump(cfg: TrialConfig, path: Union[str, Path]) -> None:
    Path(path).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
