"""A trial on several workers (tuning/trial/parallel.py), run for real: two forked processes on gloo
(``tests.q3r.ddp_run.launch``), the tiny ViT on 256 digits, the built-in recipe and a user's own loop.

Checked: each rank's batches put together are the one-worker batches; a two-worker trial matches a
one-worker trial at the same global batch (loss curve, eps, acc@p, params@p) for every technique;
only rank 0 writes the checkpoint, every rank gets the same report; a two-worker trial resumed from
its checkpoint ends where an uninterrupted one does; a user's loop written for one worker (with
``trial.loader``) runs unchanged on two."""
import math
import os

import pytest
import torch
import torch.nn.functional as F

from tuning.trial import spec as config
from tuning.trial.files import CHECKPOINT
from tuning.trial.parallel import RankBatches
from tuning.trial.recipe import open_trial, run_trial

from tests.q3r.ddp_run import launch

TECHNIQUES = ["adamq3r", "adam_q3r_loss", "adamw", "lora", "lorita"]


def tiny(technique="adamq3r", **train):
    raw = {"data": {"name": "digits", "limit": 256},
           "model": {"kind": "vit", "depth": 1, "width": 16, "heads": 2},
           "technique": {"name": technique, "lr": 3e-3, "lmbda": 0.5, "target_rank": 0.2, "period": 3,
                         **({"svd": "exact"} if technique.startswith("adam_q") or technique == "adamq3r" else {})},
           "train": {"epochs": 2, "batch_size": 32, "eval_every": 1, "retentions": [0.2, 0.5, 1.0],
                     "collapse_patience": 100, "device": "cpu", **train}}
    return config.from_dict(raw)


def _run(rank, world, technique, folder, resume_from=None, stop_after=None):
    """run_trial on this rank; every report to ``folder/reports-RANK.pt``."""
    reports = []

    def report(metrics):
        reports.append(dict(metrics))
        torch.save(reports, os.path.join(folder, f"reports-{rank}.pt"))
        if stop_after is not None and metrics["epoch"] == stop_after:
            raise KeyboardInterrupt("stopped")          # after the checkpoint of that epoch was written

    ckpt = os.path.join(folder, f"ckpt-{rank}")
    if resume_from is not None:                          # every rank resumes from rank 0's checkpoint
        os.makedirs(ckpt, exist_ok=True)
        with open(os.path.join(resume_from, CHECKPOINT), "rb") as f, open(os.path.join(ckpt, CHECKPOINT), "wb") as g:
            g.write(f.read())
    try:
        run_trial(tiny(technique), report=report, checkpoint_dir=ckpt, resume=resume_from is not None)
    except KeyboardInterrupt:
        pass


def _reports(folder, rank=0):
    return torch.load(os.path.join(folder, f"reports-{rank}.pt"), weights_only=False)


def _compare(one: list, two: list, acc_tol: float) -> None:
    assert [r["epoch"] for r in one] == [r["epoch"] for r in two] and [r["status"] for r in one] == \
        [r["status"] for r in two]
    for a, b in zip(one, two):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-4)
        for key in a:
            if key.startswith("diag/mean/eps"):
                assert b[key] == pytest.approx(a[key], rel=1e-3), key
            elif key.startswith("acc"):
                assert abs(b[key] - a[key]) <= acc_tol, key
            elif key.startswith("params@"):
                assert b[key] == a[key], key


def test_rank_batches_put_together_are_the_one_worker_batches():
    from torch.utils.data import DataLoader

    for epoch in (1, 2):
        order = torch.Generator().manual_seed(7 * 100_003 + epoch - 1)       # the recipe's one-worker loader
        expected = [b.tolist() for b in DataLoader(range(70), batch_size=16, shuffle=True, generator=order)]
        one = RankBatches(70, 16, seed=7, rank_=0, world=1)
        one.set_epoch(epoch)
        assert list(one) == expected
        parts = []
        for r in range(3):
            s = RankBatches(70, 16, seed=7, rank_=r, world=3)
            s.set_epoch(epoch)
            parts.append(list(s))
        assert [sum((p[i] for p in parts), []) for i in range(len(expected))] == expected
        assert all(len(p[-1]) >= 1 for p in parts)                        # the last batch of 6: 2 each
    tiny_last = [list(RankBatches(5, 4, seed=0, rank_=r, world=2, shuffle=False))[-1] for r in range(2)]
    assert tiny_last == [[4], [4]]                                      # one example lent round: none empty


def test_every_registered_technique_runs_on_two_workers_here():
    """A technique added to the registry is compared here on two ranks against one."""
    from tuning.trial.registry import TECHNIQUES as REGISTRY

    assert sorted(TECHNIQUES) == sorted(REGISTRY.names())


@pytest.mark.parametrize("technique", TECHNIQUES)
def test_two_workers_match_one_at_the_same_global_batch(technique, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir(), two.mkdir()
    _run(0, 1, technique, str(one))
    launch(_run, 2, technique, str(two))
    a, b0, b1 = _reports(one), _reports(two, 0), _reports(two, 1)
    assert b0 == b1                                         # every rank gets rank 0's report
    assert len(a) == 2 and math.isfinite(a[-1]["train_loss"])
    _compare(a, b0, acc_tol=2 / 50)                          # a near-tie may flip: at most 2 of ~50 examples
    assert (two / "ckpt-0" / CHECKPOINT).is_file() and not (two / "ckpt-1" / CHECKPOINT).exists()


def test_a_resumed_two_worker_trial_ends_where_an_uninterrupted_one_does(tmp_path):
    full, cut = tmp_path / "full", tmp_path / "cut"
    full.mkdir(), cut.mkdir()
    launch(_run, 2, "adamq3r", str(full))
    launch(_run, 2, "adamq3r", str(cut), None, 1)
    assert [r["epoch"] for r in _reports(cut)] == [1]
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    launch(_run, 2, "adamq3r", str(resumed), str(cut / "ckpt-0"))
    got, want = _reports(resumed), _reports(full)
    assert [r["epoch"] for r in got] == [2]                  # from the checkpoint of epoch 1 on
    _compare(want[1:], got, acc_tol=0.0)


def own_loop(trial):
    """A user's loop written for one worker: trial.loader for the training batches."""
    from tuning.trial.models import build_model
    from tuning.trial.recipe import load_data

    torch.manual_seed(trial.seed)
    train_set, val_set, info = load_data(trial.spec)
    model, optimizer = trial.prepare(build_model(trial.spec.model, info))
    loader = trial.loader(train_set)
    val_x = torch.stack([x for x, _ in val_set])
    val_y = torch.tensor([y for _, y in val_set])

    def evaluate(m):
        with torch.no_grad():
            return (m(val_x).argmax(-1) == val_y).float().mean().item()

    for epoch in trial.epochs():
        total = n = 0
        for x, y in loader:
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad()
            (loss + trial.extra_loss()).backward()
            optimizer.step()
            total, n = total + loss.item(), n + 1
        trial.report(epoch, evaluate, loss=total / n)


def _own(rank, world, folder):
    reports = []
    trial = open_trial(tiny("adam_q3r_loss"), report=reports.append)
    own_loop(trial)
    assert trial.world_size == world and trial.rank == rank
    torch.save(reports, os.path.join(folder, f"reports-{rank}.pt"))


def test_a_users_loop_for_one_worker_runs_on_two(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir(), two.mkdir()
    _own(0, 1, str(one))
    launch(_own, 2, str(two))
    assert _reports(two, 0) == _reports(two, 1)
    _compare(_reports(one), _reports(two), acc_tol=2 / 50)
