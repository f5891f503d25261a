"""The tracking spool: Ray's callbacks never wait for MLflow; what a dead server could not take is
kept on disk and sent later, in order and once (real MLflow stores, a real refused connection)."""
from __future__ import annotations

import json
import sys
import threading
from types import SimpleNamespace

import pytest
from mlflow.tracking import MlflowClient

from tuning import cli
from tuning.tracking.spool import Spool, SpoolBusy
from tuning.tracking.sync import TrackingDown, settle
from tuning.tracking.store import PARENT, ROLE, SWEEP, experiment_id
from tuning.tracking.mirror import RunMirror, open_spool, transient
from tuning.trial.files import spool_folder
from tuning.tracking.callback import TrialRuns
from tuning.trial import spec as trial_spec

from tests.conftest import free_port

EPOCHS, TRIALS = 3, ("a1b2c3d4", "e5f6a7b8")
_LISTENERS: list[list] = []                     # socket connections (thread, address) while a test listens


def _audit(event: str, args: tuple) -> None:
    if _LISTENERS and event == "socket.connect":
        _LISTENERS[-1].append((threading.get_ident(), args[1]))


sys.addaudithook(_audit)                        # Python's audit events: every socket connect, from any library


def trial_config(config):
    cfg = trial_spec.from_dict({"technique": {"name": "adamw", "lr": config["lr"]}, "train": {"epochs": EPOCHS}})
    return "adamw", {"lr": config["lr"]}, cfg


def drive(callback: TrialRuns) -> None:
    """The callback events of two interleaved trials, as Ray's loop calls them."""
    trials = [SimpleNamespace(trial_id=t, config={"lr": 1e-3 * (i + 1)}, last_result=None) for i, t in enumerate(TRIALS)]
    for t in trials:
        callback.on_trial_start(0, trials, t)
    for epoch in range(1, EPOCHS + 1):
        for i, t in enumerate(trials):
            t.last_result = {"epoch": epoch, "acc": 0.1 * epoch + i, "acc@0.1": 0.05 * epoch, "objective": 0.2,
                             "status": "running"}
            callback.on_trial_result(0, trials, t, t.last_result)
    for t in trials:
        callback.on_trial_complete(0, trials, t)


def make_sweep(uri: str, name: str, folder) -> str:
    client = MlflowClient(uri)
    return client.create_run(experiment_id(client, name), tags={ROLE: SWEEP, "q3r.storage": str(folder)}).info.run_id


def assert_every_step_once(uri: str, parent: str, name: str) -> None:
    client = MlflowClient(uri)
    runs = client.search_runs([experiment_id(client, name)], filter_string=f"tags.`{PARENT}` = '{parent}'")
    assert sorted(r.data.tags["q3r.trial_id"] for r in runs) == sorted(TRIALS)          # one run per trial
    for run in runs:
        for key in ("epoch", "acc", "acc_at_0.1", "objective"):
            steps = [m.step for m in client.get_metric_history(run.info.run_id, key)]
            assert sorted(steps) == list(range(1, EPOCHS + 1)), (key, steps)
        assert run.info.status == "FINISHED" and run.data.tags["q3r.status"] == "completed"
        assert run.data.params["technique.lr"] in ("0.001", "0.002")


def test_a_refused_server_costs_the_callbacks_nothing_and_the_spool_is_sent_later_in_order_once(tmp_path,
                                                                                                 monkeypatch,
                                                                                                 fresh_store):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    store, name, folder = fresh_store(tmp_path / "mlruns.db"), "spooled", tmp_path / "ray-state"
    parent = make_sweep(store, name, folder)
    dead = f"http://127.0.0.1:{free_port()}"                     # nothing listens there
    callback = TrialRuns(dead, name, parent, trial_config, max_t=EPOCHS, spool=spool_folder(folder))
    logged = []
    spool = open_spool(spool_folder(folder), dead, log=logged.append)
    connects: list = []
    _LISTENERS.append(connects)
    try:
        drive(callback)
    finally:
        _LISTENERS.remove(connects)
    here = [address for thread, address in connects if thread == threading.get_ident()]
    assert here == []                                              # each callback: a line on disk, no request
    with pytest.raises(TrackingDown, match=rf"sweep spooled: the MLflow tracking server {dead} did not take the "
                                           rf"sweep's logging within 1 s .*its 10 operation\(s\) are kept in "
                                           rf".*mlflow-spool; .*`q3r-tune sync spooled --tracking-uri {dead}`"):
        settle(name, dead, str(folder), wait=1.0, log=logged.append)
    assert any("the trials go on, and their logging waits in" in line for line in logged)
    spool.close()
    lines = (spool_folder(folder) / "ops.jsonl").read_text().splitlines()
    assert [json.loads(line)["op"] for line in lines] == ["start"] * 2 + ["metrics"] * 6 + ["finish"] * 2
    with open(spool_folder(folder) / "ops.jsonl", "a") as f:      # a crash in the middle of a write
        f.write('{"op": "metrics", "tri')

    # the server answers again (here: the store itself); `q3r-tune sync` sends the spool, in order
    sent = []
    mirror = RunMirror(store)
    order = Spool(spool_folder(folder), lambda op: (mirror(op), sent.append(op)), transient, log=logged.append)
    assert order.drain(30) == 0
    assert sent == [json.loads(line) for line in lines]           # the torn line was cut off, not sent
    order.close()
    assert_every_step_once(store, parent, name)

    # the delivered count lost (a crash after sending, before counting): sent again, still once each
    (spool_folder(folder) / "delivered").write_text("0")
    assert cli.main(["sync", name, "--tracking-uri", store, "--tracking-wait", "30"]) == 0
    assert_every_step_once(store, parent, name)
    assert (spool_folder(folder) / "delivered").read_text() == "10"


def test_an_operation_the_server_rejects_is_set_aside_and_the_rest_goes_on(tmp_path, fresh_store):
    store, name, folder = fresh_store(tmp_path / "mlruns.db"), "rejecting", tmp_path / "state"
    parent = make_sweep(store, name, folder)
    logged = []
    spool = open_spool(spool_folder(folder), store, log=logged.append)
    base = {"parent": parent, "experiment": name}
    spool.append({"op": "metrics", "trial": "ghost", "step": 1, "metrics": [], **base})     # no such run: rejected
    callback = TrialRuns(store, name, parent, trial_config, max_t=EPOCHS, spool=spool_folder(folder))
    drive(callback)
    assert spool.drain(30) == 0 and spool.rejected == 1
    spool.close()
    rejected = (spool_folder(folder) / "rejected.jsonl").read_text().splitlines()
    assert len(rejected) == 1 and json.loads(rejected[0])["op"]["trial"] == "ghost"
    assert any("rejected operation 0" in line for line in logged)
    assert_every_step_once(store, parent, name)


def test_a_second_sender_of_the_same_spool_is_refused(tmp_path):
    folder = tmp_path / "busy"
    spool = open_spool(folder, "sqlite:///" + str(tmp_path / "m.db"))
    with pytest.raises(SpoolBusy, match="is being sent by another process"):     # flock: also across processes
        Spool(folder, print, transient)
    spool.close()
    Spool(folder, print, transient).close()                                   # free again once closed
