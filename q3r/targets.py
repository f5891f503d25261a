"""Which matrices of a model Q3R regularizes: chosen once, by module-name pattern.

Names are those of the model itself: a model inside DistributedDataParallel or DataParallel
(whose parameter names start with ``module.``) gives the same targets, names and parameter
names, so a checkpoint's operators load whichever way the model was wrapped.
"""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Iterable, Optional, Sequence, Union

import torch
from torch import Tensor, nn

# Named module-pattern sets; select_targets(model, PRESETS["hf-encoder"]) for BERT/RoBERTa encoders,
# whose classification heads also contain a "dense" Linear that the leaf name alone would pick up.
PRESETS = {
    "vit": ("qkv", "proj", "fc1", "fc2"),
    "hf-encoder": ("*.layer.*.attention.self.query", "*.layer.*.attention.self.key",
                   "*.layer.*.attention.self.value", "*.layer.*.attention.output.dense",
                   "*.layer.*.intermediate.dense", "*.layer.*.output.dense"),
}

# The default selection, by name: every nn.Linear but the model's classifier head (``classifier_head``).
ALL_BUT_HEAD = "all-but-head"

# Fused projections that hold several square matrices stacked along the output dimension.
FUSED = {"qkv": ("q", "k", "v")}


@dataclass(eq=False)
class Target:
    """One regularized matrix: rows [row_start, row_end) of a 2-D parameter.

    ``weight`` is a view into the parameter (so updates through it update the model);
    a fused qkv Linear yields three Targets over the same parameter.
    """

    param: nn.Parameter
    name: str
    param_name: Optional[str] = None
    row_start: int = 0
    row_end: Optional[int] = None

    def __post_init__(self):
        if self.param.ndim != 2:
            raise ValueError(f"target {self.name!r} must be a 2-D weight, but got shape {tuple(self.param.shape)}")
        if self.row_end is None:
            self.row_end = self.param.shape[0]

    @property
    def weight(self) -> Tensor:
        """The matrix (a view into the parameter, autograd-connected)."""
        return self.param[self.row_start:self.row_end]

    @property
    def rows(self) -> slice:
        return slice(self.row_start, self.row_end)

    @property
    def shape(self) -> tuple[int, int]:
        return (self.row_end - self.row_start, self.param.shape[1])

    @property
    def numel(self) -> int:
        return self.shape[0] * self.shape[1]

    def named_in(self, model: nn.Module) -> "Target":
        """This target with ``param_name`` set: its parameter found by identity in ``model`` when it
        has none (a target built from a plain nn.Linear or tensor)."""
        if self.param_name is not None:
            return self
        for name, p in unwrap(model)[0].named_parameters(remove_duplicate=False):
            if p is self.param:
                return Target(self.param, self.name, name, self.row_start, self.row_end)
        raise ValueError(f"target {self.name!r} (shape {self.shape}) is not a parameter of {type(model).__name__}")

    def rebind(self, model: nn.Module) -> "Target":
        """The same matrix in another instance of the model (for example a deep copy)."""
        if self.param_name is None:
            raise ValueError(f"target {self.name!r} has no param_name, so it cannot be found in another model")
        params = dict(unwrap(model)[0].named_parameters(remove_duplicate=False))
        if self.param_name not in params:
            raise KeyError(f"target {self.name!r}: no parameter {self.param_name!r} in {type(model).__name__}")
        return Target(params[self.param_name], self.name, self.param_name, self.row_start, self.row_end)

    def __repr__(self) -> str:
        return f"Target({self.name!r}, shape={self.shape})"


def unwrap(model: nn.Module) -> tuple[nn.Module, str]:
    """The model inside DistributedDataParallel / DataParallel wrappers, and the prefix their
    parameter names carry ("module.", once per wrapper)."""
    prefix = ""
    while isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        model, prefix = model.module, prefix + "module."
    return model, prefix


def _matches(name: str, patterns: Sequence[str]) -> bool:
    leaf = name.rsplit(".", 1)[-1]
    return any(leaf == p or fnmatch.fnmatchcase(name, p) for p in patterns)


