"""The compressed model of a trained trial: truncated, factorized, written as a folder anyone can load.

``export_model(cfg, checkpoint, retention, out_dir)`` rebuilds the trial's model from its spec,
loads the checkpoint's weights, merges the technique's layers (``Technique.dense_model``), cuts
every targeted matrix to rank r(p) and replaces its Linear by a factor pair
(``q3r.SpectralCache.factorized_model``), so the saving is real, and writes::

    out_dir/model.safetensors   the factorized weights (``q3r.save_lowrank``)
    out_dir/spec.yaml           the trial spec (``q3r-tune train`` runs it as is)
    out_dir/export.json         retention, parameter counts, the dataset's shape, where it came from

``load_exported(out_dir)`` builds the dense architecture from ``spec.yaml`` and loads the weights
with ``q3r.load_lowrank``; nothing of the sweep layer is needed.

A trial of the user's own loop (a ``function:`` spec) is exported from its checkpoint alone: the
merged weights and targets that ``Trial`` saved there stand in for the user's model
(``tuning.trial.ownmodel``), and the same truncation writes the same file, which
``q3r.load_lowrank(fresh_instance_of_the_users_model, path)`` (or ``load_exported(out_dir, model)``) loads.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional, Union

import torch
from torch import nn
from torch.utils.data import DataLoader

from q3r.lowrank_io import load_lowrank, save_lowrank
from q3r.targets import select_targets
from q3r.truncation import SpectralCache, parameter_counts

from .data import DatasetInfo
from .evaluation import accuracy
from .files import INFO, SPEC, WEIGHTS
from .metrics import level_key
from .models import build_model
from .ownmodel import stand_in_from_checkpoint
from .recipe import eval_batch_size, load_data, make_technique
from .spec import TrialSpec, dump, load

EXAMPLE_ROWS = 4          # validation rows kept as an input example (MLflow's signature)


@dataclass
class ExportResult:
    folder: Path
    model: nn.Module                 # the factorized model (CPU, eval mode; a function trial's: a stand-in)
    retention: float
    parameters: int                  # what the folder holds: the factorized model's parameter count
    counted: int                     # q3r.parameter_counts(...)["model_kept"]: params@p as a sweep scores it
    dense_parameters: int
    epoch: int                       # the checkpoint's epoch
    info: dict = field(default_factory=dict)          # export.json
    example: Optional[object] = None                  # numpy batch of validation images (None for text)

    @property
    def weights(self) -> Path:
        return self.folder / WEIGHTS


def dense_from_checkpoint(cfg: TrialSpec, checkpoint: Union[str, Path]):
    """(dense model on CPU in eval mode, checkpoint epoch, validation set, DatasetInfo) of a trial:
    the spec's model and technique rebuilt as ``run_trial`` builds them, the checkpoint's weights
    loaded, the technique's layers merged into plain nn.Linear."""
    checkpoint = Path(checkpoint)
    if not checkpoint.is_file():
        raise FileNotFoundError(f"no checkpoint at {checkpoint}")
    _, val_set, info = load_data(cfg)
    torch.manual_seed(cfg.train.seed)
    tech = make_technique(cfg, build_model(cfg.model, info))
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    tech.model.load_state_dict(state["model"])
    dense = tech.dense_model().eval()
    return dense, int(state.get("epoch", 0)), val_set, info


def example_batch(val_set, rows: int = EXAMPLE_ROWS):
    """The first ``rows`` validation inputs as a numpy array (image data), else None."""
    batch = next(iter(DataLoader(val_set, batch_size=rows)))
    if isinstance(batch, (list, tuple)) and isinstance(batch[0], torch.Tensor):
        return batch[0].numpy()
    return None


