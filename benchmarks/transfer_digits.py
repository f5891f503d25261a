"""Fine-tuning on an offline transfer task: a digits ViT pre-trained on 0-4, fine-tuned on 5-9.

1. Pre-train a ViT (2 blocks x 32 wide: 32 x 32, 128 x 32 and 32 x 128 matrices) with AdamW on digits 0-4 and cache the checkpoint under
   ``.cache/transfer_digits/`` (gitignored; reused when present, ``--retrain`` to redo it).
2. Fine-tune it on digits 5-9 (relabelled 0-4) by dense fine-tuning (AdamW, every weight), peft LoRA at
   rank r, AdamQ3R on Delta W and Adam with Q3R in the loss on Delta W (target rank r), the Q3R ones
   with the eps rule for an update that starts at zero ("warmup", the default when fine-tuning) and,
   for comparison, the paper's rule ("paper").
3. Score each by validation accuracy with every targeted matrix's update Delta W = W - W0 cut to
   rank 1, 2, 4, 8 and kept whole, and print the top-r energy of Delta W and the eps trajectory.

Every number is printed as mean +- std over the seeds (the seed sets the 5-9 data split and the
fine-tuning order; the checkpoint is the same). ``--jobs`` runs run at a time, one torch thread each.

    python benchmarks/transfer_digits.py                    # about 8 minutes on 2 busy CPU cores
    python benchmarks/transfer_digits.py --seeds 0 1 2 3 --lmbda 20 --lmbda-loss 5
    python benchmarks/transfer_digits.py --pretrain-only    # write the checkpoint the sweep spec uses
"""
from __future__ import annotations

import argparse
import math
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from q3r.delta import DeltaSpectra
from q3r.targets import select_targets
from tuning.trial.evaluation import accuracy, forward_batch
from tuning.trial.models import build_model
from tuning.trial.recipe import load_data, make_technique, seed_everything, task_loss
from tuning.trial.spec import from_dict

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / ".cache" / "transfer_digits"
MODEL = {"kind": "vit", "depth": 2, "width": 32}
PRETRAIN = dict(classes=[0, 1, 2, 3, 4], epochs=30, lr=1e-3, weight_decay=0.05, batch_size=32, seed=0)
FINETUNE_CLASSES = [5, 6, 7, 8, 9]
RANKS = (1, 2, 4, 8)
METHODS = ("dense", "lora", "adamq3r", "adam_q3r_loss", "adamq3r/paper", "adam_q3r_loss/paper")


def checkpoint_path(epochs: int = PRETRAIN["epochs"], cache: Path = CACHE) -> Path:
    return Path(cache) / f"vit{MODEL['depth']}x{MODEL['width']}-digits01234-e{epochs}-seed{PRETRAIN['seed']}.safetensors"


def pretrain(epochs: int, retrain: bool = False, cache: Path = CACHE) -> tuple[Path, float]:
    """The cached pre-trained checkpoint (trained now if missing) and its accuracy on 0-4."""
    from safetensors.torch import save_file

    path = checkpoint_path(epochs, cache)
    cfg = from_dict({"data": {"name": "digits", "classes": PRETRAIN["classes"]}, "model": MODEL,
                     "technique": {"name": "adamw", "lr": PRETRAIN["lr"], "weight_decay": PRETRAIN["weight_decay"]},
                     "train": {"epochs": epochs, "batch_size": PRETRAIN["batch_size"], "seed": PRETRAIN["seed"],
                               "threads": 1, "device": "cpu", "retentions": [1.0]}})
    if path.is_file() and not retrain:
        _, val, info = load_data(cfg)
        model = build_model(cfg.model.model_copy(update={"init": str(path)}), info)
        return path, accuracy(model, DataLoader(val, batch_size=512), torch.device("cpu"))
    model, tech, _ = train(cfg)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    _, val, _ = load_data(cfg)
    return path, accuracy(model, DataLoader(val, batch_size=512), torch.device("cpu"))


