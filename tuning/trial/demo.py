"""The main job until the sweep exists: one trial of each technique on the embedded digits data.

Every trial runs the library's recipe (``run_trial``) with the same model, budget and seed,
and is scored by the same truncation code; the table shows validation accuracy after each
targeted matrix is cut to rank r(p), and the parameter count of the whole model at each p.
"""
from __future__ import annotations

import time

from . import registry
from . import spec as config
from .metrics import acc_key, level_key, params_key
from .recipe import run_trial

# technique -> its hyperparameters, from the registry, the baseline first (lmbda 5: see docs/benchmarks.md,
# the five techniques on digits)
TECHNIQUES = {name: dict(registry.TECHNIQUES.get(name).demo)
              for name in sorted(registry.list_techniques(), key=lambda name: name != "adamw")}
RETENTIONS = [0.05, 0.1, 0.2, 0.4, 1.0]


def trial_config(technique: str, epochs: int, threads: int, seed: int = 0) -> config.TrialSpec:
    return config.from_dict({
        "data": {"name": "digits"},
        "model": {"kind": "vit", "depth": 4, "width": 64},
        "technique": {"name": technique, "lr": 1e-3, **TECHNIQUES[technique]},
        "train": {"epochs": epochs, "batch_size": 32, "eval_every": epochs, "retentions": RETENTIONS,
                  "seed": seed, "threads": threads, "device": "cpu"},
    })


def main(epochs: int = 40, threads: int = 2, techniques=tuple(TECHNIQUES)) -> dict:
    print(f"digits, ViT 4 blocks x 64 wide, {epochs} epochs, lr 1e-3, batch 32; accuracy after truncation at retention p")
    rows = {}
    for name in techniques:
        start = time.perf_counter()
        rows[name] = run_trial(trial_config(name, epochs, threads)).metrics
        print(f"  {name}: {rows[name]['status']} in {time.perf_counter() - start:.0f}s")
    print("technique      " + "".join(f"p={level_key(p):<7}" for p in RETENTIONS))
    for name, m in rows.items():
        print(f"{name:<14} " + "".join(f"{m[acc_key(p)]:<9.3f}" for p in RETENTIONS))
    any_row = next(iter(rows.values()))
    print("parameters     " + "".join(f"{any_row[params_key(p)]:<9d}" for p in RETENTIONS))
    return rows
