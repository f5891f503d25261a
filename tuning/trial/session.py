"""``Trial``: what a training loop needs from q3r-tune, the built-in one (``recipe.run_trial``) and
the user's own (a ``function: "module:callable"`` spec, ``recipe.run_function``) alike.

    model, optimizer = trial.prepare(model)        # the technique applied; state restored on resume
    for epoch in trial.epochs():                   # 1, 2, ..., train.epochs (after the checkpoint's)
        ...  loss = task_loss + trial.extra_loss() ...
        trial.report(epoch, evaluate, loss=mean_loss)   # evaluate(model) -> float

At every ``train.eval_every``-th epoch (and the last) ``report`` scores the model and its truncation
at every retention level with ``evaluate`` (one SVD per matrix), adds the Q3R diagnostics, decides
the trial's status (running, completed, diverged: a non-finite loss, collapsed: ``collapse_below``),
writes the checkpoint and hands the flat metrics dict to the ``report`` callback (Ray, MLflow).
``epochs()`` stops yielding once the trial has ended.

Under ``torch.distributed`` (several ranks: Ray Train in a sweep with ``resources.workers`` > 1, or
torchrun) the same loop runs on every rank: ``prepare`` wraps the model in DistributedDataParallel,
``loader`` gives each rank its part of every global batch, ``report`` averages the ranks' losses,
scores on rank 0 alone and hands the result to every rank, and rank 0 writes the checkpoint
(``tuning.trial.parallel``).
"""
from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Optional

import torch
from torch import nn

from q3r.diagnostics import diagnostics, flatten
from q3r.targets import select_targets

from . import parallel
from .evaluation import score_metric
from .files import CHECKPOINT
from .metrics import ACC, COLLAPSED, COMPLETED, DIVERGED, RUNNING, TrialReport, acc_key, level_key, levels
from .ownmodel import export_state
from .spec import TrialSpec

Report = Callable[[TrialReport], None]
Metric = Callable[[nn.Module], float]


@dataclass
class TrialResult:
    status: str                                  # completed, diverged, collapsed
    epoch: int
    metrics: dict = field(default_factory=dict)  # the last evaluation
    history: list = field(default_factory=list)  # every evaluation


def pick_device(name: str) -> torch.device:
    """The trial's device; under torch.distributed, a CUDA rank's own GPU (``torch.cuda.current_device``)."""
    if name == "auto":
        return parallel.local_device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("train.device is 'cuda' but torch sees no CUDA device; use 'auto' or 'cpu'")
    return parallel.local_device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def truncates_delta(cfg: TrialSpec) -> bool:
    """Whether scoring truncates the update W - W0 (fine-tuning) rather than W."""
    return cfg.train.truncate == "delta" or (cfg.train.truncate == "auto" and cfg.technique.finetune)


def initial_weights(cfg: TrialSpec, model) -> Optional[dict]:
    """{target name: W0} of the freshly built (pretrained) model when scoring truncates the update, else None."""
    if not truncates_delta(cfg):
        return None
    return {t.name: t.weight.detach().clone() for t in select_targets(model, tuple(cfg.model.modules))}


