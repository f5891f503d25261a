"""A durable, ordered spool of tracking operations, sent by one background thread.

Ray Tune calls its callbacks on the driver's event loop, so a callback that waits for a slow or
absent tracking server stalls every trial's scheduling. ``Spool.append`` only writes one JSON line
to ``ops.jsonl`` (flushed and fsynced) and returns; a daemon thread hands the operations, in the
order they were written, to a ``deliver`` function and records how many were delivered in the
file ``delivered`` (replaced atomically). An operation that fails for a transient reason (a
connection refused, a timeout, a 5xx) is retried, with a growing pause of at most ``MAX_PAUSE``
seconds, before any later one is tried; one that the server rejects for good (a 4xx) is written
to ``rejected.jsonl`` and skipped, so that one bad operation cannot hold up the rest.

What is on disk survives the process: a spool opened again (by a resumed sweep or by
``q3r-tune sync``) sends what was not yet delivered, in order. An operation delivered just before
a crash, but not yet counted, is sent again; ``deliver`` must therefore be idempotent (the MLflow
delivery in ``tuning.tracking.mirror`` is). One process at a time sends a spool: it holds an exclusive
lock on ``lock`` (``SpoolBusy`` otherwise).
"""
from __future__ import annotations

import collections
import fcntl
import json
import os
import threading
import time
from pathlib import Path
from typing import Callable, Optional

OPS, DELIVERED, REJECTED, LOCK = "ops.jsonl", "delivered", "rejected.jsonl", "lock"
MAX_PAUSE = 5.0                   # seconds between two tries of an operation the server did not take


class SpoolBusy(RuntimeError):
    """Another process (a sweep's driver, a ``q3r-tune sync``) is sending this spool."""


