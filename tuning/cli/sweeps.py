"""``q3r-tune sweep``, ``resume``, ``confirm`` and ``sync``: commands that run (part of) a sweep."""
from __future__ import annotations

import argparse

from tuning.cli.common import fail, running, sweep_errors, versions_fail


def sweep_cmd(args: argparse.Namespace) -> int:
    if (code := versions_fail("sweep")) is not None:
        return code
    from tuning.spec.sweep import load_spec
    from tuning.sweep.driver import run_sweep
    try:
        spec = load_spec(args.spec, args.set, variant=args.variant)
    except sweep_errors() as e:
        return fail("sweep", e)
    return running("sweep", spec.experiment_name, lambda: run_sweep(
        spec, address=args.address, tracking_uri=args.tracking_uri, storage=args.storage, num_cpus=args.num_cpus,
        num_gpus=args.num_gpus, tracking_wait=args.tracking_wait))


def continue_cmd(args: argparse.Namespace) -> int:
    """``resume`` (search, then confirmation) or ``confirm`` (the confirmation alone) of a sweep."""
    if (code := versions_fail(args.command)) is not None:
        return code
    from tuning.sweep.driver import confirm_sweep, resume_sweep
    run = resume_sweep if args.command == "resume" else confirm_sweep
    return running(args.command, args.name, lambda: run(
        args.name, address=args.address, tracking_uri=args.tracking_uri, num_cpus=args.num_cpus,
        num_gpus=args.num_gpus, tracking_wait=args.tracking_wait))


def sync_cmd(args: argparse.Namespace) -> int:
    from tuning.tracking.sync import sync_sweep
    return running("sync", args.name, lambda: sync_sweep(args.name, tracking_uri=args.tracking_uri,
                                                          wait=args.tracking_wait), report=lambda _: None)
