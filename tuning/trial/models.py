"""Models, by ``model.kind`` (``tuning.trial.registry.MODEL_KINDS``): a timm Vision Transformer built
from scratch and sized from the dataset (``vit``), a local Hugging Face classifier (``hf``), any timm
architecture by name (``timm``) and any Python callable that returns an nn.Module (``python``).
"""
from __future__ import annotations

from typing import Callable

from torch import nn

from . import registry
from .data import DatasetInfo
from .usercode import UserCodeError, import_factory, with_facts

BUILDERS: dict[str, Callable] = {}          # model.kind -> build(cfg, info); the kinds: registry.MODEL_KINDS
FACTS = ("num_classes", "in_chans", "img_size")


def register(kind: str):
    """Add a builder ``fn(cfg: ModelSpec, info: DatasetInfo) -> nn.Module`` for ``kind`` (declared in the registry)."""
    registry.MODEL_KINDS.get(kind)

    def wrap(fn):
        BUILDERS[kind] = fn
        return fn
    return wrap


def dataset_facts(info: DatasetInfo) -> dict:
    """What a model may be sized from: ``num_classes``, and for images ``in_chans`` and ``img_size``."""
    facts = {"num_classes": info.num_classes}
    if info.kind == "image":
        facts.update(in_chans=info.channels, img_size=info.image_size)
    return facts

VIT_SIZES = {  # (embed_dim, depth, num_heads), as timm's vit_{tiny,small,base}
    "tiny": (192, 12, 3),
    "small": (384, 12, 6),
    "base": (768, 12, 12),
}


def build_vit(info: DatasetInfo, size: str = "tiny", patch_size: int | None = None,
              depth: int | None = None, width: int | None = None, heads: int | None = None) -> nn.Module:
    """A ViT for ``info``'s images; depth, width and heads override the named size."""
    if size not in VIT_SIZES:
        raise ValueError(f"unknown ViT size {size!r}; known: {sorted(VIT_SIZES)}")
    dim, n_blocks, n_heads = VIT_SIZES[size]
    dim, n_blocks = width or dim, depth or n_blocks
    n_heads = heads or (n_heads if dim % n_heads == 0 else 4)
    patch = patch_size or (2 if info.image_size <= 8 else 4)
    if info.image_size % patch:
        raise ValueError(f"patch_size={patch} does not divide image_size={info.image_size}")
    from timm.models.vision_transformer import VisionTransformer   # timm (and torchvision) load only here

    return VisionTransformer(img_size=info.image_size, patch_size=patch, in_chans=info.channels,
                             num_classes=info.num_classes, embed_dim=dim, depth=n_blocks, num_heads=n_heads)


def build_hf_classifier(path: str, num_labels: int):
    """A Hugging Face sequence classifier from a local directory: with weights if it holds
    them (the fine-tuning path), else from its config.json alone. Nothing is fetched."""
    from pathlib import Path

    from transformers import AutoConfig, AutoModelForSequenceClassification

    if path is None or not Path(path).exists():
        raise FileNotFoundError(f"model.path must be a local Hugging Face model directory or config.json, "
                                f"but {path!r} does not exist (nothing is downloaded at run time)")
    p = Path(path)
    folder = p.parent if p.is_file() else p
    has_weights = any(folder.glob("*.safetensors")) or any(folder.glob("pytorch_model*.bin"))
    if has_weights:
        return AutoModelForSequenceClassification.from_pretrained(folder, num_labels=num_labels, local_files_only=True)
    config = AutoConfig.from_pretrained(folder, num_labels=num_labels, local_files_only=True)
    return AutoModelForSequenceClassification.from_config(config)


def load_init(model, path: str):
    """Load pretrained weights into ``model`` in place: a ``.safetensors`` file or a torch state dict
    (``torch.load(weights_only=True)``), every key matching in name and shape."""
    from pathlib import Path

    import torch

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"model.init {path!r} does not exist (a .safetensors file or a torch state dict)")
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(p))
    else:
        state = torch.load(p, map_location="cpu", weights_only=True)
    own = model.state_dict()
    shapes = [f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in state.items()
              if k in own and v.shape != own[k].shape]
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if shapes or missing or unexpected:
        raise ValueError(f"model.init {path}: does not fit the model (shape mismatches: {shapes[:3]}, missing: "
                         f"{missing[:3]}, unexpected: {unexpected[:3]}); check model.depth/width and data.classes")
    model.load_state_dict(state)
    return model


@register("vit")
def _vit(cfg, info: DatasetInfo):
    if info.kind != "image":
        raise ValueError(f"model.kind='vit' needs an image dataset, but {info.name!r} is {info.kind}")
    return build_vit(info, cfg.size, cfg.patch_size, cfg.depth, cfg.width, cfg.heads)


@register("hf")
def _hf(cfg, info: DatasetInfo):
    return build_hf_classifier(cfg.path, info.num_classes)


@register("timm")
def build_timm(cfg, info: DatasetInfo) -> nn.Module:
    """``timm.create_model(cfg.name, pretrained=False, **kwargs)``, with ``num_classes``, ``in_chans`` and
    ``img_size`` from the dataset where ``kwargs`` does not set them and the architecture takes them
    (an architecture that rejects one of them is built again without it). Nothing is downloaded."""
    import timm

    if "pretrained" in cfg.kwargs:
        raise ValueError("model.kwargs may not set pretrained: kind timm builds from scratch (model.init loads "
                         "local weights)")
    if not timm.is_model(cfg.name):
        raise ValueError(f"model.name {cfg.name!r} is no timm architecture; list them with "
                         f"python -c \"import timm; print(timm.list_models('*vit*'))\"")
    facts = {k: v for k, v in dataset_facts(info).items() if k not in cfg.kwargs}
    while True:
        try:
            return timm.create_model(cfg.name, pretrained=False, **facts, **cfg.kwargs)
        except TypeError as e:
            rejected = [k for k in facts if f"'{k}'" in str(e)]
            if not rejected:
                raise
            facts.pop(rejected[0])


@register("python")
def build_python(cfg, info: DatasetInfo) -> nn.Module:
    """``callable(**kwargs)`` of ``model.factory``; ``num_classes``, ``in_chans`` and ``img_size`` are
    passed too where the callable's signature names them and ``kwargs`` does not set them."""
    fn = import_factory(cfg.factory, cfg.code, "model.factory")
    model = fn(**with_facts(fn, cfg.kwargs, dataset_facts(info)))
    if not isinstance(model, nn.Module):
        raise UserCodeError(f"model.factory {cfg.factory!r} returned a {type(model).__name__}, not a "
                            f"torch.nn.Module")
    return model


def build_model(cfg, info: DatasetInfo):
    """The model of a trial from its ``ModelSpec`` and the dataset's ``DatasetInfo``; ``model.init``
    loads local weights into it."""
    if cfg.kind not in BUILDERS:
        raise ValueError(f"unknown model.kind {cfg.kind!r}; known: {sorted(BUILDERS)}")
    model = BUILDERS[cfg.kind](cfg, info)
    return model if cfg.init is None else load_init(model, cfg.init)
