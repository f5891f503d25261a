"""The training recipe of one trial, usable on its own (``q3r-tune train``) or inside a sweep.

Every ``eval_every`` epochs the trial scores the full model and its truncations at every
retention level, adds the Q3R diagnostics, hands one flat dict to ``report`` and writes a
checkpoint from which ``run_trial(..., resume=True)`` continues identically. A trial whose
loss turns non-finite, or whose accuracy sits at chance (rank collapse) for ``collapse_patience``
evaluations once ``collapse_after`` of its epochs are done, stops itself: on digits, trials at
chance in their first epochs often recover (``benchmarks/collapse_recovery.py``).
"""
from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import torch
from torch.utils.data import DataLoader

from q3r.diagnostics import diagnostics, flatten
from q3r.targets import select_targets

from .spec import TrialSpec
from .data import load_dataset
from .evaluation import forward_batch, score, task_loss
from .files import CHECKPOINT
from .models import build_model
from .techniques import build_technique

Report = Callable[[dict], None]


@dataclass
class TrialResult:
    status: str                                  # completed, diverged, collapsed
    epoch: int
    metrics: dict = field(default_factory=dict)  # the last evaluation
    history: list = field(default_factory=list)  # every evaluation


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("train.device is 'cuda' but torch sees no CUDA device; use 'auto' or 'cpu'")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


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
    product form for LoRITa. The "linear" eps schedule decays over ``t.eps_steps`` reweightings (the
    published code's N); unset, over this trial's reweightings after the first
    (ceil(total_steps / period) - 1), so eps reaches 1e-5 at the last one. "auto" is "warmup" when
    fine-tuning (Delta W starts at zero) and the paper's rule otherwise; "warmup" lets eps follow
    sigma_{r+1} for ``t.eps_warmup`` optimizer steps (unset: the whole trial), that is for
    ceil(eps_warmup / period) reweightings, and then falls back to the paper's running minimum."""
    if t.name in ("adamq3r", "adam_q3r_loss"):
        schedule = t.eps_schedule
        if schedule == "auto":
            schedule = "warmup" if t.finetune else "paper"
        if schedule == "linear":
            schedule = {"name": "linear", "steps": t.eps_steps or max(1, math.ceil(total_steps / t.period) - 1)}
        elif schedule == "warmup":
            warmup = t.eps_warmup if t.eps_warmup is not None else total_steps
            schedule = {"name": "warmup", "reweightings": math.ceil(warmup / t.period)}
        return {"eps_schedule": schedule, "svd": t.svd}
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


def run_trial(cfg: TrialSpec, report: Optional[Report] = None, checkpoint_dir: Optional[str] = None,
              resume: bool = False, log: Callable[[str], None] = lambda s: None) -> TrialResult:
    """Train one configuration; ``report`` receives the flat metrics dict of every evaluation."""
    torch.set_num_threads(cfg.train.threads)
    device = pick_device(cfg.train.device)
    on_gpu = device.type == "cuda"
    seed_everything(cfg.train.seed)
    train_set, val_set, info = load_data(cfg)
    model = build_model(cfg.model, info).to(device)
    steps_per_epoch = math.ceil(len(train_set) / cfg.train.batch_size)
    base = initial_weights(cfg, model)
    tech = make_technique(cfg, model, steps_per_epoch)
    val_loader = DataLoader(val_set, batch_size=eval_batch_size(cfg), pin_memory=on_gpu)
    sched = make_schedule(cfg, tech.optimizer, steps_per_epoch)
    amp = cfg.train.amp and on_gpu
    history: list = []
    start_epoch = 0
    ckpt_path = Path(checkpoint_dir) / CHECKPOINT if checkpoint_dir else None
    if resume and ckpt_path is not None and ckpt_path.is_file():
        state = torch.load(ckpt_path, map_location=device, weights_only=True)
        tech.model.load_state_dict(state["model"])
        tech.load_state_dict(state["technique"])
        sched.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"]["torch"])
        random.setstate(_to_tuple(state["rng"]["python"]))
        start_epoch, history = int(state["epoch"]), list(state["history"])
        log(f"resumed from {ckpt_path} at epoch {start_epoch}")
    chance_evals = 0
    started = time.perf_counter()
    for epoch in range(start_epoch, cfg.train.epochs):
        order = torch.Generator().manual_seed(cfg.train.seed * 100_003 + epoch)   # shuffles resume identically
        loader = DataLoader(train_set, batch_size=cfg.train.batch_size, shuffle=True, generator=order,
                            pin_memory=on_gpu, drop_last=False)
        tech.model.train()
        loss_sum, n = torch.zeros((), device=device), 0
        for batch in loader:
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                logits, y = forward_batch(tech.model, batch, device)
                loss = task_loss(logits, y)
            total = loss + tech.extra_loss()
            tech.optimizer.zero_grad(set_to_none=True)
            total.backward()
            if cfg.train.grad_clip:              # on every device: a result must not depend on where it ran
                torch.nn.utils.clip_grad_norm_(tech.model.parameters(), cfg.train.grad_clip)
            tech.optimizer.step()
            sched.step()
            loss_sum += loss.detach()
            n += 1
        train_loss = float(loss_sum) / max(n, 1)                # one host sync per epoch
        done = epoch + 1
        status = "running"
        if not math.isfinite(train_loss):
            status = "diverged"
        is_eval = done % cfg.train.eval_every == 0 or done == cfg.train.epochs or status != "running"
        if not is_eval:
            log(f"epoch {done}/{cfg.train.epochs}  loss {train_loss:.4f}")
            continue
        metrics = {"epoch": done, "train_loss": train_loss, "time_s": time.perf_counter() - started}
        if status == "running":
            metrics.update(evaluate(cfg, tech, val_loader, device, amp, base))
            at_chance = info.num_classes > 1 and metrics["acc"] < 1.5 / info.num_classes
            chance_evals = chance_evals + 1 if at_chance else 0
            if chance_evals >= cfg.train.collapse_patience and done >= cfg.train.collapse_after * cfg.train.epochs:
                status = "collapsed"          # at chance for collapse_patience evaluations, late enough to be lost
        if status == "running" and done == cfg.train.epochs:
            status = "completed"
        metrics["status"] = status
        history.append(metrics)
        log(_progress_line(metrics, cfg))
        if ckpt_path is not None and status != "diverged":
            save_checkpoint(ckpt_path, tech, sched, done, history)
        if report is not None:
            report(metrics)
        if status != "running":
            return TrialResult(status, done, metrics, history)
    last = history[-1] if history else {}
    return TrialResult(last.get("status", "completed"), cfg.train.epochs, last, history)


def truncates_delta(cfg: TrialSpec) -> bool:
    """Whether scoring truncates the update W - W0 (fine-tuning) rather than W."""
    return cfg.train.truncate == "delta" or (cfg.train.truncate == "auto" and cfg.technique.finetune)


def initial_weights(cfg: TrialSpec, model) -> Optional[dict]:
    """{target name: W0} of the freshly built (pretrained) model when scoring truncates the update, else None."""
    if not truncates_delta(cfg):
        return None
    return {t.name: t.weight.detach().clone() for t in select_targets(model, tuple(cfg.model.modules))}


def evaluate(cfg: TrialSpec, tech, val_loader, device, amp, base: Optional[dict] = None) -> dict:
    """Scores at every retention level plus the mean Q3R diagnostics, as one flat dict; with ``base``
    (W0 by target name) the update W - W0 is truncated and diagnosed instead of W."""
    dense = tech.dense_model()
    targets = select_targets(dense, tuple(cfg.model.modules))
    metrics, cache = score(dense, targets, val_loader, cfg.train.retentions, device, amp, base,
                           cfg.train.metric.as_metric())
    diag = diagnostics(targets, cfg.technique.target_rank, banks=tech.banks(), spectra=cache)
    metrics.update({k: v for k, v in flatten(diag).items() if k.startswith("diag/mean/")})
    return metrics


def save_checkpoint(path: Path, tech, sched, epoch: int, history: list) -> None:
    """Model, optimizer with its Q3R operators, scheduler, RNG states; written atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {"model": tech.model.state_dict(), "technique": tech.state_dict(), "scheduler": sched.state_dict(),
             "epoch": epoch, "history": history,
             "rng": {"torch": torch.get_rng_state(), "python": _to_list(random.getstate())}}
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)


def _to_list(x):
    return [_to_list(v) for v in x] if isinstance(x, tuple) else x


def _to_tuple(x):
    return tuple(_to_tuple(v) for v in x) if isinstance(x, list) else x


def _progress_line(m: dict, cfg: TrialSpec) -> str:
    accs = "  ".join(f"{k[4:]}:{m[k]:.3f}" for k in m if k.startswith("acc@"))
    acc = f"acc {m['acc']:.3f}  " if "acc" in m else ""
    return f"epoch {m['epoch']}/{cfg.train.epochs}  loss {m['train_loss']:.4f}  {acc}{accs}  [{m['status']}]"
