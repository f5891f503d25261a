"""Sweeps whose trials span two workers (``resources.workers: 2``: Ray Train inside Ray Tune, gloo on CPU)
with real Ray, Optuna and MLflow on tiny work.

Checked: a digits sweep of every technique on two workers completes through ``q3r-tune sweep``, one
MLflow child run per trial, each trial's checkpoints in its Ray Train run, found by export; in a sweep
of the user's own loop (``trial.loader``), a worker killed mid-trial is replaced by the trainer and the trial
continues from its last checkpoint, and in the same sweep a trial ASHA stops gives its trainer's CPUs back
(``TrainerGroups``) and the next trial runs; a driver killed mid-trial resumes and its trial continues from its last checkpoint.
What the CPU-only runs do not show: docs/distributed.md.
"""
from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest
import ray
from mlflow.tracking import MlflowClient

from tuning.artifacts.export import find_checkpoint
from tuning.spec.sweep import from_dict
from tuning.sweep.driver import run_sweep
from tuning.tracking.results import load_records
from tuning.tracking.store import find_sweep
from tuning.trial.registry import TECHNIQUES

from tests.tuning.sweep_helpers import (cli, kill_group, kill_ray_under, short_tmp, tiny_spec, trial_reached, wait_for,
                                       write_spec)

pytestmark = pytest.mark.slow

TWO = {"workers": 2, "cpu": 1}
FIXED = {"adamq3r": {"lr": 3.0e-3, "lmbda": 0.5, "target_rank": 0.2, "period": 5},
         "adam_q3r_loss": {"lr": 3.0e-3, "lmbda": 0.5, "target_rank": 0.2, "period": 5},
         "adamw": {"lr": 3.0e-3}, "lora": {"lr": 3.0e-3, "target_rank": 0.2},
         "lorita": {"lr": 3.0e-3, "depth": 2, "alpha": 0.1}}


def records_of(uri: str, name: str):
    client = MlflowClient(uri)
    return client, load_records(client, find_sweep(client, name).info.run_id)


def test_a_digits_sweep_on_two_workers_completes_with_every_technique_through_the_cli(tmp_path):
    assert sorted(FIXED) == sorted(TECHNIQUES.names())
    spec = tiny_spec(name="two-workers", data={"name": "digits", "limit": 400}, epochs=2, retentions=[0.2, 1.0],
                     train={"batch_size": 40, "eval_every": 1, "collapse_patience": 10}, techniques=FIXED,
                     scheduler={"kind": "fifo"}, searcher={"kind": "grid"}, num_samples=1, max_concurrent=1,
                     resources=TWO)
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    proc = cli("sweep", str(write_spec(tmp_path, spec)), "--tracking-uri", uri, "--storage", str(tmp_path / "runs"),
               "--num-cpus", "2", cwd=tmp_path)
    out, _ = proc.communicate(timeout=1500)
    assert proc.returncode == 0, out[-3000:]
    client, records = records_of(uri, "two-workers")
    assert sorted(r.technique for r in records) == sorted(FIXED)          # one child run per trial, not per worker
    assert len({r.trial_id for r in records}) == len(records)
    for r in records:
        assert r.status == "completed" and r.epoch == 2, (r.technique, r.status, r.epoch)
        assert [h["epoch"] for h in r.history] == [1, 2]                  # one report per evaluation
        smaller = r.metrics["params@0.2"] <= r.metrics["params@1"] if r.technique == "lora" else \
            r.metrics["params@0.2"] < r.metrics["params@1"]            # LoRA stores rank r(0.2) factors already
        assert smaller and 0.0 <= r.metrics["acc@0.2"] <= 1.0
    storage = find_sweep(client, "two-workers").data.tags["q3r.storage"]
    for r in records:                                                     # one checkpoint per evaluation, rank 0's
        path = find_checkpoint(r.trial_id, storage)
        assert path.parent.name == "checkpoint_000002" and path.parent.parent.name == r.trial_id
        assert sorted(p.name for p in path.parent.parent.glob("checkpoint_*") if p.is_dir()) == \
            ["checkpoint_000001", "checkpoint_000002"]


