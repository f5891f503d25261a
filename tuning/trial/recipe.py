"""The training recipe of one trial, usable on its own (``q3r-tune train``) or inside a sweep.

``run_trial`` is the built-in loop, written against the same ``Trial`` (``tuning.trial.session``)
that a user's own loop gets (``run_function``, a spec with ``function: "module:callable"``): every
``eval_every`` epochs the trial scores the full model and its truncations at every retention level,
adds the Q3R diagnostics, hands one flat dict to ``report`` and writes a checkpoint from which
``run_trial(..., resume=True)`` continues identically. A trial whose loss turns non-finite, or whose
accuracy sits at chance (rank collapse) for ``collapse_patience`` evaluations once ``collapse_after``
of its epochs are done, stops itself: on digits, trials at chance in their first epochs often
recover (``benchmarks/collapse_recovery.py``).
"""
from __future__ import annotations

import math
import traceback
from typing import Callable, Optional

import torch
from torch.utils.data import DataLoader

from . import parallel
from .batches import TensorBatches, in_memory, loader_order
from .spec import TrialSpec
from .data import load_dataset
from .evaluation import builtin_evaluate, forward_batch, task_loss
from .metrics import RUNNING
from .models import build_model
from .session import (CHECKPOINT, Report, Trial, TrialResult, initial_weights, pick_device, seed_everything,
                      truncates_delta)
from .techniques import build_technique
from .usercode import import_callable

__all__ = ["CHECKPOINT", "Report", "Trial", "TrialResult", "FunctionError", "run_trial", "run_function", "open_trial",
           "make_technique", "technique_options", "make_schedule", "load_data", "task_loss", "eval_batch_size",
           "pick_device", "seed_everything", "initial_weights", "truncates_delta"]


class FunctionError(RuntimeError):
    """The user's training function raised, or returned without finishing its trial."""


def make_schedule(cfg: TrialSpec, optimizer, steps_per_epoch: int):
    """Constant (the paper's default) or linear warmup then cosine decay, stepped per batch."""
    total = cfg.train.epochs * steps_per_epoch
    warmup = cfg.train.warmup_epochs * steps_per_epoch

    def factor(step: int) -> float:
        if cfg.train.schedule == "constant":
            return 1.0
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def technique_options(t, total_steps: int) -> dict:
    """The technique-specific options of the spec: the operator bank's for the Q3R techniques, the
    form (and alpha) for LoRA, the product form for LoRITa. The "linear" eps schedule decays over
    ``t.eps_steps`` reweightings (the published code's N); unset, over this trial's reweightings after the first
    (ceil(total_steps / period) - 1), so eps reaches 1e-5 at the last one. "auto" is "warmup" when
    fine-tuning (Delta W starts at zero) and the paper's rule otherwise; "warmup" lets eps follow
    sigma_{r+1} for ``t.eps_warmup`` optimizer steps (unset: the whole trial), that is for
    ceil(eps_warmup / period) reweightings, and then falls back to the paper's running minimum. Under
    torch.distributed the ranks share the reweighting out (``q3r.distributed``, "share")."""
    if t.name in ("adamq3r", "adam_q3r_loss"):
        schedule = t.eps_schedule
        if schedule == "auto":
            schedule = "warmup" if t.finetune else "paper"
        if schedule == "linear":
            schedule = {"name": "linear", "steps": t.eps_steps or max(1, math.ceil(total_steps / t.period) - 1)}
        elif schedule == "warmup":
            warmup = t.eps_warmup if t.eps_warmup is not None else total_steps
            schedule = {"name": "warmup", "reweightings": math.ceil(warmup / t.period)}
        shared = {"distributed": parallel.SHARE} if parallel.active() else {}     # the same operators on every rank
        return {"eps_schedule": schedule, "svd": t.svd, **shared}
    if t.name == "lora":
        return {"lora_form": t.lora_form, **({} if t.lora_alpha is None else {"lora_alpha": t.lora_alpha})}
    return {"lorita_form": t.lorita_form} if t.name == "lorita" else {}


def load_data(cfg: TrialSpec):
    """``(train_set, val_set, DatasetInfo)`` of the spec; the split depends on ``train.seed``."""
    d = cfg.data
    return load_dataset(d.name, data_root=d.data_root, seed=cfg.train.seed, augment=d.augment, download=d.download,
                        image_size=d.image_size, task=d.task, tokenizer=d.tokenizer, max_length=d.max_length,
                        limit=d.limit, classes=d.classes, factory=d.factory, kwargs=d.kwargs, code=d.code)


def eval_batch_size(cfg: TrialSpec) -> int:
    """The batch size of the validation passes that score a trial."""
    return max(256, cfg.train.batch_size)


def make_technique(cfg: TrialSpec, model, steps_per_epoch: int = 1):
    """The spec's technique set up on ``model`` (which it modifies in place, see ``build_technique``)."""
    t = cfg.technique
    return build_technique(t.name, model, modules=tuple(cfg.model.modules), lr=t.lr, weight_decay=t.weight_decay,
                           lmbda=t.lmbda, target_rank=t.target_rank, period=t.period, depth=t.depth,
                           alpha=t.alpha, lora_rank=t.lora_rank, finetune=t.finetune, **technique_options(t, cfg.train.epochs * steps_per_epoch))


def open_trial(cfg: TrialSpec, report: Optional[Report] = None, checkpoint_dir: Optional[str] = None,
               resume: bool = False, log: Callable[[str], None] = lambda s: None) -> Trial:
    """The ``Trial`` of ``cfg``, with torch's threads set and every RNG seeded from ``train.seed``."""
    torch.set_num_threads(cfg.train.threads)
    trial = Trial(cfg, lambda model, steps: make_technique(cfg, model, steps), report, checkpoint_dir, resume, log)
    seed_everything(cfg.train.seed)
    return trial


