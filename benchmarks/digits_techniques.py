"""Accuracy kept after truncation by each technique on digits, averaged over seeds.

Every (technique, seed) trial runs the library recipe with the main job's settings
(``tuning.trial.demo``: ViT 4 blocks x 64 wide, lr 1e-3, batch 32, 40 epochs), one torch thread per
trial and ``--jobs`` trials at a time. Prints accuracy at each retention level per seed,
the mean over seeds, and the ratio of each technique's mean to AdamW's at p = 0.1 and 0.2.

``lora`` is the default ``lora_form: factorized``; ``lora-paper`` is the same LoRA (rank r(0.2) from scratch)
in ``lora_form: paper``, the paper code's LoRALinear (N(0, 0.01^2) factors scaled by alpha / r, no bias).

    python benchmarks/digits_techniques.py                      # 5 techniques x 3 seeds
    python benchmarks/digits_techniques.py --techniques adamw adamq3r --seeds 0 1 2 3 4
    python benchmarks/digits_techniques.py --techniques adamq3r lora lora-paper adamw   # both LoRA forms
"""
from __future__ import annotations

import argparse
import statistics
from concurrent.futures import ProcessPoolExecutor

from tuning.trial.spec import from_dict
from tuning.trial.demo import RETENTIONS, TECHNIQUES, trial_config
from tuning.trial.metrics import acc_key, level_key, params_key
from tuning.trial.recipe import run_trial


# benchmark row name -> (registered technique, technique settings added to the demo's)
VARIANTS = {**{name: (name, {}) for name in TECHNIQUES}, "lora-paper": ("lora", {"lora_form": "paper"})}


def config(row: str, epochs: int, seed: int, smoke: bool = False):
    """The demo's trial spec for ``row``, with the variant's technique settings (``smoke``: a ViT 1 block x 32 on 128 training images)."""
    technique, settings = VARIANTS[row]
    spec = trial_config(technique, epochs, threads=1, seed=seed).model_dump()
    spec["technique"].update(settings)
    if smoke:
        spec["model"].update(depth=1, width=32)
        spec["data"]["limit"] = 128
    return from_dict(spec)


def one(args) -> tuple:
    technique, seed, epochs, smoke = args
    metrics = run_trial(config(technique, epochs, seed, smoke)).metrics
    return technique, seed, {level_key(p): metrics[acc_key(p)] for p in RETENTIONS}, \
        {level_key(p): metrics[params_key(p)] for p in RETENTIONS}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--techniques", nargs="+", choices=list(VARIANTS),
                        help=f"rows (default: {' '.join(TECHNIQUES)}); lora-paper is lora with lora_form: paper")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--jobs", type=int, default=2, help="trials at a time (one CPU thread each)")
    parser.add_argument("--smoke-test", action="store_true",
                        help="1 epoch, 1 seed, a ViT 1 block x 32 on 128 images, adamw and adamq3r (or the --techniques given)")
    args = parser.parse_args()
    if args.smoke_test:
        args.techniques, args.seeds, args.epochs = args.techniques or ["adamw", "adamq3r"], [0], 1
    args.techniques = args.techniques or list(TECHNIQUES)
    work = [(t, s, args.epochs, args.smoke_test) for t in args.techniques for s in args.seeds]
    with ProcessPoolExecutor(args.jobs) as pool:
        results = list(pool.map(one, work))
    keys = [level_key(p) for p in RETENTIONS]
    print(f"digits, {args.epochs} epochs, seeds {args.seeds}: accuracy after truncation at retention p")
    print(f"{'technique':<14}{'seed':<6}" + "".join(f"p={k:<7}" for k in keys))
    means = {}
    for t in args.techniques:
        rows = [acc for (tt, s, acc, _) in results if tt == t]
        for (tt, s, acc, _) in (r for r in results if r[0] == t):
            print(f"{t:<14}{s:<6}" + "".join(f"{acc[k]:<9.3f}" for k in keys))
        means[t] = {k: statistics.mean(r[k] for r in rows) for k in keys}
        print(f"{t:<14}{'mean':<6}" + "".join(f"{means[t][k]:<9.3f}" for k in keys))
        if len(rows) > 1:
            print(f"{t:<14}{'std':<6}" + "".join(f"{statistics.stdev(r[k] for r in rows):<9.3f}" for k in keys))
        params = next(n for (tt, _, _, n) in results if tt == t)
        print(f"{t:<14}{'param':<6}" + "".join(f"{params[k]:<9d}" for k in keys))
    if "adamw" in means:
        for t in means:
            if t != "adamw":
                ratios = "  ".join(f"p={k}: {means[t][k] / max(means['adamw'][k], 1e-9):.2f}" for k in ("0.1", "0.2"))
                print(f"ratio {t}/adamw (mean accuracy)  {ratios}")


if __name__ == "__main__":
    main()