LOOP = '''
import os, signal, time
import torch, torch.nn.functional as F
from torch.utils.data import TensorDataset
from digits_loop import MLP, digits

HERE = os.path.dirname(os.path.abspath(__file__))
LOG, KILL, SLOW = (os.path.join(HERE, n) for n in ("starts.log", "kill", "slow"))


def train(trial):
    (x, y), (xv, yv) = digits(trial.seed)
    model, optimizer = trial.prepare(MLP(32))
    with open(LOG, "a") as f:
        f.write(f"{trial.params['lr']} {trial.rank} {trial.world_size} {trial.start_epoch}\\n")
    loader = trial.loader(TensorDataset(x, y))
    for epoch in trial.epochs():
        if epoch == 2 and trial.rank == 1 and trial.start_epoch == 0 and os.path.exists(KILL):
            os.remove(KILL)                               # the first trial's worker 1 only
            time.sleep(10)                                # Ray Train has taken in epoch 1's report and checkpoint
            os.kill(os.getpid(), signal.SIGKILL)          # then a worker dies in the middle of its trial
        if epoch == 2 and trial.start_epoch == 0 and os.path.exists(SLOW):
            time.sleep(120)                               # the driver is killed while the trial waits here
        total = n = 0
        for xb, yb in loader:
            loss = F.cross_entropy(model(xb), yb)
            optimizer.zero_grad()
            (loss + trial.extra_loss()).backward()
            optimizer.step()
            total, n = total + loss.item(), n + 1
        trial.report(epoch, lambda m: (m(xv).argmax(-1) == yv).float().mean().item(), loss=total / n)
'''


def own_loop_spec(tmp_path: Path, name: str, lrs: list, scheduler: dict, kill: bool, slow: bool = False,
                  epochs: int = 3):
    """(code folder, spec) of a sweep of ``my_loop.train`` on two workers; ``kill``: worker 1 of the first trial
    to reach epoch 2 dies there; ``slow``: its first workers wait two minutes in epoch 2."""
    code, spec = own_loop_dict(tmp_path, name, lrs, scheduler, kill, slow, epochs)
    return code, from_dict(spec, source=f"{name}.yaml")


def own_loop_dict(tmp_path: Path, name: str, lrs: list, scheduler: dict, kill: bool, slow: bool = False,
                  epochs: int = 3):
    code = tmp_path / "code"
    code.mkdir()
    examples = Path(__file__).resolve().parents[2] / "examples" / "own_loop"
    (code / "digits_loop.py").write_text((examples / "digits_loop.py").read_text())
    here = "os.path.dirname(os.path.abspath(__file__))"         # the code folder, also when shipped to Ray
    (code / "my_loop.py").write_text(LOOP.replace(here, repr(str(code))))
    for flag, on in (("kill", kill), ("slow", slow)):
        if on:
            (code / flag).write_text("")
    lr = {"choice": lrs} if len(lrs) > 1 else lrs[0]
    return code, {"name": name, "function": "my_loop:train", "code_dir": str(code), "epochs": epochs,
                            "retentions": [0.5, 1.0], "train": {"eval_every": 1, "batch_size": 64},
                            "techniques": {"adamq3r": {"lr": lr, "lmbda": 0.1, "target_rank": 0.5, "period": 5}},
                            "scheduler": scheduler, "searcher": {"kind": "grid"}, "num_samples": 1,
                            "max_concurrent": 1, "resources": TWO, "confirm": {"top": 0, "seeds": 0}}


def starts(code: Path) -> list:
    """(lr, rank, world size, start epoch) of every worker start, sorted."""
    return sorted(tuple(line.split()) for line in (code / "starts.log").read_text().splitlines())


def test_asha_with_several_workers_is_accepted():
    spec = from_dict(tiny_spec(resources=TWO, train={"batch_size": 40, "eval_every": 1}))
    assert spec.scheduler.kind == "asha" and spec.resources.workers == 2