def run_trial(cfg: TrialSpec, report: Optional[Report] = None, checkpoint_dir: Optional[str] = None,
              resume: bool = False, log: Callable[[str], None] = lambda s: None) -> TrialResult:
    """Train one configuration; ``report`` receives the flat metrics dict of every evaluation.
    A spec with ``function`` runs the user's own loop instead (``run_function``)."""
    if cfg.function is not None:
        return run_function(cfg, report, checkpoint_dir, resume, log)
    trial = open_trial(cfg, report, checkpoint_dir, resume, log)
    train_set, val_set, info = load_data(cfg)
    steps = math.ceil(len(train_set) / cfg.train.batch_size)
    trial.prepare(build_model(cfg.model, info), steps, lambda optimizer: make_schedule(cfg, optimizer, steps))
    trial.collapse_below = 1.5 / info.num_classes if info.num_classes > 1 else None
    evaluate = validation_accuracy(cfg, val_set, trial)
    for epoch in trial.epochs():
        trial.report(epoch, evaluate, loss=train_epoch(cfg, trial, train_set, epoch))
    return trial.result()


def train_epoch(cfg: TrialSpec, trial: Trial, train_set, epoch: int) -> float:
    """One pass over ``train_set`` (shuffled by seed and epoch, so a resumed trial sees the same
    batches); the mean task loss (this rank's, over its part of each batch, with several workers)."""
    device = trial.device
    loader = epoch_batches(cfg, train_set, epoch, pin=device.type == "cuda")
    trial.model.train()
    loss_sum, n = torch.zeros((), device=device), 0
    for batch in loader:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=trial.amp):
            logits, y = forward_batch(trial.model, batch, device)
            loss = task_loss(logits, y)
        extra = trial.extra_loss()
        total = loss + extra if torch.is_tensor(extra) else loss      # no "+ 0.0" node in the graph
        trial.optimizer.zero_grad(set_to_none=True)
        total.backward()
        if cfg.train.grad_clip:              # on every device: a result must not depend on where it ran
            torch.nn.utils.clip_grad_norm_(trial.model.parameters(), cfg.train.grad_clip)
        trial.optimizer.step()
        trial.scheduler.step()
        loss_sum += loss.detach()
        n += 1
    return float(loss_sum) / max(n, 1)                # one host sync per epoch


def epoch_batches(cfg: TrialSpec, train_set, epoch: int, pin: bool = False):
    """The training batches of epoch ``epoch``: shuffled by seed and epoch, so a resumed trial sees the same
    ones; a dataset in memory is sliced by index (``batches``: the batches the DataLoader would give)."""
    if parallel.active():               # this rank's part of each of the global batches
        batches = parallel.RankBatches(len(train_set), cfg.train.batch_size, cfg.train.seed)
        batches.set_epoch(epoch)
        return DataLoader(train_set, batch_sampler=batches, pin_memory=pin)
    order = parallel.epoch_generator(cfg.train.seed, epoch)
    tensors = in_memory(train_set)
    if tensors is not None:
        return TensorBatches(tensors, cfg.train.batch_size, loader_order(len(tensors[0]), order))
    return DataLoader(train_set, batch_size=cfg.train.batch_size, shuffle=True, generator=order, pin_memory=pin,
                      drop_last=False)


def validation_accuracy(cfg: TrialSpec, val_set, trial: Trial) -> Callable:
    """The built-in metric: ``model -> {"acc": accuracy}`` on the validation set (Pearson r for a regression
    head), with ``"val_loss"`` when that is the spec's metric."""
    tensors = in_memory(val_set)
    loader = TensorBatches(tensors, eval_batch_size(cfg)) if tensors is not None else \
        DataLoader(val_set, batch_size=eval_batch_size(cfg), pin_memory=trial.device.type == "cuda")
    return builtin_evaluate(loader, trial.device, trial.amp, cfg.train.metric.as_metric())


def run_function(cfg: TrialSpec, report: Optional[Report] = None, checkpoint_dir: Optional[str] = None,
                 resume: bool = False, log: Callable[[str], None] = lambda s: None) -> TrialResult:
    """Run the user's training function ``cfg.function`` ("module:callable", imported with
    ``cfg.code_dir`` first on the path) once with this trial's ``Trial``. ``UserCodeError`` when it
    does not import; ``FunctionError`` (with the last lines of its traceback) when it raises, never
    reports, or returns before its trial ended."""
    fn = import_callable(cfg.function, [cfg.code_dir])
    trial = open_trial(cfg, report, checkpoint_dir, resume, log)
    try:
        fn(trial)
    except Exception as e:          # noqa: BLE001 - the user's code: its error, in a few lines
        raise FunctionError(f"function {cfg.function!r} raised {type(e).__name__}: {e}\n{last_lines(e)}") from e
    if not trial.history and trial.last_epoch == 0:
        raise FunctionError(f"function {cfg.function!r} returned without calling trial.report(epoch, evaluate); "
                            f"report every epoch of trial.epochs() so that q3r-tune can score the trial")
    if trial.status == RUNNING and trial.last_epoch < cfg.train.epochs:
        raise FunctionError(f"function {cfg.function!r} returned after reporting epoch {trial.last_epoch} "
                            f"of train.epochs={cfg.train.epochs}; loop over trial.epochs() and report each epoch")
    return trial.result()


def last_lines(error: BaseException, lines: int = 6) -> str:
    """The last ``lines`` lines of ``error``'s traceback."""
    text = "".join(traceback.format_exception(type(error), error, error.__traceback__)).rstrip()
    return "\n".join(text.splitlines()[-lines:])