def export_model(cfg: TrialSpec, checkpoint: Union[str, Path], retention: float, out_dir: Union[str, Path],
                 extra: Optional[dict] = None, expect_epoch: Optional[int] = None,
                 verify: bool = False) -> ExportResult:
    """Write the trial's model truncated and factorized at ``retention`` into ``out_dir``.

    ``extra`` is added to ``export.json`` (where the model came from: trial, run, recorded scores);
    ``expect_epoch`` fails, before anything is written, when the checkpoint is of another epoch
    than the scores it is exported for; ``verify`` also measures the exported model's accuracy on
    the validation split (``export.json`` ``accuracy``).
    """
    retention = float(retention)
    if not 0 < retention <= 1:
        raise ValueError(f"retention must be in (0, 1], but got {retention!r}")
    if cfg.function is None:
        dense, epoch, val_set, info = dense_from_checkpoint(cfg, checkpoint)
        targets = select_targets(dense, tuple(cfg.model.modules))
    else:
        if verify:
            raise ValueError(f"verify measures the built-in accuracy, but this trial is scored by function "
                             f"{cfg.function!r}: load the export into your model (q3r.load_lowrank) and score it there")
        dense, targets, epoch = stand_in_from_checkpoint(checkpoint)
        val_set = info = None
    if expect_epoch is not None and epoch != expect_epoch:
        raise ValueError(f"the checkpoint {checkpoint} is of epoch {epoch}, but the scores it should reproduce "
                         f"were recorded at epoch {expect_epoch}")
    with torch.no_grad():
        small = SpectralCache(targets).factorized_model(dense, retention).eval()
    counts = parameter_counts(dense, targets, retention)
    parameters = sum(p.numel() for p in small.parameters())
    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    record = {"format": 1, "technique": cfg.technique.name, "retention": retention, "level": level_key(retention),
              "parameters": parameters, "params@p": counts["model_kept"], "dense_parameters": counts["model_dense"],
              "targeted_fraction": counts["targeted_kept"] / counts["targeted_dense"], "epoch": epoch,
              "dataset": None if info is None else asdict(info), "checkpoint": str(Path(checkpoint).resolve()),
              "files": {"weights": WEIGHTS, "spec": SPEC}, **({"function": cfg.function} if cfg.function else {}),
              **(extra or {})}
    if verify:
        record["accuracy"] = accuracy(small, DataLoader(val_set, batch_size=eval_batch_size(cfg)), torch.device("cpu"))
    save_lowrank(small, folder / WEIGHTS, metadata={"retention": retention, "technique": cfg.technique.name,
                                                   "spec": json.dumps(cfg.to_dict())})
    dump(cfg, folder / SPEC)
    (folder / INFO).write_text(json.dumps(record, indent=2) + "\n")
    return ExportResult(folder, small, retention, parameters, counts["model_kept"], counts["model_dense"], epoch,
                        record, None if val_set is None else example_batch(val_set))


def read_export(folder: Union[str, Path]) -> tuple[TrialSpec, dict]:
    """(trial spec, export.json) of an exported folder."""
    folder = Path(folder)
    if not (folder / INFO).is_file():
        raise FileNotFoundError(f"{folder} holds no {INFO}: not a folder written by q3r-tune export")
    return load(folder / SPEC), json.loads((folder / INFO).read_text())


def load_exported(folder: Union[str, Path], model: Optional[nn.Module] = None) -> nn.Module:
    """The exported model, ready to run (CPU, eval mode): the spec's dense architecture (or ``model``, a
    fresh instance of it: needed for a function trial's, whose class is the user's) with its truncated
    Linears replaced by the stored factor pairs (``q3r.load_lowrank``)."""
    cfg, info = read_export(folder)
    if model is None:
        if cfg.function is not None:
            raise ValueError(f"{folder} holds the model of function {cfg.function!r}, whose class q3r-tune does not "
                             f"know: pass a fresh instance of it, load_exported(folder, model)")
        model = build_model(cfg.model, DatasetInfo(**info["dataset"]))
    return load_lowrank(model, Path(folder) / WEIGHTS).eval()
