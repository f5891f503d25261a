"""Where one trial of the main job spends its CPU time, and what a change saved.

Each (checkout, technique) runs one digits_vit trial (``search_spaces/digits_vit.yaml``, the hyperparameters
below, 24 epochs) in a fresh process with one torch thread, a sweep trial's share of 2 cores. The process
times its own parts by the CPU time it used (``time.process_time``, which other processes on a loaded
machine disturb less than the clock): the start-up (interpreter and imports), the data (with the imports
it makes), the model and technique set-up, per training step the batch, forward, backward and optimizer
step, the scoring at every evaluation (merge of factorized layers, SVDs, evaluation passes, diagnostics)
and the checkpoints. Each part is the time spent in it, less the parts inside it.

``--compare DIR`` runs the same trials on another checkout (the commit before a change), alternating
the two checkouts, and prints per technique the ratio of CPU times (DIR / this) and whether the trials'
metrics are identical (all but ``time_s``).

    python benchmarks/trial_cost.py                           # the five techniques, this checkout
    python benchmarks/trial_cost.py --compare ../before --reps 2
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SPEC = "search_spaces/digits_vit.yaml"
PARAMS = {   # one point of each technique's search space (the README's run's best configurations)
    "adamq3r": {"lr": 1e-3, "lmbda": 3.0, "target_rank": 0.1, "period": 5},
    "adam_q3r_loss": {"lr": 0.00161273, "lmbda": 0.16983, "target_rank": 0.05, "period": 5},
    "adamw": {"lr": 1e-3, "weight_decay": 0.0},
    "lora": {"lr": 0.00124866, "target_rank": 0.1},
    "lorita": {"lr": 0.000794929, "depth": 3, "alpha": 0.0161465},
}
PARTS = ("start-up", "data", "model", "technique", "batches", "forward", "penalty", "backward", "optimizer",
         "loop", "eval merge", "eval svd", "eval passes", "eval diagnostics", "eval other", "checkpoint", "other")
LEARNING = ("forward", "penalty", "backward", "optimizer")


class Clock:
    """Exclusive CPU time per part: a part's time less that of the parts timed inside it."""

    def __init__(self):
        self.spent = dict.fromkeys(PARTS, 0.0)
        self.stack: list = []

    def enter(self) -> None:
        self.stack.append([time.process_time(), 0.0])

    def leave(self, part: str) -> None:
        start, inner = self.stack.pop()
        took = time.process_time() - start
        self.spent[part] += took - inner
        if self.stack:
            self.stack[-1][1] += took

    def wrap(self, fn, part: str):
        @functools.wraps(fn)
        def timed(*args, **kwargs):
            self.enter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.leave(part)
        return timed

    def iterate(self, iterable, part: str):
        it = iter(iterable)
        while True:
            self.enter()
            try:
                item = next(it)
            except StopIteration:
                return
            finally:
                self.leave(part)
            yield item


def timed_batches(clock: Clock, make):
    """``make`` (a DataLoader class) whose loaders time the fetching of each batch, iterable again and again."""
    class Timed:
        def __init__(self, *args, **kwargs):
            self.inner = make(*args, **kwargs)

        def __len__(self):
            return len(self.inner)

        def __iter__(self):
            return clock.iterate(self.inner, "batches")
    return Timed


def instrument(clock: Clock) -> None:
    """Time the recipe's parts in this process, by patching the names it calls (those that exist in
    this checkout: the benchmark times older and newer code alike)."""
    import torch
    from tuning.trial import evaluation, recipe, session, techniques

    def patch(owner, name: str, part: str) -> None:
        if hasattr(owner, name):
            setattr(owner, name, clock.wrap(getattr(owner, name), part))

    for name, part in (("load_data", "data"), ("build_model", "model"), ("forward_batch", "forward"),
                       ("task_loss", "forward"), ("train_epoch", "loop")):
        patch(recipe, name, part)
    patch(torch.Tensor, "backward", "backward")
    patch(session.Trial, "extra_loss", "penalty")
    patch(session.Trial, "_score", "eval other")
    patch(session.Trial, "_save", "checkpoint")
    patch(session, "diagnostics", "eval diagnostics")
    patch(evaluation, "SpectralCache", "eval svd")
    patch(techniques.Technique, "dense_model", "eval merge")
    for name in ("DataLoader", "TensorBatches"):      # the training and validation batches
        if hasattr(recipe, name):
            setattr(recipe, name, timed_batches(clock, getattr(recipe, name)))
    validation = recipe.validation_accuracy
    recipe.validation_accuracy = lambda *a, **k: clock.wrap(validation(*a, **k), "eval passes")
    prepare = session.Trial.prepare

    def prepare_timed(self, *args, **kwargs):
        out = clock.wrap(prepare, "technique")(self, *args, **kwargs)
        self.optimizer.step = clock.wrap(self.optimizer.step, "optimizer")
        return out
    session.Trial.prepare = prepare_timed


