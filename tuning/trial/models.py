"""Models: timm Vision Transformers built from scratch, sized from the dataset."""
from __future__ import annotations

from timm.models.vision_transformer import VisionTransformer

from .data import DatasetInfo

VIT_SIZES = {  # (embed_dim, depth, num_heads), as timm's vit_{tiny,small,base}
    "tiny": (192, 12, 3),
    "small": (384, 12, 6),
    "base": (768, 12, 12),
}


def build_vit(info: DatasetInfo, size: str = "tiny", patch_size: int | None = None,
              depth: int | None = None, width: int | None = None, heads: int | None = None) -> VisionTransformer:
    """A ViT for ``info``'s images; depth, width and heads override the named size."""
    if size not in VIT_SIZES:
        raise ValueError(f"unknown ViT size {size!r}; known: {sorted(VIT_SIZES)}")
    dim, n_blocks, n_heads = VIT_SIZES[size]
    dim, n_blocks = width or dim, depth or n_blocks
    n_heads = heads or (n_heads if dim % n_heads == 0 else 4)
    patch = patch_size or (2 if info.image_size <= 8 else 4)
    if info.image_size % patch:
        raise ValueError(f"patch_size={patch} does not divide image_size={info.image_size}")
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


def build_model(cfg, info: DatasetInfo):
    """The model of a trial from its ``ModelSpec`` and the dataset's ``DatasetInfo``."""
    if cfg.kind == "vit":
        if info.kind != "image":
            raise ValueError(f"model.kind='vit' needs an image dataset, but {info.name!r} is {info.kind}")
        model = build_vit(info, cfg.size, cfg.patch_size, cfg.depth, cfg.width, cfg.heads)
        return model if cfg.init is None else load_init(model, cfg.init)
    if cfg.kind == "hf":
        model = build_hf_classifier(cfg.path, info.num_classes)
        return model if cfg.init is None else load_init(model, cfg.init)
    raise ValueError(f"unknown model.kind {cfg.kind!r}; known: ['hf', 'vit']")
