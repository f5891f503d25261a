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