class Spool:
    """The spool in ``folder``: ``append`` (never waits for the server), ``drain`` (waits for it)."""

    _open: dict = {}                                  # folder -> Spool: one sender per spool per process
    _open_lock = threading.Lock()

    @classmethod
    def of(cls, folder, deliver: Callable[[dict], None], transient: Callable[[Exception], bool],
           log: Callable[[str], None] = print) -> "Spool":
        """The spool of ``folder`` in this process (opened, locked and started on first use)."""
        key = str(Path(folder).resolve())
        with cls._open_lock:
            if key not in cls._open:
                cls._open[key] = cls(key, deliver, transient, log)
            return cls._open[key]

    def __init__(self, folder, deliver, transient, log=print):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self._lock_file = open(self.folder / LOCK, "a")
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock_file.close()
            raise SpoolBusy(f"the tracking spool {self.folder} is being sent by another process (is the sweep's "
                            f"driver still running?)") from None
        self.deliver, self.transient, self.log = deliver, transient, log
        self._cond = threading.Condition()
        self._queue: collections.deque = collections.deque()     # (seq, op) not yet delivered
        self.delivered = self._read_delivered()
        self.delivered_at_open = self.delivered
        self.rejected = 0
        self.failing_since: Optional[float] = None               # monotonic time of the first failure in a row
        self.last_error = ""
        self.slowest_append = 0.0                                  # seconds: the longest append, with its caller's work
        self.appended = 0
        self._seq = self.delivered
        for seq, op in self._read_ops():
            self._seq = seq + 1
            if seq >= self.delivered:
                self._queue.append((seq, op))
        self._ops = open(self.folder / OPS, "a")
        self._thread: Optional[threading.Thread] = None
        self._closed = False
        if self._queue:
            self._start()

    # ---- the writing side (Ray's event loop) -----------------------------------------------------
    def append(self, op: dict, since: Optional[float] = None) -> None:
        """Write ``op`` durably and queue it for the sender; never talks to the server. ``since``: when
        the caller's work began (``time.perf_counter()``), so that ``slowest_append`` counts all of it."""
        started = time.perf_counter() if since is None else since
        line = json.dumps(op, separators=(",", ":")) + "\n"
        with self._cond:
            self._ops.write(line)
            self._ops.flush()
            os.fsync(self._ops.fileno())
            self._queue.append((self._seq, op))
            self._seq += 1
            self.appended += 1
            self._cond.notify_all()
        self._start()
        self.slowest_append = max(self.slowest_append, time.perf_counter() - started)

    @property
    def pending(self) -> int:
        with self._cond:
            return len(self._queue)

    def drain(self, timeout: float) -> int:
        """Wait up to ``timeout`` seconds for every queued operation to be delivered; the number left."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._queue and time.monotonic() < deadline:
                self._cond.wait(min(0.2, max(0.0, deadline - time.monotonic())))
            return len(self._queue)

    def close(self) -> None:
        """Stop sending (what is left stays on disk for the next opening) and release the lock."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=MAX_PAUSE + 1)
        with Spool._open_lock:
            Spool._open.pop(str(self.folder), None)
        self._ops.close()
        self._lock_file.close()

    # ---- the sending side (one daemon thread) ---------------------------------------------------------
    def _start(self) -> None:
        if not self._closed and (self._thread is None or not self._thread.is_alive()):
            self._thread = threading.Thread(target=self._send_loop, name=f"spool-{self.folder.name}", daemon=True)
            self._thread.start()

    def _send_loop(self) -> None:
        pause = 0.25
        while True:
            with self._cond:
                while not self._queue and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
                seq, op = self._queue[0]
            try:
                self.deliver(op)
            except Exception as e:  # noqa: BLE001 - the server decides; we classify and carry on
                if not self.transient(e):
                    self._reject(seq, op, e)
                    continue
                if self.failing_since is None:
                    self.failing_since = time.monotonic()
                    self.log(f"tracking: the server did not take an operation ({_short(e)}); the trials go on, and "
                             f"their logging waits in {self.folder} until it answers")
                self.last_error = _short(e)
                with self._cond:
                    self._cond.wait_for(lambda: self._closed, timeout=pause)
                pause = min(MAX_PAUSE, pause * 2)
                continue
            if self.failing_since is not None:
                self.log(f"tracking: the server answers again after {time.monotonic() - self.failing_since:.0f} s; "
                         f"sending the {self.pending} spooled operation(s)")
                self.failing_since, pause = None, 0.25
            self._done(seq)

    def _done(self, seq: int) -> None:
        with self._cond:
            self._queue.popleft()
            self.delivered = seq + 1
            self._cond.notify_all()
        tmp = self.folder / (DELIVERED + ".tmp")        # only this thread writes it: outside the lock, so
        tmp.write_text(str(seq + 1))                     # appends on Ray's loop never wait for it (a mark
        tmp.replace(self.folder / DELIVERED)             # one behind only resends an idempotent op)

    def _reject(self, seq: int, op: dict, error: Exception) -> None:
        self.rejected += 1
        with open(self.folder / REJECTED, "a") as f:
            f.write(json.dumps({"seq": seq, "error": _short(error), "op": op}) + "\n")
        self.log(f"tracking: the server rejected operation {seq} ({op.get('op')} of trial {op.get('trial')}): "
                 f"{_short(error)}; kept in {self.folder / REJECTED}")
        self._done(seq)

    # ---- the files ------------------------------------------------------------------------------------
    def _read_delivered(self) -> int:
        try:
            return int((self.folder / DELIVERED).read_text().strip() or 0)
        except (FileNotFoundError, ValueError):
            return 0

    def _read_ops(self):
        """(seq, op) of every complete line; a line torn by a crash mid-write is cut off."""
        path = self.folder / OPS
        if not path.is_file():
            return
        data = path.read_bytes()
        end = data.rfind(b"\n") + 1
        if end < len(data):
            with open(path, "r+b") as f:
                f.truncate(end)
        for seq, line in enumerate(data[:end].splitlines()):
            yield seq, json.loads(line)


def _short(e: Exception) -> str:
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text[:300]}"
