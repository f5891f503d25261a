"""A real ``mlflow server`` killed mid-sweep for longer than MLflow's retry budget, then restarted:
the trials go on, Ray's loop never waits for it, and every trial's every metric step arrives once."""
from __future__ import annotations

import json
import re
import threading
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tuning.tracking.results import child_runs
from tuning.tracking.store import find_sweep

from tests.tuning.sweep_helpers import cli, kill_group, kill_ray_under, short_tmp, tiny_spec, write_spec

pytestmark = pytest.mark.slow

# MLflow's own retry budget made small: 2 tries of at most 2 s each, 1 s between them (about 5 s)
CLIENT_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_TIMEOUT": "2",
              "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1"}
RETRY_BUDGET = 5.0
OUTAGE = RETRY_BUDGET + 5.0
KEYS = ("epoch", "acc", "acc_at_0.1", "objective", "train_loss")


class Output:
    """The driver's output, read by a thread (the pipe must never fill up)."""

    def __init__(self, proc):
        self.lines: list[str] = []
        self.thread = threading.Thread(target=lambda: self.lines.extend(proc.stdout), daemon=True)
        self.thread.start()

    @property
    def text(self) -> str:
        return "".join(self.lines)


def spool_counts(runs: Path) -> tuple[list, int]:
    """(the spooled operations' kinds, how many were delivered) of the sweep under ``runs``."""
    folders = list(runs.glob("outage-*/mlflow-spool"))
    if not folders:
        return [], 0
    ops_file, done = folders[0] / "ops.jsonl", folders[0] / "delivered"
    kinds = [json.loads(line)["op"] for line in ops_file.read_text().splitlines()] if ops_file.is_file() else []
    return kinds, int(done.read_text() or 0) if done.is_file() else 0


def wait_for(predicate, timeout: float, what: str, proc, out: Output) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if proc.poll() is not None:
            pytest.fail(f"the driver exited ({proc.returncode}) before {what}:\n{out.text}")
        time.sleep(0.2)
    pytest.fail(f"timed out waiting for {what}:\n{out.text}")


def ray_results(runs: Path) -> dict[str, list[dict]]:
    """Every result each trial reported to Ray (its result.json): trial id -> results by epoch."""
    out: dict[str, list[dict]] = {}
    for path in runs.glob("outage-*/*/result.json"):
        for line in path.read_text().splitlines():
            r = json.loads(line)
            out.setdefault(r["trial_id"], []).append(r)
    return out


def test_a_server_down_longer_than_the_retry_budget_loses_and_stalls_nothing(tmp_path, no_ray, mlflow_server):
    server = mlflow_server
    runs, ray_tmp = tmp_path / "runs", short_tmp()
    spec = tiny_spec(name="outage", epochs=5, num_samples=3, scheduler={"kind": "fifo"}, searcher={"kind": "random"})
    driver = cli("sweep", str(write_spec(tmp_path, spec)), "--tracking-uri", server.url, "--storage", str(runs),
                 "--num-cpus", "2", "--tracking-wait", "300", cwd=tmp_path,
                 env={"RAY_TMPDIR": str(ray_tmp), **CLIENT_ENV})
    out = Output(driver)
    try:
        def a_metric_arrived():
            kinds, delivered = spool_counts(runs)
            return "metrics" in kinds[:delivered]

        wait_for(a_metric_arrived, 300, "the first evaluation reached MLflow", driver, out)
        server.kill()
        down_at, spooled_at_kill = time.monotonic(), len(spool_counts(runs)[0])

        def trials_went_on_past_the_retry_budget():
            return time.monotonic() - down_at > OUTAGE and len(spool_counts(runs)[0]) >= spooled_at_kill + 3

        wait_for(trials_went_on_past_the_retry_budget, 300, "evaluations spooled during the outage", driver, out)
        assert spool_counts(runs)[1] < len(spool_counts(runs)[0])          # some of them wait for the server
        server.start()
        outage_s = time.monotonic() - down_at
        wait_for(lambda: "operation(s) spooled and delivered" in out.text, 400, "the spool drained", driver, out)
    finally:                                  # what follows (publishing on the parent run) is tested elsewhere
        kill_group(driver)
        kill_ray_under(ray_tmp)
    assert "the trials go on, and their logging waits in" in out.text
    assert "the server answers again after" in out.text
    slowest = float(re.search(r"the slowest callback on Ray's loop took ([0-9.]+) ms", out.text).group(1))
    assert slowest < 1000, out.text                                        # Ray's loop never waited for MLflow
    print(f"outage test: server down {outage_s:.0f} s (retry budget about {RETRY_BUDGET:.0f} s); slowest MLflow "
          f"callback on Ray's loop {slowest:.1f} ms")
    kinds, delivered = spool_counts(runs)
    assert delivered == len(kinds)

    reported = ray_results(runs)
    client = MlflowClient(server.url)
    parent = find_sweep(client, "outage")
    children = {r.data.tags["q3r.trial_id"]: r for r in child_runs(client, parent.info.run_id)}
    assert set(children) == set(reported) and len(reported) == 3          # one run per trial, none twice
    for trial_id, results in reported.items():
        run = children[trial_id]
        epochs = [r["epoch"] for r in results]
        assert epochs == [1, 2, 3, 4, 5]
        for key in KEYS:
            history = client.get_metric_history(run.info.run_id, key)
            assert sorted(m.step for m in history) == epochs, (trial_id, key)    # every step, once
        accs = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "acc")}
        assert accs == pytest.approx({r["epoch"]: r["acc"] for r in results})
        assert run.info.status == "FINISHED" and run.data.tags["q3r.status"] == "completed"