def test_a_killed_worker_is_replaced_and_a_trial_asha_stops_ends_its_trainer(tmp_path, no_ray, fresh_store):
    # lr 0.02 learns in an epoch, 1e-9 never: ASHA (one rung, at epoch 1, reduction 2) stops the second;
    # the third, after it, needs the CPUs the stopped trainer held, and passes the rung (the median of the
    # three); the first and third end at max_t = 2, where Tune ends their actors too. The first trial's
    # worker 1 is killed in epoch 2: the trainer starts both workers again from epoch 1's checkpoint.
    # (One sweep for both checks: each two-worker trial costs the suite new Ray Train processes.)
    code, spec = own_loop_spec(tmp_path, "worker-killed-asha", [0.02, 1.0e-9, 0.021],
                               {"kind": "asha", "grace_period": 1, "reduction_factor": 2}, kill=True, epochs=2)
    ray_tmp = short_tmp()                     # a Ray of its own: nothing a failed trainer leaves reaches other tests
    ray.init(address="local", num_cpus=2, include_dashboard=False, _temp_dir=str(ray_tmp), log_to_driver=False)
    try:
        outcome = run_sweep(spec, tracking_uri=fresh_store(tmp_path / "mlruns.db"), storage=str(tmp_path / "runs"))
        for _ in range(60):                              # no trainer outlives its trial: every CPU comes back
            if ray.available_resources().get("CPU", 0) == ray.cluster_resources()["CPU"]:
                break
            time.sleep(1)
        cpus_back = ray.available_resources().get("CPU", 0) == ray.cluster_resources()["CPU"]
    finally:
        ray.shutdown()
        shutil.rmtree(ray_tmp, ignore_errors=True)
    by_lr = {r.params["lr"]: r for r in outcome.records}
    assert sorted(by_lr) == [1.0e-9, 0.02, 0.021] and len(outcome.records) == 3   # one MLflow run per trial
    assert by_lr[0.02].status == "completed" and [h["epoch"] for h in by_lr[0.02].history] == [1, 2]
    assert by_lr[1.0e-9].status == "stopped" and by_lr[1.0e-9].epoch == 1
    assert by_lr[0.021].status == "completed" and [h["epoch"] for h in by_lr[0.021].history] == [1, 2]
    assert starts(code) == sorted([("0.02", "0", "2", "0"), ("0.02", "0", "2", "1"),    # the killed trial's new
                                   ("0.02", "1", "2", "0"), ("0.02", "1", "2", "1"),    # workers start from epoch
                                   ("1e-09", "0", "2", "0"), ("1e-09", "1", "2", "0"),  # 1's checkpoint
                                   ("0.021", "0", "2", "0"), ("0.021", "1", "2", "0")])
    assert cpus_back, "a trainer held its CPUs after its trial ended"


def test_a_killed_driver_resumes_its_two_worker_trial_from_the_last_checkpoint(tmp_path, no_ray, fresh_store):
    code, spec = own_loop_dict(tmp_path, "workers-resumed", [0.02], {"kind": "fifo"}, kill=False, slow=True)
    path = write_spec(tmp_path, spec)
    uri = fresh_store(tmp_path / "mlruns.db")
    ray_tmp = short_tmp()
    env = {"RAY_TMPDIR": str(ray_tmp)}
    args = ("--tracking-uri", uri, "--num-cpus", "2")
    driver = cli("sweep", str(path), "--storage", str(tmp_path / "runs"), *args, cwd=tmp_path, env=env)
    client = MlflowClient(uri)

    try:
        wait_for(trial_reached(client, "workers-resumed", 1), 300, "epoch 1's report", driver)   # its checkpoint is in
        time.sleep(2)                                     # the workers are in epoch 2, waiting
    finally:
        kill_group(driver)                                # the driver, its trial and its workers die at once
        kill_ray_under(ray_tmp)
    parent = find_sweep(client, "workers-resumed")
    [before] = load_records(client, parent.info.run_id, with_history=False)
    assert before.status == "running" and before.epoch == 1

    resumed = cli("resume", "workers-resumed", *args, cwd=tmp_path, env=env)
    try:
        out, _ = resumed.communicate(timeout=600)
    finally:
        kill_group(resumed)
        kill_ray_under(ray_tmp)
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert resumed.returncode == 0, out[-3000:]
    [after] = load_records(client, parent.info.run_id)
    assert after.run_id == before.run_id and after.status == "completed"      # the same MLflow run, finished
    assert [h["epoch"] for h in after.history] == [1, 2, 3]                      # each epoch logged once
    assert starts(code) == [("0.02", "0", "2", "0"), ("0.02", "0", "2", "1"),   # the resumed workers start
                            ("0.02", "1", "2", "0"), ("0.02", "1", "2", "1")]   # from epoch 1's checkpoint
