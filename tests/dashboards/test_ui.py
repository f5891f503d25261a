"""``q3r-tune ui``: a real ``mlflow server`` on a tiny sqlite store, reached at the address it prints,
and gone once the command is stopped."""
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from dashboards import ui
from tuning import cli
from tuning.tracking.store import experiment_id

from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[2]
READY = re.compile(r"MLflow UI for \S+: (http://\S+) \(server pid (\d+)\)")

pytestmark = pytest.mark.xdist_group("ui_store")        # under pytest-xdist, one worker builds the module's fixtures



def get(url: str, timeout: float = 30):
    with urllib.request.urlopen(url, timeout=timeout) as reply:
        return reply.status, reply.read().decode()


def gone(pid: int) -> bool:
    """No such process, or a zombie (dead, waiting for its parent)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z"
    except (FileNotFoundError, ProcessLookupError):
        return True


def listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture(scope="module")
def store(tmp_path_factory, fresh_store):
    """A sqlite tracking store with one experiment and one run, made with MlflowClient directly."""
    folder = tmp_path_factory.mktemp("ui")
    uri = fresh_store(folder / "mlruns.db")
    client = MlflowClient(uri)
    run = client.create_run(experiment_id(client, "ui-sweep"), tags={"mlflow.runName": "trial-1"})
    client.log_metric(run.info.run_id, "objective", 0.5)
    return uri, run.info.run_id


def test_ui_serves_the_store_until_stopped(store):
    uri, run_id = store
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "tuning.cli", "ui", "--tracking-uri", uri, "--port", str(port)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    lines: list = []
    ready = threading.Event()

    def read():                        # drain the output (the server's log shares the pipe)
        for line in proc.stdout:
            lines.append(line)
            if READY.search(line):
                ready.set()

    threading.Thread(target=read, daemon=True).start()
    server = None
    try:
        assert ready.wait(240), "no address printed:\n" + "".join(lines)[-3000:]
        url, server = READY.search("".join(lines)).groups()
        server = int(server)
        assert url == f"http://127.0.0.1:{port}"
        assert get(f"{url}/health") == (200, "OK")
        search = f"{url}/api/2.0/mlflow/experiments/search?max_results=10"
        try:
            status, body = get(search)
        except urllib.error.HTTPError:                     # servers that take POST only
            req = urllib.request.Request(search.split("?")[0], data=b'{"max_results": 10}', method="POST",
                                         headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(req, timeout=30) as reply:
                status, body = reply.status, reply.read().decode()
        assert status == 200 and "ui-sweep" in [e["name"] for e in json.loads(body)["experiments"]]
        status, body = get(f"{url}/api/2.0/mlflow/runs/get?run_id={run_id}")
        assert json.loads(body)["run"]["data"]["metrics"][0]["value"] == 0.5

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0, "".join(lines)[-3000:]
        deadline = time.monotonic() + 10
        while not gone(server) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert gone(server), f"the MLflow server (pid {server}) outlived q3r-tune ui"
        assert not listening(port)
        assert "stopping the MLflow UI" in "".join(lines)
    finally:
        for pid in (proc.pid, server):
            if pid is not None:
                try:
                    os.killpg(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        proc.wait(timeout=30)


def test_ui_of_a_tracking_server_is_its_address(capsys):
    assert cli.main(["ui", "--tracking-uri", "http://tracking.example:5000"]) == 0
    assert "MLflow UI: http://tracking.example:5000" in capsys.readouterr().out


def test_ui_errors_name_the_problem(store, tmp_path, capsys):
    uri, _ = store
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert cli.main(["ui", "--tracking-uri", uri, "--port", str(port)]) == 2
    assert f"cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err
    assert cli.main(["ui", "--tracking-uri", f"sqlite:///{tmp_path / 'none.db'}"]) == 2
    assert "no tracking store at" in capsys.readouterr().err


def test_server_command_keeps_artifacts_beside_the_database():
    cmd = ui.server_command("sqlite:////data/sweeps/mlruns.db", "127.0.0.1", 5001)
    assert cmd[1:4] == ["-m", "mlflow", "server"]
    assert cmd[cmd.index("--artifacts-destination") + 1] == "file:///data/sweeps/mlartifacts"
    assert cmd[cmd.index("--default-artifact-root") + 1] == "file:///data/sweeps/mlartifacts"
    assert cmd[cmd.index("--port") + 1] == "5001"
    assert "--artifacts-destination" not in ui.server_command("postgresql://db/mlflow")
    assert ui.address("0.0.0.0", 80) == "http://127.0.0.1:80"