def train(cfg, trace: bool = False):
    """Train the spec's technique on its data (the recipe's loop, without checkpoints): the merged
    model, the technique, and per epoch the mean eps and Delta W's sigma_1, sigma_{r+1} (``trace``)."""
    torch.set_num_threads(cfg.train.threads)
    seed_everything(cfg.train.seed)
    train_set, _, info = load_data(cfg)
    model = build_model(cfg.model, info)
    steps = math.ceil(len(train_set) / cfg.train.batch_size)
    base = {t.name: t.weight.detach().clone() for t in select_targets(model, tuple(cfg.model.modules))}
    tech = make_technique(cfg, model, steps)
    history = []
    for epoch in range(cfg.train.epochs):
        order = torch.Generator().manual_seed(cfg.train.seed * 100_003 + epoch)
        tech.model.train()
        for batch in DataLoader(train_set, batch_size=cfg.train.batch_size, shuffle=True, generator=order):
            logits, y = forward_batch(tech.model, batch, torch.device("cpu"))
            loss = task_loss(logits, y) + tech.extra_loss()
            tech.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            tech.optimizer.step()
        if trace:
            history.append(_eps_trace(tech, base, cfg))
    return tech.dense_model(), tech, (base, history)


@torch.no_grad()
def _eps_trace(tech, base, cfg) -> dict:
    """Mean over matrices of eps, sigma_1(Delta W) and sigma_{r+1}(Delta W) at the operators' rank."""
    eps = [float(e) for bank in tech.banks() for g in bank.groups for e in g.eps]
    dense = tech.dense_model()
    r = cfg.technique.target_rank
    sig1, sig_next = [], []
    for t in select_targets(dense, tuple(cfg.model.modules)):
        s = torch.linalg.svdvals(t.weight.detach() - base[t.name])
        sig1.append(float(s[0]))
        sig_next.append(float(s[r]))
    return {"eps": statistics.mean(eps) if eps else math.nan, "sigma1": statistics.mean(sig1),
            "sigma_next": statistics.mean(sig_next)}


def finetune_spec(method: str, seed: int, args, init: Path):
    name, _, rule = method.partition("/")
    technique = {"dense": {"name": "adamw", "lr": args.lr_dense, "finetune": True},
                 "lora": {"name": "lora", "lr": args.lr_lora, "lora_rank": args.rank, "finetune": True}}.get(name)
    if technique is None:
        lmbda = args.lmbda if name == "adamq3r" else args.lmbda_loss
        technique = {"name": name, "lr": args.lr_q3r, "lmbda": lmbda, "target_rank": args.rank,
                     "period": args.period, "finetune": True, "eps_schedule": rule or "auto",
                     "eps_warmup": args.eps_warmup}
    return from_dict({"data": {"name": "digits", "classes": FINETUNE_CLASSES},
                      "model": {**MODEL, "init": str(init)}, "technique": technique,
                      "train": {"epochs": args.epochs, "batch_size": 32, "seed": seed, "threads": 1,
                                "device": "cpu", "retentions": [1.0]}})


def one(job) -> tuple:
    method, seed, args, init = job
    cfg = finetune_spec(method, seed, args, init)
    started = time.perf_counter()
    dense, tech, (base, history) = train(cfg, trace="adam" in method and "q3r" in method)
    _, val, _ = load_data(cfg)
    loader = DataLoader(val, batch_size=512)
    targets = select_targets(dense, tuple(cfg.model.modules))
    spectra = DeltaSpectra(targets, base)
    accs = {}
    for r in RANKS:
        with spectra.applied(r):
            accs[str(r)] = accuracy(dense, loader, torch.device("cpu"))
    accs["full"] = accuracy(dense, loader, torch.device("cpu"))
    energy = statistics.mean(spectra.energy(t.name, args.rank) for t in targets)
    return method, seed, accs, energy, history, time.perf_counter() - started


