"""``q3r-tune ui``: the MLflow UI on a sweep's tracking store (a real ``mlflow server`` on localhost).

The server runs in its own process group, so that stopping the UI (Ctrl+C, SIGTERM) stops the
server and every worker it started, and nothing else.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from typing import Callable

from tuning.tracking.store import TrackingError, artifact_root, check_uri, sqlite_path

STARTUP_TIMEOUT = 180.0       # seconds: a busy 2-core machine takes a while to import MLflow's server


class UIError(RuntimeError):
    """The UI cannot be started (port taken, no tracking store, the server exited)."""


def server_command(uri: str, host: str = "127.0.0.1", port: int = 5000, workers: int = 1) -> list[str]:
    """The ``mlflow server`` command line for the tracking store ``uri``."""
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri, "--host", host,
           "--port", str(port), "--workers", str(workers)]
    root = artifact_root(uri)
    if root:
        cmd += ["--default-artifact-root", root, "--artifacts-destination", root]
    return cmd


def address(host: str, port: int) -> str:
    """The URL a local browser opens for a server bound to ``host``."""
    if host in ("", "0.0.0.0", "::"):
        host = "127.0.0.1"
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def check_port(host: str, port: int) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError as e:
            raise UIError(f"cannot listen on {host}:{port} ({e.strerror}); pass another --port") from None


def healthy(url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(url.rstrip("/") + "/health", timeout=timeout) as reply:
            return reply.status == 200
    except (urllib.error.URLError, OSError):
        return False


def wait_healthy(url: str, proc: subprocess.Popen, timeout: float = STARTUP_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise UIError(f"the MLflow server exited with status {proc.returncode} before {url}/health answered "
                          f"(its output is above)")
        if healthy(url):
            return
        time.sleep(0.5)
    raise UIError(f"the MLflow server did not answer at {url}/health within {timeout:.0f} s")


def start(uri: str, host: str = "127.0.0.1", port: int = 5000, **popen) -> subprocess.Popen:
    """Start ``mlflow server`` on ``uri`` in a new process group; returns at once (see wait_healthy)."""
    try:
        check_uri(uri)
    except TrackingError as e:
        raise UIError(str(e)) from None
    db = sqlite_path(uri)
    if db is not None and not db.is_file():
        raise UIError(f"no tracking store at {uri}: run a sweep first, or pass --tracking-uri")
    check_port(host, port)
    return subprocess.Popen(server_command(uri, host, port), start_new_session=True, **popen)


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:                 # the whole group is gone already
        pass


def stop(proc: subprocess.Popen, grace: float = 10.0) -> None:
    """SIGTERM the server's process group, then SIGKILL whatever is left of it after the server
    exited or ``grace`` seconds passed; reaps the server."""
    _signal_group(proc, signal.SIGTERM)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        pass
    _signal_group(proc, signal.SIGKILL)
    proc.wait()


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def serve(uri: str, host: str = "127.0.0.1", port: int = 5000, log: Callable[[str], None] = print,
          timeout: float = STARTUP_TIMEOUT) -> int:
    """Run the MLflow UI on ``uri`` until Ctrl+C or SIGTERM; an http(s):// URI is already a UI."""
    if uri.startswith(("http://", "https://")):
        log(f"MLflow UI: {uri} (the tracking server already serves it)")
        return 0
    url = address(host, port)
    previous = signal.signal(signal.SIGTERM, _interrupt)
    proc = None
    try:
        proc = start(uri, host, port)
        wait_healthy(url, proc, timeout)
        log(f"MLflow UI for {uri}: {url} (server pid {proc.pid}); Ctrl+C stops it")
        proc.wait()
        log(f"the MLflow server exited with status {proc.returncode}")
        return 1
    except KeyboardInterrupt:
        log("stopping the MLflow UI")
        return 0
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)     # a second Ctrl+C must not cut the clean-up short
        interrupt = signal.signal(signal.SIGINT, signal.SIG_IGN)
        if proc is not None:
            stop(proc)
        signal.signal(signal.SIGTERM, previous)
        signal.signal(signal.SIGINT, interrupt)
