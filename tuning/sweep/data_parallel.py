"""Trials that span several workers (``resources.workers`` > 1): Ray Train inside Ray Tune.

Each Tune trial runs ``train_trial_workers``, a Tune function that builds and fits a Ray Train
``TorchTrainer`` of ``workers`` processes (``cpu`` and ``gpu`` each; NCCL on GPUs, gloo on CPUs)
and forwards their reports to Tune through ``TuneReportCallback`` (Ray's documented pattern; a
trainer handed to the Tuner is deprecated). Every worker runs ``run_trial``, the built-in loop or
the spec's own ``function``, which learns of the other workers through torch.distributed alone
(``tuning.trial.parallel``): DistributedDataParallel, each rank its part of every global batch,
scoring on rank 0. Every rank calls ``ray.train.report`` at every evaluation (Ray Train's barrier);
rank 0 alone attaches the checkpoint, so a trial makes one report and one checkpoint per evaluation.

The trainer's run is named after the Tune trial and kept in the sweep's storage (``train/<trial
id>``, ``tuning.trial.files``): when a worker dies the trainer starts a new group of workers, which
continue from the run's last checkpoint (``ray.train.get_checkpoint``); a trainer that fails more
often fails its trial, which Tune retries (its ``FailureConfig``): the new trainer, like that of a
resumed sweep, finds the same run and its last checkpoint.
When Tune stops a trial (ASHA), it ends the trial's actor, which owns the trainer: its workers end with
it, but their placement group, scoped to the job, would stay reserved (Ray Train's own cleaner needs the
dashboard's State API); the sweep's ``TrainerGroups`` (``trainer_groups``) sees the actor die and removes
it, so the next trial's trainer gets those resources.
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import ray
import ray.train
from ray import tune
from ray.train.torch import TorchTrainer
from ray.tune.integration.ray_train import TuneReportCallback

from tuning.spec.sweep import from_dict
from tuning.trial.files import CHECKPOINT, train_runs_folder
from tuning.trial.metrics import DIVERGED, TrialReport

from .trainable import shipped_modules, trial_metrics, trial_of
from .trainer_groups import TrainerGroups

WORKER_FAILURES = 2             # a trainer restarts its workers from the last checkpoint this often, then fails
DRIVER_MEMORY = 2 ** 20         # bytes: what a trial's Tune function reserves (it only waits on its trainer)


def workers_trainable(spec, spec_dict: dict, folder):
    """The Tune trainable of a sweep whose trials span ``resources.workers`` workers: the Tune function
    takes no CPU of its own (the trainer's workers hold them; Tune places a trial by some resource, so it
    asks for ``DRIVER_MEMORY``), its trainers' runs under ``folder``."""
    keeper = TrainerGroups.remote()                  # gives back the placement group of a trial Tune ended
    return tune.with_resources(tune.with_parameters(train_trial_workers, spec=spec_dict,
                                                    storage=str(train_runs_folder(folder)), groups=keeper),
                               {"cpu": 0, "memory": DRIVER_MEMORY})


def train_trial_workers(config: dict, spec: dict, storage: str, groups=None) -> None:
    """Ray Tune function of a trial on ``resources.workers`` workers; ``storage``: the sweep's
    ``train_runs_folder``, where the trainer's run is named by the trial's id; ``groups``: the sweep's
    ``TrainerGroups``, which removes the trainer's placement group if this trial's actor dies first."""
    res = from_dict(spec).resources
    context = ray.get_runtime_context()
    attempt = context.get_actor_id()
    if groups is not None:
        ray.get(groups.watch.remote(attempt, context.current_actor))
    per_worker = {"CPU": res.cpu, **({"GPU": res.gpu} if res.gpu > 0 else {})}
    trainer = TorchTrainer(
        train_worker, train_loop_config={"config": config, "spec": spec, "groups": groups, "attempt": attempt},
        scaling_config=ray.train.ScalingConfig(num_workers=res.workers, use_gpu=res.gpu > 0,
                                               resources_per_worker=per_worker),
        run_config=ray.train.RunConfig(name=tune.get_context().get_trial_id(), storage_path=storage,
                                       callbacks=[TuneReportCallback()],
                                       failure_config=ray.train.FailureConfig(max_failures=WORKER_FAILURES),
                                       checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2)))
    trainer.fit()


def train_worker(loop_config: dict) -> None:
    """One worker of a trial: ``run_trial`` under the process group Ray Train set up."""
    sweep = from_dict(loop_config["spec"])
    _, _, cfg = trial_of(sweep, loop_config["config"])
    if cfg.function is not None and shipped_modules():
        cfg.code_dir = None                          # the driver's copy, not whatever this machine holds
    if cfg.train.device == "cuda":
        import torch

        torch.cuda.set_device(ray.train.torch.get_device())
    rank = ray.train.get_context().get_world_rank()
    groups, group = loop_config.get("groups"), ray.util.get_current_placement_group()
    if rank == 0 and groups is not None and group is not None:
        ray.get(groups.register.remote(loop_config["attempt"], group))
    workdir = Path(tempfile.mkdtemp(prefix="q3r-trial-"))
    resume = False
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:                       # every rank continues from the run's last checkpoint
        with checkpoint.as_directory() as d:
            shutil.copy(Path(d) / CHECKPOINT, workdir / CHECKPOINT)
        resume = True

    def report(metrics: TrialReport) -> None:
        out = trial_metrics(metrics, sweep.objective, sweep.retentions, sweep.score)
        if rank == 0 and (workdir / CHECKPOINT).is_file() and metrics.get("status") != DIVERGED:
            ray.train.report(out, checkpoint=ray.train.Checkpoint.from_directory(str(workdir)),
                             checkpoint_dir_name=f"checkpoint_{int(metrics['epoch']):06d}")
        else:
            ray.train.report(out)

    # imported here, not at the top: the trial's Tune actor and the trainer's controller load this module
    # too (they unpickle its functions) but never train, and the recipe's imports (the model zoos, the
    # data loaders) cost each process seconds of CPU
    from tuning.trial.recipe import run_trial

    try:
        run_trial(cfg, report=report, checkpoint_dir=str(workdir), resume=resume)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
