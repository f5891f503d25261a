"""Save and load factorized models (``SpectralCache.factorized_model``) as safetensors.

    small = q3r.SpectralCache(targets).factorized_model(model, 0.2)
    q3r.save_lowrank(small, "model.safetensors")
    ...
    model = q3r.load_lowrank(build_the_dense_architecture(), "model.safetensors")

The file is the factorized model's state dict: a ``LowRankLinear`` named ``blocks.0.attn.qkv``
stores its factor pairs as ``blocks.0.attn.qkv.A.<i>`` (d_out_seg, r) and ``.B.<i>`` (r, d_in),
its dense row segments as ``.dense.<i>`` and its bias as ``.bias``. ``load_lowrank`` reads the
segment shapes from those tensors, replaces each named nn.Linear of a freshly built dense model by
a ``LowRankLinear`` of exactly those shapes and loads every weight: the loaded model has the
file's parameter count and computes what the saved one did. A Linear whose weight the file holds
without a bias (a layer trained without one, such as the paper code's LoRA) loses the dense
model's bias. Needs ``safetensors`` (imported here only, so that ``import q3r`` stays torch-only).
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Optional, Union

import torch
from torch import Tensor, nn

from .truncation import LowRankLinear

FORMAT = "q3r.lowrank/1"
_SEGMENT = re.compile(r"^(?P<module>.+)\.(?P<kind>A|B|dense)\.(?P<index>\d+)$")


def save_lowrank(model: nn.Module, path: Union[str, Path], metadata: Optional[dict] = None) -> Path:
    """Write ``model.state_dict()`` to ``path`` as safetensors; ``metadata``: str -> str, kept in
    the file's header (with ``format``)."""
    from safetensors.torch import save_file

    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path), metadata={"format": FORMAT, **{str(k): str(v) for k, v in (metadata or {}).items()}})
    return path


def read_metadata(path: Union[str, Path]) -> dict:
    """The str -> str metadata in a safetensors file's header."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata() or {})


def lowrank_layers(state: dict[str, Tensor]) -> dict[str, dict]:
    """{module name: {"in_features", "out_features", "segments": [(rows, rank or None), ...]}} of the
    LowRankLinear layers in a factorized state dict (rank None: a dense row segment)."""
    found: dict[str, dict[int, dict]] = {}
    for key, tensor in state.items():
        m = _SEGMENT.match(key)
        if m:
            found.setdefault(m["module"], {}).setdefault(int(m["index"]), {})[m["kind"]] = tensor
    layers = {}
    for name, parts in found.items():
        segments, d_in = [], set()
        for index in sorted(parts):
            seg = parts[index]
            if "dense" in seg:
                segments.append((seg["dense"].shape[0], None))
                d_in.add(seg["dense"].shape[1])
            elif "A" in seg and "B" in seg and seg["A"].shape[1] == seg["B"].shape[0]:
                segments.append((seg["A"].shape[0], seg["A"].shape[1]))
                d_in.add(seg["B"].shape[1])
            else:
                shapes = {k: tuple(v.shape) for k, v in seg.items()}
                raise ValueError(f"{name}: segment {index} is neither dense nor a factor pair A (d_out, r), "
                                 f"B (r, d_in): {shapes}")
        if sorted(parts) != list(range(len(parts))) or len(d_in) != 1:
            raise ValueError(f"{name}: segments {sorted(parts)} must be numbered 0..n-1 and share one input width")
        layers[name] = {"in_features": d_in.pop(), "out_features": sum(rows for rows, _ in segments),
                        "segments": segments}
    return layers


def _empty_lowrank(linear: nn.Linear, segments) -> LowRankLinear:
    """A LowRankLinear with the given segment shapes and uninitialized weights (to be loaded)."""
    like = {"device": linear.weight.device, "dtype": linear.weight.dtype}
    out = LowRankLinear(linear.in_features, linear.out_features, linear.bias)
    for i, (rows, rank) in enumerate(segments):
        key = str(i)
        if rank is None:
            out.dense[key] = nn.Parameter(torch.empty(rows, linear.in_features, **like))
        else:
            out.A[key] = nn.Parameter(torch.empty(rows, rank, **like))
            out.B[key] = nn.Parameter(torch.empty(rank, linear.in_features, **like))
        out.order.append(key)
    return out


def _drop_absent_biases(model: nn.Module, state: dict, factorized: set) -> None:
    """A Linear (or LowRankLinear) whose weight the file holds but whose bias it does not has none."""
    for name, module in model.named_modules():
        if not isinstance(module, (nn.Linear, LowRankLinear)) or module.bias is None or f"{name}.bias" in state:
            continue
        if name in factorized or f"{name}.weight" in state:
            module.bias = None


def load_lowrank(model: nn.Module, path: Union[str, Path], strict: bool = True) -> nn.Module:
    """Load a file written by ``save_lowrank`` into ``model``, a fresh instance of the DENSE
    architecture: each nn.Linear the file factorizes becomes a ``LowRankLinear`` with the stored
    segment shapes, then every tensor is loaded (``strict``: the keys must match exactly).
    Returns ``model`` (changed in place)."""
    from safetensors.torch import load_file

    state = load_file(str(path), device="cpu")
    for name, layer in lowrank_layers(state).items():
        try:
            linear = model.get_submodule(name)
        except AttributeError:
            raise KeyError(f"{path}: the file factorizes {name!r}, which the model does not have") from None
        if isinstance(linear, LowRankLinear):                 # loaded before: start again from its shape
            w = next(linear.parameters())
            linear = nn.Linear(linear.in_features, linear.out_features, bias=linear.bias is not None,
                               device=w.device, dtype=w.dtype)
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"{path}: {name!r} is a {type(linear).__name__} in the model, not an nn.Linear")
        if (linear.in_features, linear.out_features) != (layer["in_features"], layer["out_features"]):
            raise ValueError(f"{path}: {name!r} is {layer['out_features']} x {layer['in_features']} in the file "
                             f"but {linear.out_features} x {linear.in_features} in the model")
        parent_name, _, leaf = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, leaf, _empty_lowrank(linear, layer["segments"]))
    _drop_absent_biases(model, state, set(lowrank_layers(state)))
    model.load_state_dict(state, strict=strict)
    return model