def worker(technique: str, epochs: int) -> None:
    """One trial in this (fresh) process; prints {"parts": {part: CPU s}, "total": CPU s, "metrics": ...}."""
    import torch
    from tuning.spec.sweep import load_spec
    from tuning.trial import recipe

    clock = Clock()
    clock.spent["start-up"] = time.process_time()       # the interpreter and the imports above
    torch.set_num_threads(1)
    cfg = load_spec(ROOT / SPEC).trial_config(technique, PARAMS[technique])
    cfg.train.epochs = epochs
    instrument(clock)
    with tempfile.TemporaryDirectory() as checkpoints:           # a sweep trial checkpoints at every evaluation
        result = clock.wrap(recipe.run_trial, "other")(cfg, checkpoint_dir=checkpoints)
    metrics = {k: v for k, v in result.metrics.items() if k != "time_s"}
    print(json.dumps({"parts": clock.spent, "total": time.process_time(), "metrics": metrics}))


def run(checkout: Path, technique: str, epochs: int) -> dict:
    """``worker`` in a new process importing ``checkout``'s code."""
    env = {**os.environ, "PYTHONPATH": str(checkout), "RAY_USAGE_STATS_ENABLED": "0"}
    out = subprocess.run([sys.executable, __file__, "--worker", technique, "--epochs", str(epochs)], env=env,
                         cwd=checkout, capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"{technique} on {checkout} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def outside(run: dict) -> float:
    """CPU s of a trial outside its forward and backward passes (and the penalty's): what the changes touch."""
    return run["total"] - sum(run["parts"][p] for p in ("forward", "penalty", "backward"))


def shares(runs: list[dict]) -> str:
    """The median CPU seconds and share of each part over ``runs`` of one technique."""
    total = statistics.median(r["total"] for r in runs)
    med = {p: statistics.median(r["parts"][p] for r in runs) for p in PARTS}
    learning = sum(med[p] for p in LEARNING)
    cells = ", ".join(f"{p} {med[p]:.2f} ({100 * med[p] / total:.1f}%)" for p in PARTS if med[p] >= 0.005)
    return f"total {total:.1f} s, learning {100 * learning / total:.0f}%: {cells}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--techniques", nargs="+", choices=list(PARAMS), default=list(PARAMS))
    p.add_argument("--epochs", type=int, default=24)
    p.add_argument("--reps", type=int, default=1, help="trials per (checkout, technique)")
    p.add_argument("--compare", metavar="DIR", help="a checkout (the commit before a change) run alternately")
    p.add_argument("--worker", metavar="TECHNIQUE", help=argparse.SUPPRESS)
    p.add_argument("--smoke-test", action="store_true", help="2 epochs of lora (its factors, merge and levels scored once)")
    args = p.parse_args()
    if args.worker:
        return worker(args.worker, args.epochs)
    if args.smoke_test:
        args.techniques, args.epochs, args.reps = ["lora"], 2, 1
    checkouts = {"this": ROOT, **({"compare": Path(args.compare).resolve()} if args.compare else {})}
    print(f"one digits_vit trial of {args.epochs} epochs per process, 1 torch thread, CPU s of the process; "
          f"load average {os.getloadavg()[0]:.1f} at the start")
    runs: dict = {(c, t): [] for c in checkouts for t in args.techniques}
    for _ in range(args.reps):
        for t in args.techniques:
            for c, path in checkouts.items():
                runs[c, t].append(run(path, t, args.epochs))
    for t in args.techniques:
        print(f"{t:14s} {shares(runs['this', t])}")
        if args.compare:
            print(f"{'':14s} compare: {shares(runs['compare', t])}")
            pairs = list(zip(runs["compare", t], runs["this", t]))
            ratios = [a["total"] / b["total"] for a, b in pairs]
            rest = [outside(a) / outside(b) for a, b in pairs]
            same = all(a["metrics"] == b["metrics"] for a, b in pairs)
            print(f"{'':14s} ratio compare/this: the trial {statistics.median(ratios):.2f} "
                  f"(min {min(ratios):.2f}, max {max(ratios):.2f}), outside forward and backward "
                  f"{statistics.median(rest):.2f} (min {min(rest):.2f}, max {max(rest):.2f}); metrics identical: {same}")
    print(f"load average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
