"""Test-session settings, and the services the slow tests share.

The tests use tiny matrices, for which torch's intra-op thread pool only costs time (on a
busy 2-core machine a 24x10 matmul took ~15 ms with 2 threads and ~6 us with 1), so the
whole suite runs single-threaded. Results do not depend on it.

On that machine a Ray start-up takes about 10 s, a new MLflow sqlite store about 10 s (MLflow
runs its schema migrations on it), an ``mlflow server`` 20 s and a tiny sweep a minute, so the
tests share them (every one real):

- ``ray_session``: one local Ray for the session; the sweep driver's ``connect`` uses a running
  Ray as it is. ``no_ray`` stops it for a test that starts its own Ray (a cluster, a driver in a
  subprocess) or checks that nothing started one; the next test that asks for Ray starts it again.
- ``fresh_store(path)``: a new MLflow sqlite store at ``path``, a copy of one store made once per
  session (the tables and Default experiment a new store gets; only the migrations are not run again).
- ``free_port()``, ``MlflowServer`` and the ``mlflow_server`` fixture: ``mlflow server`` on loopback
  in its own process group, killed at the end of the test also when the test fails.
- ``tiny_sweep``: one tiny real sweep (Ray Tune, ASHA, Optuna TPE, MLflow, confirmation runs) for
  the tests that only read its results.
Heavy imports (Ray, MLflow) happen inside the fixtures: the library's tests load neither.

Ray Train (the trials on two workers) is set for short trials, through its documented environment variables,
which every Ray process the tests start inherits: its controller polls the workers every 0.5 s instead of 2 s
(a report, and a trial's end, waits for the next poll: seconds per trial where an epoch takes one), and no
preemption watcher (an actor process per trial that asks Ray whether its nodes are being drained: on one
machine they never are).
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")
os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")


# --- free ports and MLflow servers --------------------------------------------------------------------

def free_port() -> int:
    """A loopback port nothing listens on (now)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MlflowServer:
    """``mlflow server`` on loopback with its sqlite store and artifacts in ``folder``, in its own process
    group; ``kill`` and ``start`` again keep its address and store (a server that goes down and comes back)."""

    def __init__(self, folder: Path):
        self.folder, self.port = Path(folder), free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 180) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(self.port), "--workers",
             "1", "--backend-store-uri", f"sqlite:///{self.folder / 'server.db'}",
             "--artifacts-destination", str(self.folder / "artifacts")],
            env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=1):
                    return
            except OSError:
                if self.proc.poll() is not None:
                    break
                time.sleep(0.3)
        code = self.proc.poll()
        self.kill()
        pytest.fail(f"mlflow server did not start on {self.url}" + (f" (exit code {code})" if code is not None else ""))

    def kill(self) -> None:
        """SIGKILL to its process group (its workers too); nothing if it is not running."""
        if self.proc is not None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(timeout=30)
            self.proc = None


@pytest.fixture
def mlflow_server(tmp_path, fresh_store):
    """A running ``MlflowServer`` on a new store in ``tmp_path``; killed after the test, also when it fails."""
    fresh_store(tmp_path / "server.db", default_artifacts="mlflow-artifacts:/")    # what `mlflow server` makes
    server = MlflowServer(tmp_path)
    try:
        server.start()
        yield server
    finally:
        server.kill()


# --- MLflow stores ------------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def fresh_store(tmp_path_factory):
    """``fresh_store(path) -> "sqlite:///path"``: a new MLflow store there, as MLflow makes one, less the time.

    The copy's Default experiment gets the artifact location a store made in this process would
    (``<cwd>/mlruns/0``), or ``default_artifacts``/0 (an ``mlflow server``'s default artifact root)."""
    from mlflow.tracking import MlflowClient

    template = tmp_path_factory.mktemp("store-template") / "mlruns.db"
    MlflowClient(f"sqlite:///{template}").search_experiments()        # creates the tables and Default

    def make(path: Path, default_artifacts: str | None = None) -> str:
        path = Path(path)
        if path.exists():
            raise FileExistsError(f"fresh_store: {path} exists")
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(template, path)
        location = f"{default_artifacts.rstrip('/')}/0" if default_artifacts else str(Path.cwd() / "mlruns" / "0")
        db = sqlite3.connect(path)
        try:
            with db:
                changed = db.execute("UPDATE experiments SET artifact_location = ? WHERE experiment_id = 0",
                                     (location,)).rowcount
        finally:
            db.close()
        if changed != 1:
            raise RuntimeError(f"fresh_store: the template {template} has no Default experiment")
        return f"sqlite:///{path}"

    return make


