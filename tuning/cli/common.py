"""What every ``q3r-tune`` command shares: one-line errors and exit codes, the tracking option."""
from __future__ import annotations

import argparse
import sys


def fail(command: str, error: Exception, code: int = 2) -> int:
    print(f"q3r-tune {command}: {error}", file=sys.stderr)
    return code


def sweep_errors():
    from tuning.spec.sweep import SpecError
    from tuning.tracking.spool import SpoolBusy
    from tuning.tracking.store import TrackingError
    from tuning.trial.data import DatasetError
    from tuning.trial.usercode import UserCodeError
    return (SpecError, TrackingError, SpoolBusy, DatasetError, UserCodeError, FileNotFoundError, ValueError)


def running(command: str, name: str, call, report=None) -> int:
    """Run a sweep command; a tracking server that fails mid-way is one line and exit code 1 (the
    trials are kept, the spool says what is not yet in MLflow), bad input one line and exit code 2.
    ``report`` prints the outcome (default: where the sweep is)."""
    from mlflow.exceptions import MlflowException

    from tuning.tracking.sync import TrackingDown
    try:
        outcome = call()
    except TrackingDown as e:
        return fail(command, e, 1)
    except sweep_errors() as e:
        return fail(command, e)
    except MlflowException as e:
        return fail(command, f"the MLflow tracking store failed: {' '.join(str(e).split())[:300]}; the trials "
                              f"are kept: `q3r-tune resume {name}` finishes the sweep once it answers", 1)
    (report or where)(outcome)
    return 0


def versions_fail(command: str) -> int | None:
    """Exit code 2 and one line if an installed Ray, Optuna or MLflow is outside the tested range."""
    from tuning.sweep.versions import VersionError, check_versions
    try:
        check_versions()
    except VersionError as e:
        return fail(command, e)
    return None


def where(outcome) -> None:
    print(f"sweep {outcome.name}: {len(outcome.records)} trials; MLflow tracking URI {outcome.tracking_uri}, "
          f"parent run {outcome.parent_run_id}")
    print(f"  inspect: q3r-tune pareto {outcome.name} | q3r-tune recommend {outcome.name} --budget 0.2")


def outcomes(parent, records) -> None:
    from tuning.analysis.records import outcome_lines
    from tuning.tracking.results import sweep_techniques
    print("Trials by technique:")
    for line in outcome_lines(records, sweep_techniques(parent)):
        print(f"  {line}")


def output_path(path, what: str, folder: bool = False):
    """``path`` with its folder created (``folder``: ``path`` is the folder), or a ``ValueError`` in one line."""
    from pathlib import Path

    path = Path(path)
    target = path if folder else path.parent
    try:
        target.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ValueError(f"{what} {path}: cannot create the folder {target} ({e.strerror})") from None
    if not folder and path.is_dir():
        raise ValueError(f"{what} {path} is a folder; name a file")
    return path


def tracking_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tracking-uri", default=None,
                   help="MLflow tracking URI (default sqlite:///./mlruns.db; an http:// server for clusters)")
