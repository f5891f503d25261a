"""Tiny sweep specs and process helpers shared by the sweep tests (real Ray, Optuna, MLflow)."""
from __future__ import annotations

import copy
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

TINY = {
    "name": "tiny",
    "data": {"name": "digits", "limit": 1000},
    "model": {"kind": "vit", "depth": 1, "width": 32, "heads": 2},
    "train": {"batch_size": 25, "eval_every": 1, "collapse_patience": 10},   # slow starters are not collapses
    "epochs": 4,
    "retentions": [0.1, 0.5, 1.0],
    "objective": "mean",
    "techniques": {
        "adamq3r": {"lr": {"loguniform": [1.0e-3, 1.0e-2]}, "lmbda": {"loguniform": [0.1, 10.0]},
                    "target_rank": 0.2, "period": 5},
        "adamw": {"lr": {"loguniform": [1.0e-3, 1.0e-2]}},
    },
    "scheduler": {"kind": "asha", "grace_period": 1, "reduction_factor": 3},
    "searcher": {"kind": "tpe"},
    "num_samples": 8,
    "max_concurrent": 2,
    "resources": {"cpu": 1, "gpu": 0},
    "seed": 0,
    "confirm": {"top": 0, "seeds": 0},      # the confirmation tests turn it on
}


def tiny_spec(**changes) -> dict:
    spec = copy.deepcopy(TINY)
    for key, value in changes.items():
        spec[key] = value
    return spec


def write_spec(folder: Path, spec: dict, name: str = "sweep.yaml") -> Path:
    path = folder / name
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def short_tmp() -> Path:
    """Ray's session folder must be short: its Unix socket paths are limited to ~107 characters."""
    return Path(tempfile.mkdtemp(prefix="q3rt", dir="/tmp"))


ROOT = Path(__file__).resolve().parents[2]       # the checkout under test (also a worktree's)


def cli(*args: str, cwd: Path, env: dict | None = None, **kw) -> subprocess.Popen:
    """``q3r-tune ARGS`` of this checkout in its own process group (so a test can kill the driver and its Ray)."""
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return subprocess.Popen([sys.executable, "-m", "tuning.cli", *args], cwd=cwd,
                            env={**os.environ, "PYTHONPATH": path, **(env or {})},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True, **kw)


def kill_ray_under(folder: Path) -> None:
    """SIGKILL every process whose command line mentions ``folder`` (a driver's private Ray)."""
    subprocess.run(["pkill", "-9", "-f", str(folder)], check=False)
    time.sleep(0.5)


def kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=30)


def wait_for(predicate, timeout: float, what: str, proc=None) -> None:
    """Poll ``predicate`` until it holds; fail the test on ``timeout`` or when the driver ``proc`` exits first."""
    import pytest

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"the driver exited ({proc.returncode}) before {what}:\n{proc.stdout.read()}")
        time.sleep(0.3)
    pytest.fail(f"timed out waiting for {what}")


def trial_reached(client, name: str, epoch: int):
    """A predicate: some trial of sweep ``name`` has logged ``epoch`` (False while the sweep does not exist yet)."""
    from tuning.tracking.results import load_records
    from tuning.tracking.store import find_sweep

    def reached() -> bool:
        try:
            parent = find_sweep(client, name)
        except Exception:  # noqa: BLE001 - the experiment does not exist yet
            return False
        return any(r.epoch >= epoch for r in load_records(client, parent.info.run_id, with_history=False))
    return reached
