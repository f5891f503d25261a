"""The model of a user's own loop (a ``function:`` spec), exported without the user's class.

q3r-tune never builds that model (the user's function does), so a function trial's checkpoint
carries what the export needs (``export_state``, written by ``Trial`` at every checkpoint):

    "export": {"dense":      the merged model's state dict (``Technique.dense_model``: plain nn.Linear
                             weights), or None when the technique replaced no layer (then "model" is it),
               "parameters": the names of its parameters (``named_parameters``: tied ones once),
               "targets":    [{"name", "param_name", "row_start", "row_end"}, ...] as the trial scored them}

``stand_in(...)`` rebuilds from that a module tree holding those tensors under their names, with a
real nn.Linear at every targeted layer: ``q3r.SpectralCache.factorized_model`` and
``q3r.parameter_counts`` then work on it as on the user's model, and ``q3r.save_lowrank`` writes the
file that ``q3r.load_lowrank(fresh_instance_of_the_users_model, path)`` loads. The stand-in holds the
weights but computes nothing.
"""
from __future__ import annotations

from pathlib import Path
from typing import Union

import torch
from torch import nn

from q3r.targets import Target, select_targets

from .layers import plain_linear

FORMAT = 1


class StandIn(nn.Module):
    """A node of the stand-in tree: tensors and children under the user's model's names."""

    def forward(self, *args, **kwargs):
        raise RuntimeError("this stand-in holds the weights of a user's model but not its code: load the exported "
                           "file into a fresh instance of that model with q3r.load_lowrank(model, path)")


def export_state(tech, modules) -> dict:
    """What a function trial's checkpoint carries for its export (see the module docstring)."""
    dense = tech.dense_model()
    targets = select_targets(dense, tuple(modules))
    return {"format": FORMAT,
            "dense": None if dense is tech.model else {k: v.detach().cpu() for k, v in dense.state_dict().items()},
            "parameters": [name for name, _ in dense.named_parameters()],
            "targets": [{"name": t.name, "param_name": t.param_name, "row_start": t.row_start, "row_end": t.row_end}
                        for t in targets]}


def stand_in(state: dict, parameters, targets: list[dict]) -> tuple[nn.Module, list[Target]]:
    """(the stand-in module of a dense state dict, its targets): an nn.Linear at every targeted layer,
    the other tensors as parameters (those named in ``parameters``) or buffers, each under its name."""
    linears = list(dict.fromkeys(t["param_name"].rpartition(".")[0] for t in targets))
    parameters = set(parameters)
    root: nn.Module = StandIn()
    if "" in linears:                                        # the model is itself one nn.Linear
        root = plain_linear(state["weight"], state.get("bias"))
    for name in linears:
        if name:
            parent, _, leaf = name.rpartition(".")
            _node(root, parent).add_module(leaf, plain_linear(state[f"{name}.weight"], state.get(f"{name}.bias")))
    for key, tensor in state.items():
        module, _, leaf = key.rpartition(".")
        if module in linears and leaf in ("weight", "bias"):
            continue
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"the model's state entry {key!r} is a {type(tensor).__name__}, not a tensor: "
                            f"the export writes tensors only")
        node = _node(root, module)
        if key in parameters:
            node.register_parameter(leaf, nn.Parameter(tensor.clone(), requires_grad=False))
        else:
            node.register_buffer(leaf, tensor.clone())
    params = dict(root.named_parameters())
    return root, [Target(params[t["param_name"]], t["name"], t["param_name"], t["row_start"], t["row_end"])
                  for t in targets]


def _node(root: nn.Module, name: str) -> nn.Module:
    """The submodule ``name`` of ``root``, StandIn nodes created on the way."""
    node = root
    for part in name.split(".") if name else ():
        child = dict(node.named_children()).get(part)
        if child is None:
            child = StandIn()
            node.add_module(part, child)
        node = child
    return node


def stand_in_from_checkpoint(checkpoint: Union[str, Path]) -> tuple[nn.Module, list[Target], int]:
    """(stand-in of the merged model in eval mode, its targets, the checkpoint's epoch) of a function trial."""
    checkpoint = Path(checkpoint)
    if not checkpoint.is_file():
        raise FileNotFoundError(f"no checkpoint at {checkpoint}")
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    saved = state.get("export")
    if not isinstance(saved, dict) or saved.get("format") != FORMAT:
        raise ValueError(f"the checkpoint {checkpoint} carries no export state of the user's model (it was written "
                         f"by a q3r-tune from before function trials could be exported): train the trial again")
    dense = saved["dense"] if saved["dense"] is not None else state["model"]
    model, targets = stand_in(dense, saved["parameters"], saved["targets"])
    return model.eval(), targets, int(state.get("epoch", 0))
