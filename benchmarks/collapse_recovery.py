"""Do trials that sit at chance accuracy early recover later? Real digits learning curves.

Trains the digits sweep's trials (``search_spaces/digits_vit.yaml``: ViT 4 x 64, batch 32, 24 epochs)
of the Q3R techniques with the collapse rule switched off, evaluating every epoch, then replays
collapse rules on the curves: a rule stops a trial when its last ``patience`` evaluations (every
``eval_every`` epochs) were at chance (accuracy < 1.5 / classes) and, with a minimum epoch, not
before it. A stop is wrong when the trial would have ended well above chance (``--recovered``).
Prints every curve, then per rule: stops, wrong stops, epochs saved.

    python benchmarks/collapse_recovery.py                    # 8 trials, 2 at a time (about 10-30 min on 2 cores)
    python benchmarks/collapse_recovery.py --save curves.json   # ... then --replay curves.json re-judges them
    python benchmarks/collapse_recovery.py --smoke-test
"""
from __future__ import annotations

import argparse
import itertools
import json
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from tuning.spec.sweep import load_spec
from tuning.trial.recipe import run_trial

SPEC = Path(__file__).resolve().parents[1] / "search_spaces" / "digits_vit.yaml"
CHANCE = 1.5 / 10                                     # the recipe's threshold for digits' 10 classes
# (technique, lmbda, seeds): Q3R in the loss over its search range, AdamQ3R at the strong end of its own
TRIALS = [("adam_q3r_loss", lmbda, seed) for lmbda in (0.14, 1.0, 5.0) for seed in (0, 1)] + \
         [("adamq3r", 30.0, seed) for seed in (0, 1)]


def curve(args) -> tuple:
    technique, lmbda, seed, epochs = args
    spec = load_spec(SPEC)
    cfg = spec.trial_config(technique, {"lr": 1.9e-3, "lmbda": lmbda, "target_rank": 0.1, "period": 5})
    cfg.train.epochs, cfg.train.eval_every, cfg.train.seed = epochs, 1, seed
    cfg.train.collapse_patience, cfg.train.retentions, cfg.train.threads = 10_000, [1.0], 1
    accs: list = []
    run_trial(cfg, report=lambda m: accs.append(m["acc"]))
    return technique, lmbda, seed, accs


def stop_epoch(accs: list, eval_every: int, patience: int, min_epoch: int):
    """The epoch at which the rule stops the trial, else None (``accs[e - 1]``: accuracy after epoch e)."""
    run = 0
    for epoch in range(1, len(accs) + 1):
        if epoch % eval_every and epoch != len(accs):
            continue
        run = run + 1 if accs[epoch - 1] < CHANCE else 0
        if run >= patience and epoch >= min_epoch:
            return epoch
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=24)
    parser.add_argument("--jobs", type=int, default=2, help="trials at a time (one CPU thread each)")
    parser.add_argument("--recovered", type=float, default=0.5, help="final accuracy that counts as recovered")
    parser.add_argument("--smoke-test", action="store_true", help="2 trials of 2 epochs")
    parser.add_argument("--save", help="also write the curves to this JSON file")
    parser.add_argument("--replay", help="replay the rules on curves saved by --save instead of training")
    args = parser.parse_args()
    trials = TRIALS[:2] if args.smoke_test else TRIALS
    epochs = 2 if args.smoke_test else args.epochs
    if args.replay:
        curves = [tuple(c) for c in json.loads(Path(args.replay).read_text())]
        epochs = len(curves[0][3])
    else:
        with ProcessPoolExecutor(args.jobs) as pool:
            curves = list(pool.map(curve, [(t, lm, s, epochs) for t, lm, s in trials]))
    if args.save:
        Path(args.save).write_text(json.dumps(curves))
    print(f"digits ViT 4x64, lr 1.9e-3, target rank 0.1, T = 5, {epochs} epochs; accuracy after each epoch "
          f"(chance threshold {CHANCE:.2f}; '.' marks an epoch at chance)")
    for technique, lmbda, seed, accs in curves:
        marks = "".join("." if a < CHANCE else "#" for a in accs)
        print(f"  {technique:<14} lmbda {lmbda:<5g} seed {seed}  {marks}  first {accs[0]:.2f}  "
              f"max {max(accs):.2f}  final {accs[-1]:.2f}")
    ever = [c for c in curves if any(a < CHANCE for a in c[3])]
    recovered = [c for c in ever if c[3][-1] >= args.recovered]
    print(f"{len(ever)} of {len(curves)} trials were at chance at some evaluation; {len(recovered)} of them ended "
          f">= {args.recovered} (recovered)")
    print("rule (eval_every, patience, min_epoch): stops, wrong stops (trial would have ended >= "
          f"{args.recovered}), epochs saved by right stops")
    for every, patience, min_epoch in itertools.product((1, 2, 4), (2, 3),
                                                        sorted({0, epochs // 4, epochs // 2, 3 * epochs // 4})):
        stops = [(c, stop_epoch(c[3], every, patience, min_epoch)) for c in curves]
        stops = [(c, e) for c, e in stops if e is not None and e < len(c[3])]
        wrong = [c for c, e in stops if c[3][-1] >= args.recovered]
        saved = sum(len(c[3]) - e for c, e in stops if c[3][-1] < args.recovered)
        print(f"  every {every}, patience {patience}, min epoch {min_epoch:>2}: {len(stops):>2} stops, "
              f"{len(wrong)} wrong, {saved:>3} epochs saved")


if __name__ == "__main__":
    main()