def fmt(values) -> str:
    values = list(values)
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} +- {statistics.stdev(values):.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--epochs", type=int, default=15, help="fine-tuning epochs")
    parser.add_argument("--pretrain-epochs", type=int, default=PRETRAIN["epochs"])
    parser.add_argument("--rank", type=int, default=4, help="LoRA rank and Q3R target rank r")
    parser.add_argument("--lmbda", type=float, default=50.0, help="AdamQ3R's lambda")
    parser.add_argument("--lmbda-loss", type=float, default=20.0, help="lambda of Q3R in the loss")
    parser.add_argument("--period", type=int, default=5)
    parser.add_argument("--eps-warmup", type=int, default=None,
                        help="optimizer steps in which eps follows sigma_{r+1} (default: all of them)")
    parser.add_argument("--lr-q3r", type=float, default=1e-3)
    parser.add_argument("--lr-lora", type=float, default=3e-3)
    parser.add_argument("--lr-dense", type=float, default=1e-3)
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time (one CPU thread each)")
    parser.add_argument("--cache", type=Path, default=CACHE, help="where the pre-trained checkpoint is cached")
    parser.add_argument("--retrain", action="store_true", help="pre-train again even if the checkpoint is cached")
    parser.add_argument("--pretrain-only", action="store_true", help="write (or check) the checkpoint and stop")
    parser.add_argument("--smoke-test", action="store_true", help="tiny run: 1 seed, 1 + 1 epochs")
    args = parser.parse_args()
    if args.smoke_test:
        args.seeds, args.epochs, args.pretrain_epochs = [0], 1, 1
    started = time.perf_counter()
    init, acc0 = pretrain(args.pretrain_epochs, args.retrain, args.cache)
    print(f"pre-trained on digits 0-4 ({args.pretrain_epochs} epochs AdamW): accuracy {acc0:.3f}; checkpoint {init}",
          flush=True)
    if args.pretrain_only:
        return
    jobs = [(m, s, args, init) for m in args.methods for s in args.seeds]
    with ProcessPoolExecutor(args.jobs) as pool:
        results = list(pool.map(one, jobs))
    print(f"fine-tuned on digits 5-9, {args.epochs} epochs, rank r = {args.rank}, lambda {args.lmbda} (AdamQ3R), {args.lmbda_loss} (in the loss), "
          f"T {args.period}, seeds {args.seeds}; accuracy with Delta W cut to rank k (mean +- std over seeds)")
    cols = [str(r) for r in RANKS] + ["full"]
    print("| method | " + " | ".join(f"k={c}" if c != "full" else "Delta W whole" for c in cols)
          + f" | top-{args.rank} energy of Delta W |")
    print("| --- " * (len(cols) + 2) + "|")
    for m in args.methods:
        rows = [r for r in results if r[0] == m]
        print(f"| {m} | " + " | ".join(fmt(acc[c] for _, _, acc, _, _, _ in rows) for c in cols)
              + f" | {fmt(e for _, _, _, e, _, _ in rows)} |")
    traced = [r for r in results if r[4]]
    if traced:
        print(f"eps trajectory (seed {args.seeds[0]}; means over matrices at the end of epochs): "
              "eps | sigma_1(Delta W) | sigma_{r+1}(Delta W)")
        marks = sorted({0, 1, 2, 4, args.epochs // 2, args.epochs - 1} & set(range(args.epochs)))
        print("| method | " + " | ".join(f"epoch {e + 1}" for e in marks) + " |")
        print("| --- " * (len(marks) + 1) + "|")
        for m, s, _, _, hist, _ in traced:
            if s == args.seeds[0]:
                print(f"| {m} | " + " | ".join(f"{hist[e]['eps']:.2g} / {hist[e]['sigma1']:.2g} / "
                                                f"{hist[e]['sigma_next']:.2g}" for e in marks) + " |")
    print(f"wall time {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