def linear_targets(module_name: str, linear: nn.Linear, split_fused: bool = True) -> list[Target]:
    """Targets of one Linear: three for a fused qkv (3d x d), else its whole weight."""
    pname = f"{module_name}.weight" if module_name else "weight"
    leaf = module_name.rsplit(".", 1)[-1]
    parts = FUSED.get(leaf) if split_fused else None
    d_out, d_in = linear.weight.shape
    if parts and d_out == len(parts) * d_in:
        return [
            Target(linear.weight, f"{module_name}[{p}]", pname, i * d_in, (i + 1) * d_in)
            for i, p in enumerate(parts)
        ]
    return [Target(linear.weight, module_name, pname)]


def classifier_head(model: nn.Module) -> Optional[str]:
    """The name of ``model``'s classifier head: the nn.Linear that timm's ``get_classifier()`` returns,
    else the last nn.Linear the model registers (torchvision's ``fc`` / ``heads.head``, Hugging Face's
    ``classifier``); None when the model has no nn.Linear."""
    names = {id(m): n for n, m in model.named_modules()}
    get = getattr(model, "get_classifier", None)
    if callable(get):
        try:
            head = get()
        except Exception:  # noqa: BLE001 - a get_classifier of another convention: use the rule below
            head = None
        if isinstance(head, nn.Linear) and id(head) in names:
            return names[id(head)]
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    return linears[-1] if linears else None


def select_targets(
    model: nn.Module,
    modules: Optional[Sequence[str]] = ("qkv", "proj", "fc1", "fc2"),
    split_fused: bool = True,
) -> list[Target]:
    """The regularized matrices of ``model``: every nn.Linear whose name matches a pattern.

    A pattern matches a module's last name component exactly ("qkv", "fc1", "query") or its
    full dotted name as a glob ("blocks.*.attn.qkv"). Hugging Face encoders use
    ``modules=("query", "key", "value", "dense")``. A fused qkv Linear of shape 3d x d
    yields three d x d targets Q, K, V (views into the same weight). ``modules`` may also name
    a preset: "vit" or "hf-encoder" (see ``PRESETS``). ``modules=None`` (or empty, or the name
    "all-but-head") selects every nn.Linear except the classifier head (``classifier_head``): for a
    timm ViT, the same matrices as "vit". A DDP-wrapped model gives the targets of the model inside
    (a glob may be written with or without the ``module.`` prefix).
    """
    if isinstance(modules, str):
        modules = (modules,)
    model, prefix = unwrap(model)
    linears = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if modules and ALL_BUT_HEAD in modules:
        others = tuple(m for m in modules if m != ALL_BUT_HEAD)
        default = select_targets(model, None, split_fused)
        extra = select_targets(model, others, split_fused) if others else []
        seen = {t.name for t in default}
        return default + [t for t in extra if t.name not in seen]
    if not modules:
        head = classifier_head(model)
        chosen = [(n, m) for n, m in linears if n != head]
        if not chosen:
            raise ValueError(f"{type(model).__name__} has nothing to regularize: Q3R acts on nn.Linear weights and its "
                             f"only nn.Linear is the classifier head {head!r}" if head is not None else
                             f"{type(model).__name__} has nothing to regularize: Q3R acts on nn.Linear weights and "
                             f"it has none")
    else:
        modules = tuple(p for m in modules for p in PRESETS.get(m, (m,)))
        chosen = [(n, m) for n, m in linears if _matches(n, modules) or prefix and _matches(prefix + n, modules)]
        if not chosen:
            raise ValueError(
                f"no nn.Linear in {type(model).__name__} matches modules={tuple(modules)}; "
                f"Linear layers present: {[n for n, _ in linears][:12]}"
            )
    return [t for name, module in chosen for t in linear_targets(name, module, split_fused)]


def as_targets(items: Iterable[Union[Target, nn.Linear, Tensor]]) -> list[Target]:
    """Normalise what users pass as ``targets``: Targets, nn.Linear modules or weight tensors."""
    out = []
    for i, item in enumerate(items):
        if isinstance(item, Target):
            out.append(item)
        elif isinstance(item, nn.Linear):
            out.append(Target(item.weight, f"linear{i}"))
        elif isinstance(item, torch.Tensor):
            out.append(Target(item, f"matrix{i}"))
        else:
            raise TypeError(f"targets must be Targets, nn.Linear modules or 2-D tensors, but got {type(item).__name__}")
    names = [t.name for t in out]
    if len(set(names)) != len(names):
        raise ValueError(f"target names must be unique, but got {names}")
    return out