class Trial:
    """One trial of a spec, handed to a training loop (see the module docstring).

    Args:
        cfg: the trial spec.
        build: ``build(model, steps_per_epoch) -> Technique``: the spec's technique set up on ``model``.
        report: receives the flat metrics dict of every evaluation (Ray's ``tune.report`` in a sweep).
        checkpoint_dir: where ``checkpoint.pt`` is written at every evaluation; None: no checkpoints.
        resume: continue from ``checkpoint_dir``'s checkpoint when there is one.
        log: receives one progress line per epoch.
    """

    def __init__(self, cfg: TrialSpec, build: Callable, report: Optional[Report] = None,
                 checkpoint_dir: Optional[str] = None, resume: bool = False,
                 log: Callable[[str], None] = lambda s: None):
        self.spec = cfg
        self.device = pick_device(cfg.train.device)
        self.amp = cfg.train.amp and self.device.type == "cuda"
        self.collapse_below: Optional[float] = None   # an evaluation under this "acc" counts as at chance
        self.status = RUNNING
        self.history: list = []
        self.start_epoch = 0                           # the checkpoint's epoch when resumed
        self.last_epoch = 0                            # the last epoch reported (or the checkpoint's)
        self.model: Optional[nn.Module] = None
        self.optimizer: Optional[torch.optim.Optimizer] = None
        self.scheduler = None
        self._build, self._report, self._log, self._resume = build, report, log, resume
        self._checkpoint = Path(checkpoint_dir) / CHECKPOINT if checkpoint_dir else None
        self._tech = None
        self._base: Optional[dict] = None
        self._chance_evals = 0
        self._samplers: list = []
        self._started = time.perf_counter()

    # ---- what a loop reads ------------------------------------------------------------------------
    @property
    def technique(self) -> str:
        """The technique's name: adamq3r, adam_q3r_loss, adamw, lora or lorita."""
        return self.spec.technique.name

    @property
    def params(self) -> dict:
        """The technique's hyperparameters (lr, lmbda, target_rank, ...), every field of the spec's."""
        return {k: v for k, v in self.spec.technique.model_dump().items() if k != "name"}

    @property
    def seed(self) -> int:
        return self.spec.train.seed

    @property
    def rank(self) -> int:
        """This process's rank among the trial's workers (0 with one worker)."""
        return parallel.rank()

    @property
    def world_size(self) -> int:
        """The trial's workers (``resources.workers`` in a sweep; 1 outside torch.distributed)."""
        return parallel.world_size()

    # ---- the loop's calls -------------------------------------------------------------------------
    def prepare(self, model: nn.Module, steps_per_epoch: int = 1,
                scheduler: Optional[Callable] = None) -> tuple[nn.Module, torch.optim.Optimizer]:
        """Apply the trial's technique to ``model`` (moved to ``device``; layers wrapped, parameters
        frozen as the technique does) and return ``(model, optimizer)`` to train; on resume, restore both
        from the checkpoint, with the torch and Python RNG states. ``steps_per_epoch``: optimizer steps per
        epoch, which the eps schedules "linear" and "warmup" count in; ``scheduler(optimizer)``: an LR
        scheduler to build, checkpoint and restore with them (``trial.scheduler``)."""
        if self._tech is not None:
            raise RuntimeError("trial.prepare(model) was already called; a trial trains one model")
        if not isinstance(model, nn.Module):
            raise TypeError(f"trial.prepare takes the torch.nn.Module to train, but got {type(model).__name__}")
        if not (isinstance(steps_per_epoch, int) and steps_per_epoch >= 1):
            raise ValueError(f"steps_per_epoch must be an int >= 1, but got {steps_per_epoch=}")
        model = model.to(self.device)
        self._base = initial_weights(self.spec, model)
        self._tech = self._build(model, steps_per_epoch)
        self.model, self.optimizer = self._tech.model, self._tech.optimizer
        self.scheduler = scheduler(self.optimizer) if scheduler is not None else None
        if self._resume and self._checkpoint is not None and self._checkpoint.is_file():
            self._restore()
        self.model = parallel.wrap(self._tech.model, self.device)     # itself with one worker
        self._started = time.perf_counter()
        return self.model, self.optimizer

    def epochs(self) -> Iterator[int]:
        """The epoch numbers still to run: 1..train.epochs, after the checkpoint's when resumed;
        stops once the trial has ended (completed, diverged or collapsed)."""
        for epoch in range(self.start_epoch + 1, self.spec.train.epochs + 1):
            if self.status != RUNNING:
                return
            for sampler in self._samplers:
                sampler.set_epoch(epoch)
            yield epoch

    def loader(self, dataset, batch_size: Optional[int] = None, shuffle: bool = True, **kw):
        """A DataLoader over ``dataset`` for training: ``batch_size`` (default ``train.batch_size``) is the
        global batch; with one worker its batches are ``DataLoader(dataset, batch_size, shuffle=True)``'s
        shuffled afresh each epoch from the trial's seed, with N workers each rank gets its part of every
        one of those batches (``parallel.RankBatches``). ``kw`` goes to the DataLoader (num_workers, ...)."""
        batch_size = self.spec.train.batch_size if batch_size is None else batch_size
        sampler = parallel.RankBatches(len(dataset), batch_size, self.seed, shuffle)
        sampler.set_epoch(self.last_epoch + 1)
        self._samplers.append(sampler)
        return torch.utils.data.DataLoader(dataset, batch_sampler=sampler, **kw)

    def extra_loss(self):
        """lmbda * Q3R penalty for adam_q3r_loss (counts one step of the penalty's period); 0.0 otherwise.
        Add it to the loss once per optimizer step."""
        return self._prepared().extra_loss()

    def report(self, epoch: int, evaluate: Metric, loss: Optional[float] = None) -> Optional[dict]:
        """End epoch ``epoch``: at an evaluation epoch, score the model with ``evaluate(model) -> float``
        at every retention level, write the checkpoint and report; returns the metrics dict then, else
        None. ``loss``: the epoch's mean training loss (a non-finite one ends the trial as diverged)."""
        tech = self._prepared()
        self._check_epoch(epoch)
        train = self.spec.train
        loss = None if loss is None else parallel.mean(float(loss), self.device)    # the workers' mean
        status = DIVERGED if loss is not None and not math.isfinite(loss) else RUNNING
        is_eval = epoch % train.eval_every == 0 or epoch == train.epochs or status != RUNNING
        if not is_eval:
            if self.rank == 0:
                self._log(f"epoch {epoch}/{train.epochs}" + (f"  loss {loss:.4f}" if loss is not None else ""))
            return None
        # rank 0 scores; every rank gets its metrics (the same status, so they stop together)
        metrics = parallel.from_main(self._evaluate(tech, epoch, loss, status, evaluate) if self.rank == 0 else None)
        self.status = metrics["status"]
        self.history.append(metrics)
        if self.rank == 0:
            self._log(progress_line(metrics, train.epochs))
            if self._checkpoint is not None and self.status != DIVERGED:
                self._save(epoch)
        if self._report is not None:
            self._report(metrics)
        return metrics

    def result(self) -> TrialResult:
        """The trial's outcome: its status, last epoch, last evaluation and every evaluation."""
        last = self.history[-1] if self.history else {}
        if self.status != RUNNING:
            return TrialResult(self.status, last["epoch"], last, self.history)
        return TrialResult(last.get("status", COMPLETED), self.spec.train.epochs, last, self.history)

    # ---- inside -----------------------------------------------------------------------------------
    def _prepared(self):
        if self._tech is None:
            raise RuntimeError("call model, optimizer = trial.prepare(model) before training or reporting")
        return self._tech

    def _evaluate(self, tech, epoch: int, loss: Optional[float], status: str, evaluate: Metric) -> dict:
        """The metrics of an evaluation epoch, with the trial's status."""
        train = self.spec.train
        metrics = {"epoch": epoch, **({"train_loss": loss} if loss is not None else {}),
                   "time_s": time.perf_counter() - self._started}
        if status == RUNNING:
            metrics.update(self._score(tech, evaluate))
            at_chance = self.collapse_below is not None and metrics[ACC] < self.collapse_below
            self._chance_evals = self._chance_evals + 1 if at_chance else 0
            if self._chance_evals >= train.collapse_patience and epoch >= train.collapse_after * train.epochs:
                status = COLLAPSED          # at chance for collapse_patience evaluations, late enough to be lost
        if status == RUNNING and epoch == train.epochs:
            status = COMPLETED
        metrics["status"] = status
        return metrics

    def _check_epoch(self, epoch) -> None:
        total = self.spec.train.epochs
        if isinstance(epoch, bool) or not isinstance(epoch, int) or not self.last_epoch < epoch <= total:
            raise ValueError(f"trial.report(epoch, ...) takes the epoch number that trial.epochs() yielded "
                             f"(after {self.last_epoch}, at most train.epochs={total}), but got {epoch=}")
        self.last_epoch = epoch

    def _score(self, tech, evaluate: Metric) -> dict:
        """Scores at every retention level plus the mean Q3R diagnostics, as one flat dict; the update
        W - W0 is truncated and diagnosed instead of W when the trial fine-tunes."""
        if not callable(evaluate):
            raise TypeError(f"trial.report(epoch, evaluate): evaluate must be a function model -> float, "
                            f"but got {type(evaluate).__name__}")
        was_training = tech.model.training
        dense = tech.dense_model()
        targets = select_targets(dense, tuple(self.spec.model.modules))
        with torch.no_grad():
            metrics, cache = score_metric(dense, targets, evaluate, self.spec.train.retentions, self._base,
                                          self.spec.train.metric.as_metric())
        tech.model.train(was_training)
        diag = diagnostics(targets, self.spec.technique.target_rank, banks=tech.banks(), spectra=cache)
        metrics.update({k: v for k, v in flatten(diag).items() if k.startswith("diag/mean/")})
        return metrics

    def _save(self, epoch: int) -> None:
        """Model, optimizer with its Q3R operators, scheduler, RNG states; written atomically. A function
        trial's also carries the merged weights and the targets of its model (``ownmodel.export_state``)."""
        path = self._checkpoint
        path.parent.mkdir(parents=True, exist_ok=True)
        state = {"model": self._tech.model.state_dict(), "technique": self._tech.state_dict(),
                 "scheduler": None if self.scheduler is None else self.scheduler.state_dict(),
                 "epoch": epoch, "history": self.history,
                 "rng": {"torch": torch.get_rng_state(), "python": _to_list(random.getstate())}}
        if self.spec.function is not None:       # the user's model: its merged weights, for q3r-tune export
            state["export"] = export_state(self._tech, self.spec.model.modules)
        tmp = path.with_suffix(".tmp")
        torch.save(state, tmp)
        tmp.replace(path)

    def _restore(self) -> None:
        state = torch.load(self._checkpoint, map_location=self.device, weights_only=True)
        self._tech.model.load_state_dict(state["model"])
        self._tech.load_state_dict(state["technique"])
        if self.scheduler is not None and state.get("scheduler") is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"]["torch"])
        random.setstate(_to_tuple(state["rng"]["python"]))
        self.start_epoch, self.history = int(state["epoch"]), list(state["history"])
        self.last_epoch = self.start_epoch
        self._log(f"resumed from {self._checkpoint} at epoch {self.start_epoch}")


def progress_line(m: dict, epochs: int) -> str:
    accs = "  ".join(f"{level_key(p)}:{m[acc_key(p)]:.3f}" for p in levels(m))
    acc = f"acc {m[ACC]:.3f}  " if ACC in m else ""
    loss = f"  loss {m['train_loss']:.4f}" if "train_loss" in m else ""
    return f"epoch {m['epoch']}/{epochs}{loss}  {acc}{accs}  [{m['status']}]"


def _to_list(x):
    return [_to_list(v) for v in x] if isinstance(x, tuple) else x


def _to_tuple(x):
    return tuple(_to_tuple(v) for v in x) if isinstance(x, list) else x