# --- Ray ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def _ray_folder():
    """Ray's session folder, short (its Unix socket paths are limited to ~107 characters); Ray stopped at the end."""
    from tests.tuning.sweep_helpers import short_tmp

    folder = short_tmp()
    yield folder
    if "ray" in sys.modules:
        import ray

        ray.shutdown()
    shutil.rmtree(folder, ignore_errors=True)


def _start_ray(folder: Path):
    import ray

    if not ray.is_initialized():
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, _temp_dir=str(folder))
    return ray


@pytest.fixture
def ray_session(_ray_folder):
    """The session's local Ray (2 CPUs), started on first use."""
    return _start_ray(_ray_folder)


@pytest.fixture
def no_ray():
    """No Ray in this process when the test starts (the session's is stopped; a later test starts it again)."""
    if "ray" in sys.modules:
        import ray

        ray.shutdown()


# --- the shared tiny sweep -----------------------------------------------------------------------------

@pytest.fixture(scope="session")
def tiny_sweep(tmp_path_factory, _ray_folder, fresh_store):
    """``tests.tuning.sweep_helpers.TINY`` run by ``run_sweep``: 8 trials (4 AdamQ3R, 4 AdamW) of up to 4 epochs,
    ASHA by technique, Optuna TPE, then the best configuration of each budget confirmed with 2 new seeds.
    (spec, tracking URI, SweepOutcome, folder). Tests only read it, or add what ``q3r-tune export`` adds."""
    from tuning.spec.sweep import from_dict
    from tuning.sweep.driver import run_sweep

    from tests.tuning.sweep_helpers import tiny_spec

    folder = tmp_path_factory.mktemp("sweep")
    _start_ray(_ray_folder)
    spec = from_dict(tiny_spec(confirm={"top": 1, "seeds": 2}), source="tiny.yaml")
    uri = fresh_store(folder / "mlruns.db")
    outcome = run_sweep(spec, tracking_uri=uri, storage=str(folder / "runs"))
    return spec, uri, outcome, folder


# --- the user's own loop (examples/own_loop) ------------------------------------------------------------

OWN_LOOP = Path(__file__).resolve().parents[1] / "examples" / "own_loop"


@pytest.fixture
def own_loop_example():
    """The example's module (digits_loop.py), imported as the user would: its folder on sys.path."""
    sys.path.insert(0, str(OWN_LOOP))
    try:
        import digits_loop
        yield digits_loop
    finally:
        sys.path.remove(str(OWN_LOOP))


# --- order and grouping under pytest-xdist (``make test`` runs two workers) -----------------------------

@pytest.hookimpl(tryfirst=True)                 # before xdist reads the groups
def pytest_collection_modifyitems(config, items):
    """Slow tests (real sweeps, subprocesses) first, so that the two workers end together; the tests that read
    the shared tiny sweep in one worker, which builds it once (a module's shared fixtures: its own group)."""
    for item in items:
        if "tiny_sweep" in item.fixturenames:
            item.add_marker(pytest.mark.xdist_group("tiny_sweep"))
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


@pytest.hookimpl(trylast=True)                  # after xdist has named each grouped test's group in its id
def pytest_collection_finish(session):
    """Under ``--dist loadgroup`` every test marked ``xdist_group`` must carry its group in its id, or xdist
    splits the group and each worker builds its shared fixtures again (pytest 9.2 with xdist 3.8 did this
    silently: both workers ran the shared tiny sweep, the DDP runs and the dashboards' stores)."""
    if not getattr(session.config.option, "loadgroup", False):        # set on xdist's workers only
        return
    lost = [item.nodeid for item in session.items if item.get_closest_marker("xdist_group") and "@" not in item.nodeid]
    if lost:
        raise pytest.UsageError(f"pytest-xdist did not group {len(lost)} tests marked xdist_group (first: {lost[0]}); "
                                "check the pytest and pytest-xdist versions (pyproject.toml pins them)")
